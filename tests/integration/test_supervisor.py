"""The supervisor against real loopback peers: loss, backoff, suspension, fast path, watchdog."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
from devices import CrashingDevice, ModalDevice, StubbornDevice

from conftest import Recorder, tcp
from edgelink import ConnectionManager, ConnectionState, Health
from edgelink.testing import ManualClock
from edgelink.testing.fault_proxy import FaultMode, FaultProxy
from edgelink.testing.peers import PingPongPeer

S = ConnectionState
NO_WATCHDOG = 1e9
Make = Callable[..., ConnectionManager]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def small(d: float) -> bool:
    return d < 1e6


async def test_connects_and_reports_status(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that a connection comes up, answers reads and explains itself in its status."""
    m = make_manager()
    conn = m.add_connection("dev", "tcp", tcp(peer.port), name="Device")
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        assert await m.execute_with_retry("dev", lambda c: c.read("temperature")) == "21.5"
        await m.execute_with_retry("dev", lambda c: c.write("setpoint", 5))
        assert peer.values["setpoint"] == "5"
        st = m.get_status("dev")
        assert st["status"] == "connected" and st["health"] == "healthy"
        assert st["desired"] == "running" and st["name"] == "Device" and st["type"] == "tcp"
        assert st["stats"]["packets_sent"] >= 3 and st["stats"]["bytes_received"] > 0
        assert st["connected_at"] is not None and st["reconnect_attempts"] == 0
        assert conn.status is S.CONNECTED
        assert "connected" in repr(m.get_supervisor("dev"))


async def test_peer_killed_and_restarted(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that a killed peer is noticed at once and the link comes back when it returns."""
    m = make_manager(health_check_interval=60)
    m.add_connection("dev", "tcp", tcp(peer.port))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await peer.stop()
        # The reader sees EOF: no health interval (60 s) has to pass.
        await m.wait_for_state("dev", "reconnecting", timeout=2)
        await peer.start()
        await m.wait_for_state("dev", "connected", timeout=5)
        st = m.get_status("dev")
        assert st["stats"]["reconnects"] == 1
        types = await rec.types()
        assert types[:2] == ["connected", "disconnected"]
        assert "reconnect_ok" in types
        lost = (await rec.of("disconnected"))[0]
        assert lost.data["reason"] in ("connection_reset", "connection_lost", "lost")


async def test_refused_backs_off_exactly_then_suspends(
    make_manager: Make, clock: ManualClock
) -> None:
    """Test that refused attempts wait 0.1, 0.2, 0.4, 0.8 s, then suspend at max attempts."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, reconnect_max_attempts=4)
    m.add_connection("dev", "tcp", tcp(free_port()))
    rec = Recorder(m)
    async with m:
        delays = []
        for _ in range(4):
            delays.append(await clock.wait_for_timer(small))
            await clock.advance(delays[-1])
        assert delays == [0.1, 0.2, 0.4, 0.8]
        await m.wait_for_state("dev", "suspended", timeout=2)
        st = m.get_status("dev")
        assert st["reason"] == "max_attempts" and st["reconnect_attempts"] == 4
        assert "refused" in (st["last_error"] or "").lower() or st["transitions"]
        failed = await rec.of("reconnect_failed")
        assert [e.data["reason"] for e in failed] == ["refused"] * 4
        assert len(await rec.of("max_retries_exceeded")) == 1
        assert (await rec.of("suspended"))[0].data["next_probe_in"] == 300.0


async def test_suspended_cooldown_probes_doubling_then_recovers(
    make_manager: Make, clock: ManualClock
) -> None:
    """Test that a suspended connection probes after 300 s, then 600 s, and recovers."""
    port = free_port()
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, reconnect_max_attempts=1)
    m.add_connection("dev", "tcp", tcp(port))
    rec = Recorder(m)
    async with m:
        await clock.advance(await clock.wait_for_timer(small))  # the one reconnect attempt
        await m.wait_for_state("dev", "suspended", timeout=2)
        assert await clock.wait_for_timer(small) == 300.0
        await clock.advance(300)
        await rec.wait_for("suspended", 2)
        assert await clock.wait_for_timer(small) == 600.0
        async with PingPongPeer(port=port):
            await clock.advance(600)
            await m.wait_for_state("dev", "connected", timeout=2)
        alerts = await rec.of("suspended")
        assert [e.data["next_probe_in"] for e in alerts] == [300.0, 600.0]


async def test_resume_after_suspension(make_manager: Make, clock: ManualClock) -> None:
    """Test that resume() brings a suspended connection back with a fresh counter."""
    port = free_port()
    m = make_manager(
        clock=clock, watchdog_interval=NO_WATCHDOG, reconnect_max_attempts=1, suspend_cooldown=None
    )
    m.add_connection("dev", "tcp", tcp(port))
    rec = Recorder(m)
    async with m:
        await clock.advance(await clock.wait_for_timer(small))  # the one reconnect attempt
        await m.wait_for_state("dev", "suspended", timeout=2)
        assert clock.pending() == [] or min(clock.pending()) > 1e6  # waits for a person
        async with PingPongPeer(port=port):
            await m.resume("dev")
            await m.wait_for_state("dev", "connected", timeout=2)
            assert m.get_status("dev")["reconnect_attempts"] == 0
        assert len(await rec.of("resumed")) == 1


async def test_half_open_peer_times_out(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that a peer that accepts and then says nothing is a timeout, never 'connected'."""
    async with FaultProxy("127.0.0.1", peer.port) as proxy:
        proxy.mode = FaultMode.HALF_OPEN
        m = make_manager(connect_timeout=0.2)
        m.add_connection("dev", "tcp", tcp(proxy.port))
        rec = Recorder(m)
        async with m:
            failed = await rec.wait_for("reconnect_failed")
            assert failed[0].data["reason"] == "timeout"
            assert m.get_state("dev") is S.RECONNECTING


async def test_silent_peer_while_connected_is_half_open(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that a hung device process is caught by the health check (reason half_open)."""
    m = make_manager(
        clock=clock,
        watchdog_interval=NO_WATCHDOG,
        health_check_interval=5,
        health_check_timeout=0.2,
    )
    m.add_connection("dev", "tcp", tcp(peer.port))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        peer.respond = False
        await clock.wait_for_timer(lambda d: d == 5)
        await clock.advance(5)
        await m.wait_for_state("dev", "reconnecting", timeout=2)
        assert (await rec.of("disconnected"))[0].data["reason"] == "half_open"
        assert len(await rec.of("health_check_failed")) == 1


async def test_health_failures_threshold(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that the link counts as lost only after health_check_failures in a row."""
    m = make_manager(
        clock=clock,
        watchdog_interval=NO_WATCHDOG,
        health_check_interval=5,
        health_check_timeout=0.2,
        health_check_failures=3,
    )
    m.add_connection("dev", "tcp", tcp(peer.port))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        peer.respond = False
        for _ in (1, 2):
            await clock.wait_for_timer(lambda d: d == 5)
            await clock.advance(5)
            await asyncio.sleep(0.3)
            assert m.get_state("dev") is S.CONNECTED
            assert m.get_supervisor("dev").health is Health.DEGRADED
        await clock.wait_for_timer(lambda d: d == 5)
        await clock.advance(5)
        await m.wait_for_state("dev", "reconnecting", timeout=2)


async def test_garbage_is_a_protocol_error(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that garbage from the device drops the link with reason protocol_error."""
    async with FaultProxy("127.0.0.1", peer.port) as proxy:
        proxy.mode = FaultMode.CORRUPT
        m = make_manager()
        m.add_connection("dev", "tcp", tcp(proxy.port))
        rec = Recorder(m)
        async with m:
            failed = await rec.wait_for("reconnect_failed")
            assert failed[0].data["reason"] == "protocol_error"
            proxy.mode = FaultMode.PASS
            await m.wait_for_state("dev", "connected", timeout=5)


async def test_partial_line_then_drop(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that a frame cut mid-line is noticed and the link rebuilt."""
    async with FaultProxy("127.0.0.1", peer.port) as proxy:
        m = make_manager(health_check_interval=60)
        m.add_connection("dev", "tcp", tcp(proxy.port))
        rec = Recorder(m)
        async with m:
            await m.wait_for_state("dev", "connected", timeout=5)
            proxy.drop_after(2, direction="downstream")  # "21" of "21.5\n", then RST
            with pytest.raises(Exception):  # noqa: B017, PT011 - any link error is fine here
                await m.execute_with_retry("dev", lambda c: c.read("temperature"), retries=0)
            await rec.wait_for("reconnect_ok")
            assert m.get_state("dev") is S.CONNECTED
            lost = await rec.of("disconnected")
            assert lost[0].data["reason"] in ("connection_reset", "protocol_error", "tx_drop")


async def test_slow_peer_marks_health_degraded(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that a passing but slow health check shows as degraded, not lost."""
    m = make_manager(
        health_check_interval=0.1, health_degraded_latency=0.05, health_check_timeout=1.0
    )
    m.add_connection("dev", "tcp", tcp(peer.port))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        peer.response_delay = 0.1
        async with asyncio.timeout(3):
            while m.get_supervisor("dev").health is not Health.DEGRADED:
                await asyncio.sleep(0.02)
        assert m.get_state("dev") is S.CONNECTED
        peer.response_delay = 0.0
        async with asyncio.timeout(3):
            while m.get_supervisor("dev").health is not Health.HEALTHY:
                await asyncio.sleep(0.02)


async def test_fast_path_after_tx_drop(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that a TX drop reconnects at once with no backoff timer."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG)
    m.add_connection("dev", "tcp", tcp(peer.port))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        m.mark_tx_drop("dev")
        await rec.wait_for("reconnect_ok")
        # No reconnect_start: the fast path skipped the backoff delay.
        types = await rec.types()
        assert types == [
            "connected",
            "tx_drop_detected",
            "disconnected",
            "fast_path_active",
            "connected",
            "reconnect_ok",
        ]
        assert (await rec.of("disconnected"))[0].data["reason"] == "tx_drop"
        assert peer.connections == 1


async def test_fast_path_failure_falls_back_to_backoff(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that a failed fast-path attempt goes on with normal backoff."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60)
    m.add_connection("dev", "tcp", tcp(peer.port))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await peer.stop()
        await m.wait_for_state("dev", "reconnecting", timeout=2)
        assert await clock.wait_for_timer(small) == 0.1
        await m.safe_reconnect("dev", fast_path=True)  # cuts the backoff wait short
        await rec.wait_for("reconnect_failed")
        assert await clock.wait_for_timer(small) == 0.2
        await peer.start()
        await clock.advance(0.2)
        await m.wait_for_state("dev", "connected", timeout=2)


async def test_data_watchdog(make_manager: Make, peer: PingPongPeer, clock: ManualClock) -> None:
    """Test that no data for data_timeout counts as lost; data keeps the link."""
    m = make_manager(
        clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=None, data_timeout=30
    )
    conn = m.add_connection("dev", "tcp", tcp(peer.port))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await clock.advance(20)
        conn.report_data("temperature", 21.0)
        await clock.advance(20)
        assert m.get_state("dev") is S.CONNECTED
        m.record_activity("dev")
        await clock.advance(29)
        assert m.get_state("dev") is S.CONNECTED
        await clock.advance(1.05)  # no data since t=40: lost at t=70
        lost = await rec.wait_for("disconnected")
        assert lost[0].data["reason"] == "data_timeout"
        assert m.get_status("dev")["last_data_at"] is not None


async def test_stable_after_resets_attempt_counter(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that the attempt counter resets only after stable_after connected."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=None)
    m.add_connection("dev", "tcp", tcp(peer.port))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await peer.stop()
        await m.wait_for_state("dev", "reconnecting", timeout=2)
        await clock.advance(await clock.wait_for_timer(small))  # attempt 1 fails
        await clock.wait_for_timer(lambda d: d == 0.2)
        await peer.start()
        await clock.advance(0.2)
        await m.wait_for_state("dev", "connected", timeout=2)
        assert m.get_status("dev")["reconnect_attempts"] == 1
        await clock.advance(9)
        assert m.get_status("dev")["reconnect_attempts"] == 1
        await clock.advance(1)
        assert m.get_status("dev")["reconnect_attempts"] == 0
        assert (await rec.of("connection_stable"))[0].data["previous_attempts"] == 1


async def test_full_jitter_delays(make_manager: Make, clock: ManualClock) -> None:
    """Test that full jitter draws each delay from 0..base."""
    m = make_manager(
        clock=clock,
        watchdog_interval=NO_WATCHDOG,
        reconnect_jitter_mode="full",
        reconnect_max_attempts=None,
    )
    m.add_connection("dev", "tcp", tcp(free_port()))
    async with m:
        for base in (0.1, 0.2, 0.4, 0.8):
            d = await clock.wait_for_timer(small)
            assert 0 <= d <= base
            await clock.advance(d)


async def test_sleeping_device(make_manager: Make, peer: PingPongPeer, clock: ManualClock) -> None:
    """Test that a sleeping device goes 'sleeping', is probed slowly and counts no failures."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, sleep_probe_interval=60)
    m.register_connection_type("modal", ModalDevice)
    peer.values["mode"] = "SLEEP"
    m.add_connection("dev", "modal", tcp(peer.port))
    async with m:
        await m.wait_for_state("dev", "sleeping", timeout=5)
        for _ in range(3):
            assert await clock.wait_for_timer(small) == 60
            await clock.advance(60)
        assert m.get_status("dev")["reconnect_attempts"] == 0
        assert m.get_status("dev")["reason"] == "device_sleep"
        peer.values["mode"] = "OK"
        await clock.advance(60)
        await m.wait_for_state("dev", "connected", timeout=2)


async def test_permanent_error_goes_to_error_without_retry(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that bad credentials put the connection in 'error' and nothing retries."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG)
    m.register_connection_type("modal", ModalDevice)
    peer.values["mode"] = "DENIED"
    m.add_connection("dev", "modal", tcp(peer.port))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "error", timeout=5)
        assert m.get_status("dev")["reason"] == "auth"
        assert [t for t in clock.pending() if t < 1e6] == []
        assert await rec.of("reconnect_start") == []
        peer.values["mode"] = "OK"
        await m.start_connection("dev")
        await m.wait_for_state("dev", "connected", timeout=5)


async def test_auto_reconnect_off_goes_to_error(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that with auto_reconnect off a lost link waits in 'error'."""
    m = make_manager(auto_reconnect=False)
    m.add_connection("dev", "tcp", tcp(peer.port))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await peer.stop()
        await m.wait_for_state("dev", "error", timeout=2)
        await peer.start()
        await asyncio.sleep(0.3)
        assert m.get_state("dev") is S.ERROR


async def test_device_reset_detected(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that a changed identity across a reconnect emits device_reset."""
    m = make_manager()
    m.add_connection("dev", "tcp", tcp(peer.port, identity_request="ID?"))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        old = peer.identity
        await peer.stop()
        peer.identity = "boot-2"
        await peer.start()
        await rec.wait_for("reconnect_ok")
        reset = await rec.of("device_reset")
        assert [(e.data["old_identity"], e.data["new_identity"]) for e in reset] == [
            (old, "boot-2")
        ]


async def test_vital_sign_watch(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that power below threshold warns after 1 reading and is critical after 3."""
    m = make_manager(health_check_interval=60)
    peer.values["power"] = "0.0"
    m.add_connection(
        "dev",
        "tcp",
        tcp(peer.port),
        poll=[{"tags": ["power"], "interval": 0.02}],
        watch=[{"tag": "power", "below": 0.1, "warning_after": 1, "critical_after": 3}],
    )
    rec = Recorder(m)
    m.get_supervisor("dev")  # exists before start
    async with m:
        await rec.wait_for("power_critical")
        warns = await rec.of("power_warning")
        crit = await rec.of("power_critical")
        assert len(warns) == 1 and warns[0].data["consecutive"] == 1
        assert len(crit) == 1 and crit[0].data["consecutive"] == 3


async def test_watchdog_restarts_stuck_supervisor(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that a driver call that ignores its timeout is caught and the connection restarted."""
    m = make_manager(clock=clock, watchdog_interval=5, connect_timeout=0.2)
    m.register_connection_type("stubborn", StubbornDevice)
    StubbornDevice.hang = True
    try:
        m.add_connection("dev", "stubborn", tcp(peer.port))
        rec = Recorder(m)
        async with m:
            await asyncio.sleep(0.4)  # connect_timeout passed; the call is still hanging
            await clock.advance(5)
            restarted = await rec.wait_for("supervisor_restarted")
            assert restarted[0].data["cause"] == "stuck"
            StubbornDevice.hang = False
            await m.wait_for_state("dev", "connected", timeout=5)
    finally:
        StubbornDevice.hang = False


async def test_execute_with_retry_rides_out_a_restart(
    make_manager: Make, peer: PingPongPeer
) -> None:
    """Test that a request during an outage waits for the reconnect and then succeeds."""
    m = make_manager(health_check_interval=60, request_timeout=3.0)
    m.add_connection("dev", "tcp", tcp(peer.port))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await peer.stop()

        async def bring_back() -> None:
            await asyncio.sleep(0.3)
            await peer.start()

        back = asyncio.create_task(bring_back())
        value = await m.execute_with_retry("dev", lambda c: c.read("temperature"))
        await back
        assert value == "21.5"


async def test_execute_with_retry_never_retries_device_or_permanent(
    make_manager: Make, peer: PingPongPeer
) -> None:
    """Test that a device refusal raises at once and keeps the link."""
    from edgelink import ConnectionLostError, DeviceError

    m = make_manager()
    m.add_connection("dev", "tcp", tcp(peer.port))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        before = peer.requests
        with pytest.raises(DeviceError, match="unknown"):
            await m.execute_with_retry("dev", lambda c: c.read("nope"))
        assert peer.requests == before + 1
        assert m.get_state("dev") is S.CONNECTED
        await m.stop_connection("dev")
        with pytest.raises(ConnectionLostError, match="disconnected"):
            await m.execute_with_retry("dev", lambda c: c.read("temperature"))
        with pytest.raises(KeyError, match="ghost"):
            await m.execute_with_retry("ghost", lambda c: c.read("x"))


async def test_connect_admission_is_bounded(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that at most max_concurrent_connects attempts are in flight at once."""
    peer.response_delay = 0.05
    m = make_manager(max_concurrent_connects=3, health_check_interval=60)
    for i in range(12):
        m.add_connection(f"d{i}", "tcp", tcp(peer.port))
    peak = 0
    async with m:
        async with asyncio.timeout(10):
            while True:
                states = [m.get_state(f"d{i}") for i in range(12)]
                peak = max(peak, peer.connections - sum(s is S.CONNECTED for s in states))
                if all(s is S.CONNECTED for s in states):
                    break
                await asyncio.sleep(0.005)
    assert 1 <= peak <= 3


async def test_stop_kill_restart(make_manager: Make, peer: PingPongPeer) -> None:
    """Test the per-connection lifecycle: stop, start, restart, kill, with reasons."""
    m = make_manager()
    m.add_connection("dev", "tcp", tcp(peer.port))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await m.stop_connection("dev")
        st = m.get_status("dev")
        assert (st["status"], st["reason"], st["desired"]) == (
            "disconnected",
            "admin_stop",
            "stopped",
        )
        await asyncio.sleep(0.05)
        assert peer.connections == 0
        await m.start_connection("dev")
        await m.wait_for_state("dev", "connected", timeout=5)
        await m.restart_connection("dev")
        await m.wait_for_state("dev", "connected", timeout=5)
        await m.kill_connection("dev")
        assert m.get_status("dev")["reason"] == "killed"
        await m.remove_connection("dev")
        assert m.get_connection("dev") is None


async def test_watchdog_restarts_dead_supervisor(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that a supervisor task killed by an unclassifiable error is restarted and evented."""
    m = make_manager(clock=clock, watchdog_interval=5)
    m.register_connection_type("crashing", CrashingDevice)
    CrashingDevice.crashes = 1
    m.add_connection("dev", "crashing", tcp(peer.port))
    rec = Recorder(m)
    async with m:
        sup = m.get_supervisor("dev")
        async with asyncio.timeout(2):
            while sup.task is None or not sup.task.done():
                await asyncio.sleep(0.01)
        await clock.advance(5)
        restarted = await rec.wait_for("supervisor_restarted")
        assert restarted[0].data["cause"] == "task_died"
        assert "boom" in restarted[0].data["detail"]
        await m.wait_for_state("dev", "connected", timeout=5)
        assert sup.restarts == 1
