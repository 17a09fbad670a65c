"""A driver's own word on its health: `report_degraded` and the driver's clock."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Recorder, tcp
from edgelink import ConnectionManager
from edgelink.clock import SystemClock
from edgelink.drivers.tcp import TcpConnection
from edgelink.testing import ManualClock, PingPongPeer

Make = Callable[..., ConnectionManager]


async def test_driver_degraded_reason_shows_in_health_and_status(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that report_degraded keeps the link, shows degraded with a reason, and clears."""
    m = make_manager(clock=clock, watchdog_interval=1e9, health_check_interval=5)
    rec = Recorder(m)
    conn = m.add_connection("dev", "tcp", tcp(peer.port))
    assert isinstance(conn, TcpConnection)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        assert conn.clock is clock  # a driver's timers run on the manager's clock
        conn.report_degraded("1 subscription unconfirmed")
        status = m.get_status("dev")
        assert (status["status"], status["health"]) == ("connected", "degraded")
        assert status["health_reason"] == "1 subscription unconfirmed"
        # A passing health check does not make it healthy while the driver says so.
        await clock.wait_for_timer(lambda d: d == 5)
        await clock.advance(5)
        await clock.wait_for_timer(lambda d: d == 5)
        assert m.get_status("dev")["health"] == "degraded"
        conn.report_degraded(None)
        status = m.get_status("dev")
        assert (status["health"], status["health_reason"]) == ("healthy", None)
        changes = [e.data["new"] for e in await rec.of("health_change")]
        assert changes[-2:] == ["degraded", "healthy"]
        assert (await rec.of("disconnected")) == []


async def test_degraded_reason_carries_into_a_new_link(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that a reason the driver still holds makes a fresh link start degraded."""
    m = make_manager(clock=clock, watchdog_interval=1e9, health_check_interval=None)
    conn = m.add_connection("dev", "tcp", tcp(peer.port))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        conn.report_degraded("replay pending")
        await m.restart_connection("dev")
        await m.wait_for_state("dev", "connected", timeout=5)
        assert m.get_status("dev")["health"] == "degraded"


def test_standalone_driver_has_the_system_clock() -> None:
    """Test that a driver without an owner uses the system clock and keeps its reason."""
    conn = TcpConnection("dev", tcp(1))
    assert isinstance(conn.clock, SystemClock)
    conn.report_degraded("x")
    assert conn.degraded_reason == "x"
