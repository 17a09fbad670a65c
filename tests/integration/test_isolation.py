"""Process isolation with real child processes: pulse, restarts, RAM and CPU limits, priority."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psutil
import pytest

from conftest import Recorder
from edgelink import ConfigError, ConnectionManager
from edgelink.isolation.parent import ProcessConnection
from edgelink.sim.modbus import ModbusDevice, ModbusServer
from edgelink.testing.isolation import BusyConnection, CounterConnection, LeakyConnection

Make = Callable[..., ConnectionManager]

#: Child processes need a moment to start on a loaded machine: not FAST's 0.5 s.
SLOW_START: dict[str, Any] = {"connect_timeout": 10.0, "request_timeout": 5.0}
PULSE: dict[str, Any] = {"mode": "process", "heartbeat_interval": 0.2, "monitor_interval": 0.1}


@pytest.fixture
async def server() -> AsyncIterator[ModbusServer]:
    """A pymodbus server with unit 1 on a free loopback port."""
    device = ModbusDevice(1, registers=100)
    device.hr[0:4] = [11, 12, 13, 14]
    async with ModbusServer([device]) as srv:
        yield srv


def modbus(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "timeout": 1.0}


def child_of(manager: ConnectionManager, cid: str) -> ProcessConnection:
    conn = manager.get_connection(cid)
    assert isinstance(conn, ProcessConnection)
    return conn


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("poll", ["child", "parent"])
async def test_isolated_modbus_polls_reads_writes_and_reports_resources(
    make_manager: Make, server: ModbusServer, poll: str
) -> None:
    """Test that an isolated modbus_tcp connection polls, reads, writes and shows its child."""
    m = make_manager(**SLOW_START, health_check_interval=0.5)
    rec = Recorder(m)
    got: list[tuple[str, Any]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, value)))
    m.add_connection(
        "iso",
        "modbus_tcp",
        modbus(server.port),
        poll=[{"tags": ["hr:0", "hr:1"], "interval": 0.05}],
        isolation={**PULSE, "poll": poll},
    )
    async with m:
        await m.wait_for_state("iso", "connected", timeout=10)
        conn = child_of(m, "iso")
        pid = conn.pid
        assert pid is not None and pid != os.getpid() and alive(pid)
        async with asyncio.timeout(5):
            while len(got) < 10:
                await asyncio.sleep(0.02)
        assert ("hr:0", 11) in got and ("hr:1", 12) in got
        assert await m.execute_with_retry("iso", lambda c: c.read("hr:3")) == 14
        await m.execute_with_retry("iso", lambda c: c.write("hr:5", 77))
        assert await m.execute_with_retry("iso", lambda c: c.read("hr:5")) == 77
        await asyncio.sleep(0.4)  # two pulses carry the driver's counters
        figures = conn.resources()
        assert figures["pid"] == pid and figures["isolation"] == "process"
        assert figures["memory_mb"] > 5 and 0 < figures["memory_percent"] < 100
        assert figures["cpu_percent"] is not None and figures["uptime_seconds"] >= 0
        assert figures["network_packets_sent"] >= 10 and figures["error_count"] == 0
        assert m.get_status("iso")["type"] == "modbus_tcp"
    assert not alive(pid), "stopping the manager ends the child"
    started = await rec.of("child_started")
    exited = await rec.of("child_exited")
    assert [e.data["pid"] for e in started] == [pid]
    assert [(e.data["pid"], e.data["reason"]) for e in exited] == [(pid, "close")]


async def test_kill_9_of_the_child_is_restarted_with_backoff(
    make_manager: Make, server: ModbusServer
) -> None:
    """Test that kill -9 of a child is evented, and a new child comes up after the backoff."""
    m = make_manager(**SLOW_START, reconnect_initial_delay=0.3, stable_after=60)
    rec = Recorder(m)
    m.add_connection("iso", "modbus_tcp", modbus(server.port), isolation=PULSE)
    async with m:
        await m.wait_for_state("iso", "connected", timeout=10)
        conn = child_of(m, "iso")
        pids = [conn.pid]
        for round_ in (1, 2):
            old = pids[-1]
            assert old is not None
            os.kill(old, signal.SIGKILL)
            await rec.wait_for("connected", count=round_ + 1, timeout=15)
            pids.append(conn.pid)
        exited = await rec.of("child_exited")
        started = await rec.of("child_started")
        starts = await rec.of("reconnect_start")
    assert pids[0] != pids[1] != pids[2]
    assert [e.data["detail"] for e in exited[:2]] == ["killed by SIGKILL"] * 2
    assert [e.data["reason"] for e in exited[:2]] == ["crashed", "crashed"]
    # The supervisor's own backoff, no second policy: each new child waits it out.
    assert [e.data["delay"] for e in starts] == [0.3, 0.3]
    gaps = [b.ts - a.ts for a, b in zip(exited[:2], started[1:], strict=True)]
    assert all(gap >= 0.29 for gap in gaps), gaps
    assert [e.data["restarts"] for e in started] == [0, 1, 2]
    assert conn.child_failures == 2 and conn.resources()["restarts"] == 2


async def test_sigstop_misses_the_pulse_and_the_child_is_restarted(
    make_manager: Make, server: ModbusServer
) -> None:
    """Test that a stopped child (no pulse) is killed after the pulse timeout and replaced."""
    m = make_manager(**SLOW_START, health_check_interval=None)
    rec = Recorder(m)
    m.add_connection("iso", "modbus_tcp", modbus(server.port), isolation=PULSE)
    async with m:
        await m.wait_for_state("iso", "connected", timeout=10)
        conn = child_of(m, "iso")
        old = conn.pid
        assert old is not None
        stopped_at = time.monotonic()
        os.kill(old, signal.SIGSTOP)
        missed = await rec.wait_for("heartbeat_missed", timeout=5)
        await rec.wait_for("connected", count=2, timeout=15)
        assert conn.pid not in (None, old)
    assert missed[0].data["pid"] == old and missed[0].data["silence"] > 0.6
    assert time.monotonic() - stopped_at >= 0.6
    exited = await rec.of("child_exited")
    assert (exited[0].data["reason"], exited[0].data["detail"]) == (
        "heartbeat_missed",
        "killed by SIGKILL",
    )
    assert not alive(old)


async def test_leaking_child_is_warned_throttled_and_killed_while_a_neighbour_keeps_its_rate(
    make_manager: Make,
) -> None:
    """Test the RAM escalation on a leaking child, and that an in-process neighbour keeps its rate."""
    m = make_manager(**SLOW_START, reconnect_initial_delay=5.0)
    m.register_connection_type("counter", CounterConnection)
    m.register_connection_type("leaky", LeakyConnection)
    rec = Recorder(m)
    seen: list[float] = []
    m.on_data(
        lambda cid, tag, value, quality, ts: seen.append(time.monotonic()) if cid == "n" else None
    )
    m.add_connection("n", "counter", poll=[{"tags": ["a", "b", "c", "d"], "interval": 0.02}])

    def rate(since: float, until: float) -> float:
        return sum(1 for t in seen if since <= t < until) / (until - since)

    async with m:
        await m.wait_for_state("n", "connected", timeout=5)
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        await asyncio.sleep(1.0)
        baseline = rate(t0, time.monotonic())
        m.add_connection(
            "leak",
            "leaky",
            {"leak_mb_per_s": 80},
            isolation={**PULSE, "max_memory_mb": 160, "monitor_interval": 0.05},
        )
        await m.wait_for_state("leak", "connected", timeout=10)
        t1 = time.monotonic()
        killed = await rec.wait_for("memory_killed", timeout=15)
        during = rate(t1, time.monotonic())
        await rec.wait_for("child_exited", timeout=5)
    warn = (await rec.of("memory_warning"))[0].data
    throttled = (await rec.of("memory_throttled"))[0].data
    kill = killed[0].data
    assert 128 <= warn["memory_mb"] < 160 and warn["limit_mb"] == 160
    assert 144 <= throttled["memory_mb"] < 160
    assert kill["memory_mb"] >= 160
    types = [t for t in await rec.types() if t.startswith(("memory_", "child_exited"))]
    assert types[:4] == ["memory_warning", "memory_throttled", "memory_killed", "child_exited"]
    exited = (await rec.of("child_exited"))[0].data
    assert (exited["reason"], exited["detail"]) == ("memory_limit", "killed by SIGKILL")
    # 4 tags every 20 ms is 200 datapoints/s; the neighbour keeps 80 % of what it had alone.
    assert baseline > 100
    assert during >= 0.8 * baseline, (baseline, during)


async def test_busy_child_is_held_at_its_cpu_share(make_manager: Make) -> None:
    """Test that a busy-looping child limited to 10 % of a core uses 10 % ± 3 % over 6 s."""
    m = make_manager(**SLOW_START)
    m.register_connection_type("busy", BusyConnection)
    rec = Recorder(m)
    m.add_connection("busy", "busy", isolation={**PULSE, "max_cpu_share": 0.1})
    async with m:
        await m.wait_for_state("busy", "connected", timeout=10)
        conn = child_of(m, "busy")
        pid = conn.pid
        assert pid is not None
        proc = psutil.Process(pid)
        await asyncio.sleep(0.5)
        cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
        await asyncio.sleep(6.0)
        share = (sum(proc.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0)
        assert conn.pid == pid, "the child was not restarted meanwhile"
        limited = (await rec.of("cpu_limited"))[0].data
    assert limited["share"] == 0.1 and limited["mode"] in ("cgroup", "duty_cycle")
    assert 0.07 <= share <= 0.13, share


@pytest.mark.parametrize(("priority", "nice"), [("heavy", 10), ("below_normal", 5), (3, 3)])
async def test_priority_class_sets_the_childs_nice_value(
    make_manager: Make, priority: str | int, nice: int
) -> None:
    """Test that a priority class (or a nice value) becomes the child's nice value."""
    m = make_manager(**SLOW_START)
    m.register_connection_type("counter", CounterConnection)
    m.add_connection("c", "counter", isolation={**PULSE, "priority": priority})
    async with m:
        await m.wait_for_state("c", "connected", timeout=10)
        conn = child_of(m, "c")
        assert conn.pid is not None
        assert psutil.Process(conn.pid).nice() == nice
        assert conn.resources()["nice"] == nice


async def test_isolated_connection_reports_a_device_that_refuses(make_manager: Make) -> None:
    """Test that a refused connect in the child comes back as the same error class and backs off."""
    m = make_manager(**SLOW_START, reconnect_initial_delay=0.05)
    rec = Recorder(m)
    with socketless_port() as port:
        m.add_connection("iso", "modbus_tcp", modbus(port), isolation=PULSE)
        async with m:
            await rec.wait_for("reconnect_failed", count=2, timeout=15)
            status = m.get_status("iso")
            pid = child_of(m, "iso").pid
    assert status["reason"] == "refused", status
    assert "cannot connect" in (status["last_error"] or "")
    # One child served every attempt: a refused device is no reason to restart it.
    assert len(await rec.of("child_started")) == 1 and pid is not None


class socketless_port:  # noqa: N801 - a context manager
    """A loopback port nobody listens on (bound, then released)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


def test_isolation_config_errors_name_the_field() -> None:
    """Test that bad isolation settings are config errors that name where and why."""
    m = ConnectionManager()
    with pytest.raises(ConfigError) as err:
        m.add_connection("a", "tcp", {"port": 1}, isolation={"mode": "process", "max_cpu_share": 0})
    assert "connections.a.isolation" in str(err.value) and "max_cpu_share" in str(err.value)
    with pytest.raises(ConfigError) as err:
        m.add_connection("b", "tcp", {"port": 1}, isolation="thread")
    assert "connections.b.isolation" in str(err.value)
    with pytest.raises(ConfigError) as err:
        m.add_connection("c", "tcp", {"port": 1}, isolation="process", endpoints=[{}, {"port": 2}])
    assert "endpoints" in str(err.value)

    class Local(CounterConnection):
        pass

    m.register_connection_type("local", Local)
    with pytest.raises(ConfigError) as err:
        m.add_connection("d", "local", isolation="process")
    assert "cannot run isolated" in str(err.value) and "connections.d.isolation" in str(err.value)
    with pytest.raises(ConfigError) as err:
        m.add_connection("e", "tcp", {"port": "x"}, isolation="process")
    assert "connections.e.config.port" in str(err.value)
