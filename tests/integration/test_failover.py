"""Failover between two real loopback peers, on the manual clock (docs/failover.md).

Two PING/PONG devices stand for a redundant pair: ``a`` preferred, ``b`` the
alternate. The connection fails over when ``a`` goes, fails back once ``a``
has been healthy for ``failback_after``, at most once per ``failback_holdoff``,
and never holds a data link to both.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import psutil
import pytest

from conftest import Recorder, tcp
from edgelink import ConfigError, ConnectionManager, ConnectionState
from edgelink.testing import ManualClock
from edgelink.testing.peers import PingPongPeer

S = ConnectionState
Make = Callable[..., ConnectionManager]

#: Failover settings of these tests; the clock is manual, so no test waits them out.
SETTINGS: dict[str, Any] = {
    "failover_after": 2,
    "failback_after": 3.0,
    "failback_probe_interval": 1.0,
    "failback_holdoff": 20.0,
    "health_check_interval": 1000.0,
    "fleet_recovery": False,
}


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait in real time (the clock stands still) until ``pred()``."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


def links_to(port: int) -> int:
    """Count this process's established TCP connections to ``port``."""
    return sum(
        1
        for c in psutil.Process(os.getpid()).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def probe(m: ConnectionManager, clock: ManualClock, n: int) -> None:
    """Let the ``n``-th failback probe run (one probe interval) and finish."""
    await clock.advance(1.0)
    await until(lambda: m.get_status("dev")["endpoints"]["probes"] >= n)


def active(m: ConnectionManager) -> int:
    return int(m.get_status("dev")["endpoints"]["active_index"])


@pytest.fixture
async def pair() -> AsyncIterator[tuple[PingPongPeer, PingPongPeer]]:
    """Two PING/PONG devices: the preferred and the alternate."""
    async with (
        PingPongPeer(values={"temperature": "21.5"}) as a,
        PingPongPeer(values={"temperature": "22.5"}) as b,
    ):
        yield a, b


def add(m: ConnectionManager, a: PingPongPeer, b: PingPongPeer, **settings: Any) -> None:
    m.add_connection(
        "dev",
        "tcp",
        tcp(a.port),
        settings={**SETTINGS, **settings},
        endpoints=[{"name": "primary"}, {"port": b.port, "name": "standby"}],
    )


async def test_failover_then_failback_after_the_stable_period(
    make_manager: Make, clock: ManualClock, pair: tuple[PingPongPeer, PingPongPeer]
) -> None:
    """Test that losing the preferred peer moves the link to the alternate and back."""
    a, b = pair
    m = make_manager(clock=clock)
    rec = Recorder(m)
    add(m, a, b)
    await m.start()
    await m.wait_for_state("dev", S.CONNECTED, timeout=5)
    assert active(m) == 0 and links_to(a.port) == 1 and links_to(b.port) == 0
    status = m.get_status("dev")["endpoints"]
    assert status["active"] == status["preferred"] == "primary"

    await a.stop()
    # Refused is a hard failure: the next attempt goes to the alternate at once.
    await until(lambda: m.get_state("dev") is S.RECONNECTING)
    await until(lambda: m.get_state("dev") is S.CONNECTED or bool(clock.pending()))
    if m.get_state("dev") is not S.CONNECTED:
        await clock.advance(clock.pending()[0] + 1e-6)  # the backoff before retrying a
    await m.wait_for_state("dev", S.CONNECTED, timeout=5)
    assert active(m) == 1
    assert links_to(a.port) == 0 and links_to(b.port) == 1
    [ev] = await rec.of("failover")
    assert ev.data["from_endpoint"] == "primary" and ev.data["to_endpoint"] == "standby"
    assert ev.data["reason"] == "refused" and ev.data["hard"] is True
    value = await m.execute_with_retry("dev", lambda c: c.read("temperature"))
    assert value == "22.5"

    # The preferred peer is back: probed every second, healthy for 3 s, then failback.
    await a.start()
    for n in range(1, 4):
        await probe(m, clock, n)
        assert active(m) == 1, "no failback before failback_after"
        assert m.get_status("dev")["endpoints"]["list"][0]["last_result"] == "ok"
        await until(lambda: links_to(a.port) == 0)  # each probe closes its link
    await clock.advance(1.0)
    await rec.wait_for("failback")
    await m.wait_for_state("dev", S.CONNECTED, timeout=5)
    await until(lambda: active(m) == 0 and m.get_state("dev") is S.CONNECTED)
    assert links_to(a.port) == 1 and links_to(b.port) == 0
    [back] = await rec.of("failback")
    assert back.data["to_endpoint"] == "primary"
    assert m.get_status("dev")["endpoints"]["failbacks"] == 1
    # A failback is no flap and no loss to alarm about.
    assert m.get_status("dev")["flap"] is None or not m.get_status("dev")["flapping"]


async def test_datapoints_carry_their_endpoint(
    make_manager: Make, clock: ManualClock, pair: tuple[PingPongPeer, PingPongPeer]
) -> None:
    """Test that a polled value's metadata names its endpoint, and the fleet group follows."""
    a, b = pair
    m = make_manager(clock=clock)
    m.add_connection(
        "dev",
        "tcp",
        tcp(a.port),
        settings={**SETTINGS, "fleet_recovery": True},
        endpoints=[{}, {"host": "localhost", "port": b.port}],
        poll=[{"tags": ["temperature"], "interval": 1.0}],
    )
    assert m.fleet.group_of("dev") == "host:127.0.0.1"
    await m.start()
    await m.wait_for_state("dev", S.CONNECTED, timeout=5)
    await clock.advance(1.0)
    await until(lambda: m.router.data.get("dev.temperature") is not None)
    dp = m.router.data.get("dev.temperature")
    assert dp is not None and dp.metadata == {
        "endpoint": f"127.0.0.1:{a.port}",
        "endpoint_index": 0,
    }
    await a.stop()
    await until(lambda: m.get_state("dev") is not S.CONNECTED)
    while m.get_state("dev") is not S.CONNECTED:
        if clock.pending():
            await clock.advance(clock.pending()[0] + 1e-6)
        await asyncio.sleep(0.01)
    await clock.advance(1.0)
    await until(lambda: (m.router.data.value("dev.temperature")) == "22.5")
    dp = m.router.data.get("dev.temperature")
    assert dp is not None and dp.metadata is not None
    assert dp.metadata == {"endpoint": f"localhost:{b.port}", "endpoint_index": 1}
    # Fleet recovery groups the connection by the endpoint it uses now.
    assert m.fleet.group_of("dev") == "host:localhost"


async def test_flapping_primary_fails_back_at_most_once_per_holdoff(
    make_manager: Make, clock: ManualClock, pair: tuple[PingPongPeer, PingPongPeer]
) -> None:
    """Test that a primary that keeps going away causes one failback per hysteresis window."""
    a, b = pair
    m = make_manager(clock=clock)
    rec = Recorder(m)
    add(m, a, b, failback_holdoff=30.0, flap_dampening=False)
    await m.start()
    await m.wait_for_state("dev", S.CONNECTED, timeout=5)

    async def fail_over() -> None:
        await a.stop()
        await until(lambda: m.get_state("dev") is not S.CONNECTED or active(m) == 1)
        while not (m.get_state("dev") is S.CONNECTED and active(m) == 1):
            if clock.pending():
                await clock.advance(min(clock.pending()[0] + 1e-6, 0.5))
            await asyncio.sleep(0.01)
        await a.start()

    await fail_over()
    for _ in range(5):
        await clock.advance(1.0)
    await rec.wait_for("failback")
    await until(lambda: active(m) == 0 and m.get_state("dev") is S.CONNECTED)
    # The primary flaps: down again right after the failback, back soon after.
    await fail_over()
    for _ in range(20):
        await clock.advance(1.0)
    await asyncio.sleep(0.05)
    assert len(await rec.of("failback")) == 1, "held by the hysteresis window"
    assert active(m) == 1 and links_to(b.port) == 1 and links_to(a.port) == 0
    # Past the window (30 s after the first failback) it may come back once more.
    for _ in range(12):
        await clock.advance(1.0)
    await rec.wait_for("failback", 2)
    await until(lambda: active(m) == 0 and m.get_state("dev") is S.CONNECTED)


async def test_failback_false_keeps_the_alternate(
    make_manager: Make, clock: ManualClock, pair: tuple[PingPongPeer, PingPongPeer]
) -> None:
    """Test that ``failback: false`` stays on the alternate and never probes the preferred."""
    a, b = pair
    m = make_manager(clock=clock)
    rec = Recorder(m)
    add(m, a, b, failback=False)
    await m.start()
    await m.wait_for_state("dev", S.CONNECTED, timeout=5)
    await a.stop()
    while not (m.get_state("dev") is S.CONNECTED and active(m) == 1):
        if clock.pending():
            await clock.advance(clock.pending()[0] + 1e-6)
        await asyncio.sleep(0.01)
    await a.start()
    requests = a.requests
    for _ in range(60):
        await clock.advance(1.0)
    await asyncio.sleep(0.05)
    assert active(m) == 1 and a.requests == requests
    assert await rec.of("failback") == []


async def test_both_down_backs_off_per_round_and_suspends_over_the_set(
    make_manager: Make, clock: ManualClock, pair: tuple[PingPongPeer, PingPongPeer]
) -> None:
    """Test that with both endpoints down the backoff grows per round and suspension follows."""
    a, b = pair
    m = make_manager(clock=clock)
    rec = Recorder(m)
    add(m, a, b, reconnect_max_attempts=6, reconnect_initial_delay=1.0, suspend_cooldown=None)
    await m.start()
    await m.wait_for_state("dev", S.CONNECTED, timeout=5)
    await b.stop()
    await a.stop()
    waits: list[float] = []
    while m.get_state("dev") is not S.SUSPENDED:
        retry_at = m.get_status("dev")["next_retry_at"]
        if retry_at is not None:
            waits.append(round(retry_at - clock.time(), 3))
            await clock.advance(waits[-1] + 1e-6)
        await asyncio.sleep(0.01)
    # Refused is hard: each round is one attempt per endpoint, no wait between
    # them, and the backoff before each round doubles: 1, 2, 4 (3 rounds = 6 attempts).
    assert waits == [1.0, 2.0, 4.0]
    assert m.get_status("dev")["reconnect_attempts"] == 6
    assert len(await rec.of("max_retries_exceeded")) == 1
    switches = [(e.data["from_index"], e.data["to_index"]) for e in await rec.of("failover")]
    assert switches == [(0, 1), (1, 0)] * 3


async def test_timeouts_fail_over_after_failover_after_attempts(
    make_manager: Make, clock: ManualClock, pair: tuple[PingPongPeer, PingPongPeer]
) -> None:
    """Test that a peer that stops answering is tried ``failover_after`` times, then left."""
    a, b = pair
    # The clock moves while attempts wait for real answers: no stuck-call watchdog.
    m = make_manager(clock=clock, watchdog_interval=1e9)
    rec = Recorder(m)
    add(m, a, b, failover_after=2, health_check_interval=1.0, connect_timeout=0.2)
    await m.start()
    await m.wait_for_state("dev", S.CONNECTED, timeout=5)
    a.respond = False  # the process hangs: connects work, health checks time out
    while not (m.get_state("dev") is S.CONNECTED and active(m) == 1):
        if clock.pending():
            await clock.advance(min(clock.pending()[0] + 1e-6, 1.0))
        await asyncio.sleep(0.01)
    failed = [e for e in await rec.of("reconnect_failed") if e.data["reason"] == "timeout"]
    assert len(failed) == 2
    [ev] = await rec.of("failover")
    assert ev.data["hard"] is False and ev.data["reason"] == "timeout"
    a.respond = True


async def test_bad_endpoints_are_config_errors_naming_the_entry(make_manager: Make) -> None:
    """Test that a bad endpoint names the connection, the index and the field."""
    m = make_manager()
    with pytest.raises(ConfigError) as info:
        m.add_connection("dev", "tcp", tcp(5000), endpoints=[{}, {"port": "x"}])
    assert info.value.path == "connections.dev.endpoints[1].port"
    with pytest.raises(ConfigError) as info:
        m.add_connection("dev", "tcp", tcp(5000), endpoints=[{}, {"baudrate": 9600}])
    assert info.value.path == "connections.dev.endpoints[1].baudrate"
    assert "host, port" in info.value.message
    with pytest.raises(ConfigError) as info:
        m.add_connection("dev", "tcp", tcp(5000), endpoints=[{}, {}])
    assert info.value.path == "connections.dev.endpoints[1]"
    with pytest.raises(ConfigError) as info:
        m.add_connection("dev", "tcp", tcp(5000), endpoints=[{}, {"port": 5000}])
    assert "same endpoint as endpoints[0]" in info.value.message
    # One endpoint, or none, is the old form: no failover, no ``endpoints`` in the status.
    m.add_connection("one", "tcp", tcp(5000), endpoints=[{"port": 5001}])
    assert "endpoints" not in m.get_status("one")
    assert m.get_connection("one").config["port"] == 5001  # type: ignore[union-attr]


async def test_failback_probes_bypass_connect_admission_and_count_no_attempt(
    make_manager: Make, clock: ManualClock, pair: tuple[PingPongPeer, PingPongPeer]
) -> None:
    """Test that probes neither wait for an admission slot nor count as attempts; failback does."""
    a, b = pair
    # One admission slot, and a real connect that holds it: a device that
    # accepts the link and never answers the first health check.
    m = make_manager(clock=clock, watchdog_interval=1e9, max_concurrent_connects=1)
    rec = Recorder(m)
    add(m, a, b)
    await m.start()
    await m.wait_for_state("dev", S.CONNECTED, timeout=5)
    await a.stop()
    while not (m.get_state("dev") is S.CONNECTED and active(m) == 1):
        if clock.pending():
            await clock.advance(clock.pending()[0] + 1e-6)
        await asyncio.sleep(0.01)
    async with PingPongPeer() as hung:
        hung.respond = False
        m.add_connection(
            "hog",
            "tcp",
            tcp(hung.port),
            settings={"connect_timeout": 15.0, "health_check_timeout": 15.0},
        )
        await until(lambda: hung.requests >= 1)  # its attempt holds the only slot
        attempts = m.get_status("dev")["reconnect_attempts"]
        stats = dict(m.get_status("dev")["stats"])
        before = len(rec.events)

        # Probes of the preferred endpoint while it is still down: failures, not attempts.
        for n in range(1, 3):
            await probe(m, clock, n)
            assert m.get_status("dev")["endpoints"]["list"][0]["last_source"] == "probe"
            assert m.get_status("dev")["endpoints"]["list"][0]["last_result"] == "probe_failed"
        # Back: probes go through (real connects and health checks) with the slot taken.
        await a.start()
        for n in range(3, 6):
            requests = a.requests
            await probe(m, clock, n)
            assert a.requests > requests, "the probe reached the preferred peer"
            assert m.get_status("dev")["endpoints"]["list"][0]["last_result"] == "ok"
        assert m.get_state("hog") is S.CONNECTING, "the slot was held all along"
        status = m.get_status("dev")
        assert status["reconnect_attempts"] == attempts
        assert status["stats"] == stats
        assert active(m) == 1 and m.get_state("dev") is S.CONNECTED
        await asyncio.sleep(0.05)
        assert [e.type for e in rec.events[before:] if e.connection_id == "dev"] == []

        # The failback itself is a real connect: it waits for the slot.
        await clock.advance(1.0)
        await rec.wait_for("failback")
        await asyncio.sleep(0.2)
        assert m.get_state("dev") is not S.CONNECTED
        assert links_to(a.port) == 0 and links_to(b.port) == 0
        await m.remove_connection("hog")  # frees the slot
        await until(lambda: m.get_state("dev") is S.CONNECTED and active(m) == 0)
        assert links_to(a.port) == 1 and links_to(b.port) == 0
