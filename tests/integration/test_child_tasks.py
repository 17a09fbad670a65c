"""A link's child tasks are owned: a crashed poller is evented and restarted; stop obeys cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from devices import CrashingPoller

from conftest import Recorder, tcp
from edgelink import ConnectionManager
from edgelink.supervisor import MAX_CHILD_RESTARTS
from edgelink.testing import ManualClock
from edgelink.testing.peers import PingPongPeer

Make = Callable[..., ConnectionManager]
NO_WATCHDOG = 1e9
POLL = [{"tags": ["temperature"], "interval": 1.0}]


def health_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "edgelink[dev].health"]


async def test_crashed_poller_is_restarted_while_health_goes_on(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that a poller that raises is evented and restarted and the health task keeps going."""
    m = make_manager(clock=clock, health_check_interval=1.0, watchdog_interval=NO_WATCHDOG)
    m.register_connection_type("crashing_poller", CrashingPoller)
    CrashingPoller.crashes, CrashingPoller.good_reads = 1, 0
    m.add_connection("dev", "crashing_poller", tcp(peer.port), poll=POLL)
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        (event,) = await rec.wait_for("supervisor_restarted")
        assert event.data["cause"] == "task_died" and event.data["task"] == "poll0"
        assert "poller boom" in event.data["detail"] and event.data["restarts"] == 1
        (health,) = health_tasks()
        sent = m.get_status("dev")["stats"]["packets_sent"]
        await clock.advance(1.0)  # the restart delay (0.1 s) and one health interval
        async with asyncio.timeout(2):
            while (
                CrashingPoller.good_reads == 0
                or m.get_status("dev")["stats"]["packets_sent"] < sent + 2
            ):
                await asyncio.sleep(0.005)
        assert not health.done() and health_tasks() == [health]
        assert m.get_status("dev")["status"] == "connected"
        assert await rec.of("disconnected") == []
        assert m.get_supervisor("dev").restarts == 1


async def test_poller_that_keeps_crashing_drops_the_link(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that child restarts are bounded: one crash too many drops the link, which comes back."""
    m = make_manager(clock=clock, health_check_interval=60, watchdog_interval=NO_WATCHDOG)
    m.register_connection_type("crashing_poller", CrashingPoller)
    CrashingPoller.crashes, CrashingPoller.good_reads = MAX_CHILD_RESTARTS + 1, 0
    m.add_connection("dev", "crashing_poller", tcp(peer.port), poll=POLL)
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        delays = []
        for n in range(1, MAX_CHILD_RESTARTS + 1):
            restarted = await rec.wait_for("supervisor_restarted", n)
            delays.append(restarted[-1].data["delay"])
            await clock.advance(restarted[-1].data["delay"])
        assert delays == sorted(delays) and delays[0] < delays[-1]  # backing off
        (lost,) = await rec.wait_for("disconnected")
        assert lost.data["reason"] == "task_died"
        await clock.advance(10)
        await m.wait_for_state("dev", "connected", timeout=5)
        async with asyncio.timeout(2):
            while CrashingPoller.good_reads == 0:
                await asyncio.sleep(0.005)


async def test_cancelled_manager_stop_propagates(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that cancelling manager.stop() while it ends its tasks cancels the caller."""
    m = make_manager()
    m.add_connection("dev", "tcp", tcp(peer.port))
    await m.start()
    await m.wait_for_state("dev", "connected", timeout=5)
    stopping = asyncio.get_running_loop().create_task(m.stop())
    await asyncio.sleep(0)  # stop() now waits for its watchdog task to end
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    # The interrupted stop can be finished.
    await m.start()
    await m.stop()
