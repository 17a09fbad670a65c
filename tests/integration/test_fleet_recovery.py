"""Fleet-aware recovery against a real loopback peer, on the manual clock.

Eight ``tcp`` connections to one PING/PONG peer lose it together and back off
to 3.2 s; a ninth ("lead") retries every 0.4 s at most. When the peer is back
and the lead reconnects, its siblings try within the wake window instead of
after their own backoff, each with one connection on the wire.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import psutil

from conftest import Recorder, tcp
from edgelink import ConnectionManager, ConnectionState
from edgelink.testing import ManualClock
from edgelink.testing.peers import PingPongPeer

S = ConnectionState
NO_WATCHDOG = 1e9
N = 8
SIBLINGS = [f"dev{i}" for i in range(N)]
#: Backoff of the siblings after 5 failed attempts (0.1, 0.2, 0.4, 0.8, 1.6 waited).
SIBLING_WAIT = 3.2
Make = Callable[..., ConnectionManager]


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait in real time (the clock stands still) until ``pred()``."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


def states(m: ConnectionManager, ids: list[str]) -> list[S]:
    return [m.get_state(cid) for cid in ids]


def attempts(m: ConnectionManager, cid: str) -> int:
    return int(m.get_status(cid)["reconnect_attempts"])


def links_to(port: int) -> int:
    """Count this process's established TCP connections to ``port``."""
    return sum(
        1
        for c in psutil.Process(os.getpid()).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def step(clock: ManualClock) -> None:
    """Advance to the soonest timer (a hair past it: the deadlines are sums of floats)."""
    await clock.advance(clock.pending()[0] + 1e-6)


async def outage(
    make_manager: Make,
    clock: ManualClock,
    peer: PingPongPeer,
    sibling_settings: dict[str, Any],
    *,
    extra: dict[str, dict[str, Any]] | None = None,
    stay_down: PingPongPeer | None = None,
    probe: float | None = None,
) -> tuple[ConnectionManager, Recorder]:
    """Connect the lead and the siblings, take the peer away and back off to 3.2 s.

    Returns with the peer listening again and every link still waiting;
    ``stay_down`` goes away with the peer and stays away. The group's probe
    (``fleet_probe_interval``) is off unless ``probe`` is given.
    """
    m = make_manager(
        clock=clock,
        watchdog_interval=NO_WATCHDOG,
        reconnect_max_attempts=None,
        fleet_probe_interval=probe,
    )
    m.add_connection("lead", "tcp", tcp(peer.port), settings={"reconnect_max_delay": 0.4})
    for cid in SIBLINGS:
        m.add_connection(cid, "tcp", tcp(peer.port), settings=sibling_settings)
    for cid, config in (extra or {}).items():
        m.add_connection(cid, "tcp", config)
    rec = Recorder(m)
    await m.start()
    everyone = ["lead", *SIBLINGS, *(extra or {})]
    await until(lambda: all(s is S.CONNECTED for s in states(m, everyone)))
    await peer.stop()
    if stay_down is not None:
        await stay_down.stop()

    def all_waiting() -> bool:
        return all(m.get_status(cid)["next_retry_at"] is not None for cid in everyone)

    # Five failed rounds: the siblings wait 0.1, 0.2, 0.4, 0.8, 1.6 s, then 3.2 s
    # (the lead 0.4 s at most); each round's attempts run in real time.
    while True:
        await until(all_waiting)
        if all(attempts(m, cid) == 5 for cid in everyone[1:]):
            break
        await step(clock)
    await peer.start()
    return m, rec


async def lead_back(m: ConnectionManager, clock: ManualClock) -> None:
    """Fire the lead's next attempt (the soonest timer) and wait until it is connected."""
    assert clock.pending()[0] <= 0.4
    await step(clock)
    await until(lambda: m.get_state("lead") is S.CONNECTED)


async def test_a_sibling_back_wakes_the_group_within_the_window(
    make_manager: Make, clock: ManualClock, peer: PingPongPeer
) -> None:
    """Test that siblings reconnect within the wake window after the lead, not after 3.2 s."""
    m, rec = await outage(make_manager, clock, peer, {})
    assert all(s is S.RECONNECTING for s in states(m, SIBLINGS))
    before = {cid: attempts(m, cid) for cid in SIBLINGS}
    assert set(before.values()) == {5}
    # The lead's next attempt comes within 0.4 s; it finds the peer back.
    await lead_back(m, clock)
    up_at = clock.monotonic()
    assert min(m.get_status(cid)["next_retry_at"] for cid in SIBLINGS) - clock.time() > 2.5
    # Within the wake window (0.3 s with 8 siblings) every sibling is back.
    await clock.advance(0.3)
    await until(lambda: all(s is S.CONNECTED for s in states(m, SIBLINGS)))
    assert clock.monotonic() - up_at <= 0.3 + 1e-9
    wakes = await rec.of("fleet_wake")
    assert len(wakes) == 1
    assert wakes[0].data["group"] == "host:127.0.0.1"
    assert wakes[0].data["count"] == N and wakes[0].data["trigger"] == "lead"
    # The woken attempt was counted as nothing more: the counter waits for stable_after.
    assert {cid: attempts(m, cid) for cid in SIBLINGS} == before
    snap = m.runtime_status()["fleet_recovery"]
    assert snap["wakes"] == 1 and snap["woken"] == N
    assert snap["largest"][0]["members"] == N + 1
    # Exactly one connection per device, on both ends.
    await until(lambda: peer.connections == N + 1)
    assert links_to(peer.port) == N + 1


async def test_opted_out_siblings_wait_their_own_backoff(
    make_manager: Make, clock: ManualClock, peer: PingPongPeer
) -> None:
    """Test that with fleet_recovery false the siblings wait out their backoff as before."""
    m, rec = await outage(make_manager, clock, peer, {"fleet_recovery": False})
    await lead_back(m, clock)
    await clock.advance(0.3)
    await asyncio.sleep(0.05)
    assert all(s is S.RECONNECTING for s in states(m, SIBLINGS))
    assert await rec.of("fleet_wake") == []
    await clock.advance(SIBLING_WAIT)
    await until(lambda: all(s is S.CONNECTED for s in states(m, SIBLINGS)))
    assert links_to(peer.port) == N + 1


async def test_a_woken_sibling_that_fails_counts_once_and_keeps_its_backoff(
    make_manager: Make, clock: ManualClock, peer: PingPongPeer
) -> None:
    """Test that a woken sibling whose device is still away fails once and backs off 6.4 s."""
    async with PingPongPeer() as other:
        m, rec = await outage(
            make_manager, clock, peer, {}, extra={"dead": tcp(other.port)}, stay_down=other
        )
    assert attempts(m, "dead") == 5
    await lead_back(m, clock)
    await clock.advance(0.3)
    await until(lambda: attempts(m, "dead") == 6)
    await until(lambda: all(s is S.CONNECTED for s in states(m, SIBLINGS)))
    assert m.get_state("dead") is S.RECONNECTING
    # Its backoff goes on from the counter: 0.1 x 2^5, not reset, not skipped.
    starts = [e for e in await rec.of("reconnect_start") if e.connection_id == "dead"]
    assert starts[-1].data["delay"] == 6.4
    assert len(await rec.of("fleet_wake")) == 1


async def test_a_group_all_down_probes_and_comes_back_within_the_probe_interval(
    make_manager: Make, clock: ManualClock, peer: PingPongPeer
) -> None:
    """Test that with no lead the group's probe finds the peer back long before any backoff ends."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, reconnect_max_attempts=None)
    for cid in SIBLINGS:
        m.add_connection(cid, "tcp", tcp(peer.port))
    rec = Recorder(m)
    await m.start()
    await until(lambda: all(s is S.CONNECTED for s in states(m, SIBLINGS)))
    await peer.stop()

    def all_waiting() -> bool:
        return all(m.get_status(cid)["next_retry_at"] is not None for cid in SIBLINGS)

    # 3.5 s of outage in 50 ms steps, each step's attempts (and probes) in real time.
    for _ in range(70):
        await until(all_waiting)
        await clock.advance(0.05)
    await until(all_waiting)
    probes = m.fleet.snapshot()["probes"]
    # One per 0.25 s, or per longest backoff / 8 members once that is longer.
    assert 4 <= probes <= 15
    # On their own most would not try for 2 s more (0.1 + 0.2 + ... + 3.2 = 6.3 s).
    due = sorted(m.get_status(cid)["next_retry_at"] - clock.time() for cid in SIBLINGS)
    assert due[N // 2] > 2.0
    pace = 6.4 / N  # at most: no backoff is longer than 6.4 s yet
    await peer.start()
    back_from = clock.monotonic()
    while not all(s is S.CONNECTED for s in states(m, SIBLINGS)):
        assert clock.monotonic() - back_from < pace + 0.3 + 1e-6
        await clock.advance(0.05)
        await asyncio.sleep(0.01)
    wakes = await rec.of("fleet_wake")
    assert len(wakes) == 1 and wakes[0].data["count"] == N - 1
    await until(lambda: peer.connections == N)
    assert links_to(peer.port) == N


async def test_a_suspended_sibling_in_cooldown_is_woken_too(
    make_manager: Make, clock: ManualClock, peer: PingPongPeer
) -> None:
    """Test that a sibling suspended after max attempts comes back with the lead, not in 300 s."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, fleet_probe_interval=None)
    m.add_connection("lead", "tcp", tcp(peer.port), settings={"reconnect_max_delay": 0.4})
    m.add_connection("sus", "tcp", tcp(peer.port), settings={"reconnect_max_attempts": 1})
    await m.start()
    await until(lambda: m.get_state("lead") is S.CONNECTED and m.get_state("sus") is S.CONNECTED)
    await peer.stop()
    await until(lambda: m.get_status("sus")["next_retry_at"] is not None)
    await step(clock)  # both try once after 0.1 s: sus is suspended, cooling down 300 s
    await until(lambda: m.get_state("sus") is S.SUSPENDED)
    await until(lambda: m.get_status("lead")["next_retry_at"] is not None)
    assert any(abs(d - 300.0) < 1e-3 for d in clock.pending())  # its cooldown
    await peer.start()
    await lead_back(m, clock)
    await clock.advance(0.3)
    await until(lambda: m.get_state("sus") is S.CONNECTED)
    assert links_to(peer.port) == 2
