"""Flap dampening and poison quarantine against real loopback peers, time on a manual clock."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from operator import eq
from typing import Any

import pytest
from devices import BatchDevice

from conftest import Recorder, tcp
from edgelink import ConnectionManager, Health
from edgelink.drivers.tcp import TcpConnection
from edgelink.testing import ManualClock
from edgelink.testing.fault_proxy import FaultProxy
from edgelink.testing.peers import PingPongPeer

NO_WATCHDOG = 1e9
Make = Callable[..., ConnectionManager]


def small(d: float) -> bool:
    return d < 1.0


@pytest.fixture
async def proxy(peer: PingPongPeer) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the peer."""
    async with FaultProxy("127.0.0.1", peer.port) as p:
        yield p


async def flap(m: ConnectionManager, proxy: FaultProxy, clock: ManualClock, times: int) -> None:
    """Drop the link ``times`` times, letting it come back after each backoff delay."""
    for _ in range(times):
        await proxy.drop_all()
        await m.wait_for_state("dev", "reconnecting", timeout=2)
        await clock.advance(await clock.wait_for_timer(small))
        await m.wait_for_state("dev", "connected", timeout=2)


async def make_flapping(
    make_manager: Make, proxy: FaultProxy, clock: ManualClock
) -> tuple[ConnectionManager, Recorder, float]:
    """Start a connection through the proxy and flap it into a hold-down; return the hold."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=None)
    m.add_connection("dev", "tcp", tcp(proxy.port))
    rec = Recorder(m)
    await m.start()
    await m.wait_for_state("dev", "connected", timeout=5)
    await flap(m, proxy, clock, 2)
    await proxy.drop_all()  # the third loss within a fraction of a second
    await rec.wait_for("flapping")
    hold = await clock.wait_for_timer(lambda d: d > 1.0)
    return m, rec, hold


async def test_flapping_link_is_held_down_then_let_back_and_cleared(
    make_manager: Make, proxy: FaultProxy, clock: ManualClock
) -> None:
    """Test that a link dropped three times in quick succession is held down until its penalty decays."""
    m, rec, hold = await make_flapping(make_manager, proxy, clock)
    # Three flaps 0.1 s apart: a penalty of about 3000 decays to the reuse limit (1000)
    # in 120 * log2(3) s with the default half-life.
    assert hold == pytest.approx(120 * math.log2(3.0), abs=0.1)
    (ev,) = await rec.of("flapping")
    assert ev.data["flaps"] == 3 and ev.data["first"] is True
    assert ev.data["penalty"] > 2500 and ev.data["hold_down"] == pytest.approx(hold, abs=0.1)
    st = m.get_status("dev")
    assert st["status"] == "reconnecting" and st["reason"] == "flapping"
    assert st["flapping"] is True and st["health_reason"] == "flapping"
    assert st["flap"]["flaps"] == 3 and st["flap"]["penalty"] > 2500
    assert st["next_retry_at"] == pytest.approx(clock.time() + hold, abs=0.1)
    assert "flapping" in repr(m.get_supervisor("dev"))

    # No attempt is made while held down: the proxy sees no new connection.
    accepted = proxy.accepted
    await clock.advance(hold - 1)
    await asyncio.sleep(0.05)
    assert proxy.accepted == accepted and m.get_state("dev") == "reconnecting"

    await clock.advance(1)
    await m.wait_for_state("dev", "connected", timeout=2)
    st = m.get_status("dev")
    # Back, but still flagged until it has stayed up for stable_after (10 s).
    assert st["flapping"] is True and st["health"] == "degraded"
    await clock.advance(10)
    (cleared,) = await rec.wait_for("flap_cleared")
    assert cleared.data["reason"] == "stable"
    st = m.get_status("dev")
    assert st["flapping"] is False and st["health"] == "healthy" and st["health_reason"] is None
    assert m.get_supervisor("dev").health is Health.HEALTHY
    await m.stop()


async def test_flapping_link_coalesces_its_per_attempt_events(
    make_manager: Make, proxy: FaultProxy, clock: ManualClock
) -> None:
    """Test that a flapping link emits each per-attempt event at most once a minute and counts the rest."""
    m, rec, hold = await make_flapping(make_manager, proxy, clock)
    await clock.advance(hold)
    await m.wait_for_state("dev", "connected", timeout=2)
    before = len(await rec.of("reconnect_start")), len(await rec.of("reconnect_failed"))

    # It drops again and the device refuses four attempts (backoff 0.1, 0.2, 0.4, 0.8 s).
    await proxy.stop_listening()
    await proxy.drop_all()
    await m.wait_for_state("dev", "reconnecting", timeout=2)
    for delay in (0.1, 0.2, 0.4, 0.8):
        await clock.advance(await clock.wait_for_timer(partial(eq, delay)))
    await clock.wait_for_timer(lambda d: d == 1.6)
    after = len(await rec.of("reconnect_start")), len(await rec.of("reconnect_failed"))
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    sup = m.get_supervisor("dev")
    assert sup.suppressed_events == 7  # 4 + 3 held back (the fifth start is pending now)
    assert m.get_status("dev")["flap"]["suppressed_events"] == 7
    # Transitions are never held back: the bridge and the status rely on them.
    assert len(await rec.of("disconnected")) == 4

    await proxy.start_listening()
    await clock.advance(1.6)
    await m.wait_for_state("dev", "connected", timeout=2)
    await clock.advance(10)
    (cleared,) = await rec.wait_for("flap_cleared")
    assert cleared.data["suppressed_events"] == 7 and cleared.data["held_back"] == 7
    await m.stop()


async def test_admin_reconnect_cuts_the_hold_down_and_restart_forgives(
    make_manager: Make, proxy: FaultProxy, clock: ManualClock
) -> None:
    """Test that an admin reconnect ends a hold-down and a restart clears the flap history."""
    m, rec, hold = await make_flapping(make_manager, proxy, clock)
    await m.safe_reconnect("dev")
    await m.wait_for_state("dev", "connected", timeout=2)
    # Up and stable, but let back early: flagged until the penalty has decayed.
    await clock.advance(10)
    assert m.get_status("dev")["flapping"] is True
    await clock.advance(hold - 10)
    (cleared,) = await rec.wait_for("flap_cleared")
    assert cleared.data["reason"] == "stable"
    assert m.get_status("dev")["flap"]["flaps"] == 3

    # The penalty is still near the reuse limit: two more quick losses are enough.
    await flap(m, proxy, clock, 1)
    await proxy.drop_all()
    assert (await rec.wait_for("flapping", 2))[1].data["flaps"] == 5
    await m.restart_connection("dev")
    await m.wait_for_state("dev", "connected", timeout=2)
    cleared = (await rec.wait_for("flap_cleared", 2))[1]
    assert cleared.data["reason"] == "admin_restart"
    st = m.get_status("dev")
    assert st["flapping"] is False and st["flap"]["flaps"] == 0 and st["flap"]["penalty"] == 0
    await m.stop()


async def test_dampening_off_reconnects_every_time(
    make_manager: Make, proxy: FaultProxy, clock: ManualClock
) -> None:
    """Test that flap_dampening false keeps the old behaviour: no hold-down, no flag."""
    m = make_manager(
        clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=None, flap_dampening=False
    )
    m.add_connection("dev", "tcp", tcp(proxy.port))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await flap(m, proxy, clock, 5)
        assert await rec.of("flapping") == []
        assert m.get_status("dev")["flap"] is None


# ------------------------------------------------------------------ poison


class DecodeBugDevice(TcpConnection):
    """A driver with a decoding bug: the reply to ``status`` raises KeyError."""

    type_name = "decode_bug"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[str] = []

    async def read(self, tag: str) -> Any:
        self.reads.append(tag)
        raw = await super().read(tag)
        if tag == "status":
            return {"ON": 1, "OFF": 0}[raw]
        return raw


class HangingTagDevice(TcpConnection):
    """A driver whose read of ``stuck`` never returns (its handler hangs)."""

    type_name = "hanging_tag"

    async def read(self, tag: str) -> Any:
        if tag == "stuck":
            await asyncio.sleep(3600)
        return await super().read(tag)


class DataLog:
    """Datapoints a manager reports, as (tag, quality) pairs."""

    def __init__(self, m: ConnectionManager) -> None:
        self.points: list[tuple[str, str]] = []
        m.on_data(lambda _cid, tag, _v, quality, _ts: self.points.append((tag, quality)))

    def good(self, tag: str) -> int:
        return self.points.count((tag, "good"))


async def poll_rounds(clock: ManualClock, n: int) -> None:
    """Let the poll group (interval 1 s) run ``n`` more rounds."""
    for _ in range(n):
        await clock.advance(await clock.wait_for_timer(lambda d: d == 1.0))
    await clock.wait_for_timer(lambda d: d == 1.0)


def buggy_device(
    make_manager: Make,
    clock: ManualClock,
    cls: type[TcpConnection],
    peer: PingPongPeer,
    groups: list[list[str]],
) -> tuple[ConnectionManager, Any, Recorder, DataLog]:
    """A manager with one connection of driver ``cls`` polling ``groups`` every second."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=None)
    m.register_connection_type(cls.type_name, cls)
    conn = m.add_connection(
        "dev", cls.type_name, tcp(peer.port), poll=[{"tags": g, "interval": 1.0} for g in groups]
    )
    return m, conn, Recorder(m), DataLog(m)


async def test_crashing_tag_is_quarantined_while_the_rest_flows(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that a tag whose decoding crashes is quarantined after 3 rounds; the link and other tags go on."""
    peer.values["status"] = "WEIRD"
    m, conn, rec, data = buggy_device(
        make_manager, clock, DecodeBugDevice, peer, [["temperature", "status", "power"]]
    )
    assert isinstance(conn, DecodeBugDevice)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await poll_rounds(clock, 2)  # rounds 1..3
        (q,) = await rec.wait_for("poll_quarantined")
        assert q.data["tags"] == ["status"] and q.data["reason"] == "poison"
        assert q.data["cause"] == "crash" and "KeyError" in q.data["error"]
        crashes = await rec.of("error")
        assert [e.data["reason"] for e in crashes] == ["read_crashed"] * 3
        (entry,) = m.get_status("dev")["quarantined"]
        assert entry["tag"] == "status" and entry["reason"] == "poison"
        assert entry["since"] == pytest.approx(clock.time()) and entry["strikes"] == 3
        assert "quarantined=1" in repr(m.get_supervisor("dev"))

        await poll_rounds(clock, 3)
        # The link never dropped; the other tags kept flowing; status is read no more.
        assert await rec.of("disconnected") == []
        assert m.get_state("dev") == "connected"
        assert data.good("temperature") == 6 and data.good("power") == 6
        assert conn.reads.count("status") == 3
        # Bad once per good->bad change (with the crash as reason), not once per read.
        assert data.points.count(("status", "bad")) == 1

        with pytest.raises(KeyError, match="not quarantined"):
            await m.release_quarantine("dev", "temperature")
        assert await m.release_quarantine("dev", "status") == ["status"]
        assert m.get_status("dev")["quarantined"] == []
        (released,) = await rec.wait_for("quarantine_released")
        assert released.data["tags"] == ["status"]
        # Fixed on the device side: the tag reads good again.
        peer.values["status"] = "ON"
        await poll_rounds(clock, 1)
        assert data.good("status") == 1


async def test_hanging_tag_is_quarantined_and_the_link_dampened(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that a read that blows its time budget 3 times in a row is quarantined."""
    m = make_manager(
        clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=None, request_timeout=0.1
    )
    m.register_connection_type("hanging_tag", HangingTagDevice)
    m.add_connection(
        "dev",
        "hanging_tag",
        tcp(peer.port),
        poll=[{"tags": ["temperature", "stuck"], "interval": 1}],
    )
    rec = Recorder(m)
    data = DataLog(m)
    async with m:
        # Each timeout drops the link (a request/response stream is out of step after
        # one) and reconnects on the fast path at once: three flaps, three strikes.
        (q,) = await rec.wait_for("poll_quarantined")
        assert q.data["tags"] == ["stuck"] and q.data["cause"] == "timeout"
        await rec.wait_for("flapping")
        assert len(await rec.of("tx_drop_detected")) == 3
        hold = await clock.wait_for_timer(lambda d: d > 1.0)
        await clock.advance(hold)
        await m.wait_for_state("dev", "connected", timeout=2)
        before = data.good("temperature")
        await poll_rounds(clock, 3)
        assert data.good("temperature") == before + 3
        assert len(await rec.of("tx_drop_detected")) == 3
        assert m.get_status("dev")["quarantined"][0]["cause"] == "timeout"


async def test_timeouts_of_an_unreachable_device_are_no_strikes(
    make_manager: Make, peer: PingPongPeer, proxy: FaultProxy, clock: ManualClock
) -> None:
    """Test that a failed reconnect clears the strikes: the link timed out, not the tag."""
    m = make_manager(
        clock=clock,
        watchdog_interval=NO_WATCHDOG,
        health_check_interval=None,
        request_timeout=0.1,
        flap_dampening=False,
    )
    m.register_connection_type("hanging_tag", HangingTagDevice)
    m.add_connection(
        "dev", "hanging_tag", tcp(proxy.port), poll=[{"tags": ["stuck"], "interval": 1}]
    )
    rec = Recorder(m)
    async with m:
        for n in range(1, 5):
            await m.wait_for_state("dev", "connected", timeout=2)
            # The device goes away while the read of "stuck" hangs: the fast
            # path after the timeout is refused.
            await proxy.stop_listening()
            await rec.wait_for("reconnect_failed", n)
            await proxy.start_listening()
            await clock.advance(await clock.wait_for_timer(lambda d: d < 60))
        await m.wait_for_state("dev", "connected", timeout=2)
        assert len(await rec.of("tx_drop_detected")) == 4
        assert await rec.of("poll_quarantined") == []


class CrashingBatchDevice(BatchDevice):
    """A batched driver whose ``read_many`` crashes on every batch holding ``status``."""

    type_name = "crashing_batch"

    async def read_many(self, tags: Sequence[str]) -> dict[str, Any]:
        results = await super().read_many(tags)
        if "status" in tags:
            return {tag: int(value) for tag, value in results.items()}  # "WEIRD": ValueError
        return results


async def test_crashing_batch_quarantines_its_group_only(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that a batched read that crashes as a whole quarantines its group, not others."""
    peer.values["status"] = "WEIRD"
    m, _conn, rec, data = buggy_device(
        make_manager, clock, CrashingBatchDevice, peer, [["temperature", "status"], ["power"]]
    )
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        for _ in range(3):
            await clock.wait_for_sleepers(2)
            await clock.advance(1.0)
        (q,) = await rec.wait_for("poll_quarantined")
        assert q.data["tags"] == ["temperature", "status"] and "ValueError" in q.data["error"]
        assert {e["tag"] for e in m.get_status("dev")["quarantined"]} == {"temperature", "status"}
        assert data.good("power") == 4 and data.good("temperature") == 0
        assert await rec.of("disconnected") == []
        assert await m.release_quarantine("dev") == ["temperature", "status"]
