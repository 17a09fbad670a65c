"""The zkteco driver against the ZK terminal simulator on loopback (real sockets, the ZK protocol)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest

from edgelink import (
    AuthError,
    ConfigError,
    ConnectError,
    ConnectionManager,
    ConnectTimeout,
    DeviceError,
    ProtocolError,
)
from edgelink.drivers.zk_protocol import Command
from edgelink.drivers.zkteco import EVENT_TAG, ZktecoConnection
from edgelink.redact import redact
from edgelink.testing import ManualClock, ZkDevice, ZkFault, ZkSimulator

NO_WATCHDOG = 1e9
KEY = 424242
Make = Callable[..., ConnectionManager]


@pytest.fixture
async def sim() -> AsyncIterator[ZkSimulator]:
    """A terminal with a comm key, 300 users and 3,000 attendance records."""
    device = ZkDevice(comm_key=KEY, user_count=300, record_count=3000)
    async with ZkSimulator(device=device) as s:
        yield s


def zk(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "password": KEY, "timeout": 0.2, **extra}


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_session_auth_info_time_and_enable(sim: ZkSimulator) -> None:
    """Test that connect opens an authenticated session and the operations answer."""
    conn = ZktecoConnection("door", zk(sim.port))
    await conn.connect()
    try:
        assert conn.is_connected() and conn.session_id != 0
        assert (sim.count(Command.CONNECT), sim.count(Command.AUTH)) == (1, 1)
        assert sim.count(Command.REG_EVENT) == 1
        assert await conn.health_check() is True
        info = await conn.device_info()
        assert info["firmware_version"] == "Ver 6.60 Apr 28 2017"
        assert (info["serial_number"], info["platform"]) == ("SIM0000000001", "ZEM560_TFT")
        assert (info["users"], info["records"]) == (300, 3000)
        when = datetime(2031, 12, 31, 23, 59, 58)
        await conn.write("time", when.isoformat())
        got = await conn.get_time()
        assert when <= got <= when.replace(second=59)
        await conn.write("enabled", False)
        assert sim.device.enabled is False
        await conn.request("enable")
        assert sim.device.enabled is True
        assert await conn.read("user_count") == 300
        with pytest.raises(DeviceError, match="CMD_ACK_ERROR"):
            await conn.get_option("~NoSuchOption")
        assert conn.is_connected()  # the device said no; the link stays
    finally:
        await conn.disconnect()
        await conn.disconnect()  # idempotent
    await wait_until(lambda: sim.connections == 0)
    assert sim.count(Command.EXIT) == 1


@pytest.mark.parametrize(("user_size", "record_size"), [(72, 40), (28, 16)])
async def test_tables_over_many_chunks(user_size: int, record_size: int) -> None:
    """Test that 3,000 records and 300 users come whole through small chunks of both formats."""
    device = ZkDevice(
        user_count=300,
        record_count=3000,
        user_record_size=user_size,
        attendance_record_size=record_size,
    )
    async with ZkSimulator(device=device) as sim:
        conn = ZktecoConnection("door", zk(sim.port, password=0, max_chunk=1000))
        await conn.connect()
        try:
            users = await conn.get_users()
            records = await conn.get_attendance()
        finally:
            await conn.disconnect()
    assert users == device.users
    assert [(r.user_id, r.timestamp, r.punch) for r in records] == [
        (a.user_id, a.timestamp, a.punch) for a in device.attendance
    ]
    # 3,004 bytes of 40-byte records in 1,000-byte chunks: at least 121 chunks (plus the users).
    assert sim.count(Command.DATA_RDY) >= -(-(3000 * record_size + 4) // 1000)
    assert sim.count(Command.FREE_DATA) == 2


async def test_small_table_comes_at_once_and_lists_are_bounded() -> None:
    """Test the direct CMD_DATA answer for a small table, and max_records counting the rest."""
    async with ZkSimulator(device=ZkDevice(user_count=5, record_count=20)) as sim:
        conn = ZktecoConnection("door", zk(sim.port, password=0, max_records=8))
        await conn.connect()
        try:
            assert [u.user_id for u in await conn.get_users()] == ["1", "2", "3", "4", "5"]
            assert sim.count(Command.DATA_RDY) == 0
            assert len(await conn.get_attendance()) == 8
            assert conn.records_truncated == 12
        finally:
            await conn.disconnect()


async def test_wrong_key_is_an_auth_error_and_never_retried(
    sim: ZkSimulator, make_manager: Make, clock: ManualClock
) -> None:
    """Test that a refused comm key puts the connection in error (reason auth), without retries."""
    conn = ZktecoConnection("door", zk(sim.port, password=1))
    with pytest.raises(AuthError, match="refused the comm key"):
        await conn.connect()
    assert not conn.is_connected()
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG)
    m.add_connection("door", "zkteco", zk(sim.port, password=7))
    async with m:
        await m.wait_for_state("door", "error", timeout=5)
        assert m.get_status("door")["reason"] == "auth"
        await clock.advance(600)
        await asyncio.sleep(0.05)
        assert m.get_status("door")["status"] == "error"
    assert sim.auth_failures == 2  # one for the bare driver, one for the manager: no retries
    await wait_until(lambda: sim.connections == 0)


async def test_password_is_a_secret_and_config_is_checked() -> None:
    """Test that the comm key is redacted and bad config names the key."""
    conn = ZktecoConnection("door", {"host": "10.0.0.9", "password": 123456})
    assert conn.port == 4370
    assert redact(conn.config)["password"] == "***"
    assert "123456" not in repr(conn)
    with pytest.raises(ConfigError, match="password"):
        ZktecoConnection("door", {"host": "10.0.0.9", "password": "123456"})
    with pytest.raises(ConfigError, match="transport"):
        ZktecoConnection("door", {"host": "10.0.0.9", "transport": "serial"})
    with pytest.raises(ConfigError, match="unknown zkteco tag"):
        conn.check_tag("temperature")


async def test_realtime_events_arrive_as_datapoints(sim: ZkSimulator, make_manager: Make) -> None:
    """Test that a punch pushed by the device is acknowledged and reported as a datapoint."""
    got: list[tuple[str, Any, str]] = []
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("door", "zkteco", zk(sim.port))
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, value, quality)))
    async with m:
        await m.wait_for_state("door", "connected", timeout=5)
        when = datetime(2026, 5, 6, 7, 8, 9)
        assert sim.push_attendance("17", punch=1, when=when) == 1
        await wait_until(lambda: bool(got))
        tag, value, quality = got[0]
        assert (tag, quality) == (EVENT_TAG, "good")
        assert value["user_id"] == "17" and value["punch"] == 1
        assert value["timestamp"] == when.isoformat()
        await wait_until(lambda: sim.events_acked == 1)


async def test_silence_times_out_and_the_link_comes_back_once(
    sim: ZkSimulator, make_manager: Make, clock: ManualClock
) -> None:
    """Test that a silent device fails its health check, and one link is open after recovery."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=5)
    m.add_connection("door", "zkteco", zk(sim.port))
    async with m:
        await m.wait_for_state("door", "connected", timeout=5)
        sim.fault = ZkFault.SILENCE
        await clock.advance(await clock.wait_for_timer(lambda d: d == 5))
        await m.wait_for_state("door", "reconnecting", timeout=3)
        assert "no answer to CMD_GET_TIME" in (m.get_status("door")["last_error"] or "")
        sim.fault = None
        for _ in range(20):
            if m.get_status("door")["status"] == "connected":
                break
            await clock.advance_to_next()
            await asyncio.sleep(0.02)
        await m.wait_for_state("door", "connected", timeout=3)
        assert await m.execute_with_retry("door", lambda c: c.read("record_count")) == 3000
        await wait_until(lambda: sim.connections == 1)


async def test_drop_mid_reply_reconnects_and_the_next_read_works(
    sim: ZkSimulator, make_manager: Make
) -> None:
    """Test that a link cut half-way through a chunk is rebuilt and the read retried whole."""
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("door", "zkteco", zk(sim.port))
    async with m:
        await m.wait_for_state("door", "connected", timeout=5)
        sim.fault = ZkFault.DROP_MID_REPLY
        records = await m.execute_with_retry("door", lambda c: c.get_attendance(), timeout=3)
        assert len(records) == 3000
        assert sim.fault is None and sim.accepted == 2
        assert await m.execute_with_retry("door", lambda c: c.read("user_count")) == 300
        await wait_until(lambda: sim.connections == 1)


async def test_wrong_session_is_a_protocol_error(sim: ZkSimulator) -> None:
    """Test that an answer for another session drops the link with a ProtocolError."""
    conn = ZktecoConnection("door", zk(sim.port))
    await conn.connect()
    try:
        sim.fault = ZkFault.WRONG_SESSION
        with pytest.raises(ProtocolError, match="answer for session"):
            await conn.get_time()
        assert not conn.is_connected()
        await wait_until(lambda: sim.connections == 0)
        # A new session on the same device works once the device behaves.
        sim.fault = None
        await conn.connect()
        assert isinstance(await conn.get_time(), datetime)
    finally:
        await conn.disconnect()


async def test_refused_silent_and_garbage_peers() -> None:
    """Test refused links, a device silent from the start, and a non-ZK peer."""
    async with ZkSimulator() as sim:
        sim.fault = ZkFault.REFUSE
        conn = ZktecoConnection("door", zk(sim.port))
        with pytest.raises(ConnectError):
            await conn.connect()
        sim.fault = ZkFault.SILENCE
        with pytest.raises(ConnectError, match=r"no answer to CMD_CONNECT within 0\.2 s"):
            await conn.connect()
        port = sim.port
    with pytest.raises(ConnectError, match="cannot connect") as refused:
        await conn.connect()
    assert isinstance(refused.value.cause, ConnectionRefusedError)

    async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(junk, "127.0.0.1", 0)
    try:
        conn = ZktecoConnection("door", zk(server.sockets[0].getsockname()[1]))
        with pytest.raises(ProtocolError, match="not a ZK TCP frame"):
            await conn.connect()
        assert not conn.is_connected()
    finally:
        server.close()
        await server.wait_closed()
    assert port


async def test_late_answer_is_dropped_by_reply_id(sim: ZkSimulator) -> None:
    """Test that an answer arriving after its request timed out is not taken for the next one."""
    conn = ZktecoConnection("door", zk(sim.port))
    await conn.connect()
    try:
        sim.reply_delay = 0.3
        with pytest.raises(ConnectTimeout, match="no answer to CMD_GET_FREE_SIZES"):
            await conn.get_sizes()
        sim.reply_delay = 0.0
        await wait_until(lambda: conn.stale_packets == 1)
        # Had the late sizes answer been taken, this would fail to decode as a time.
        assert isinstance(await conn.get_time(), datetime)
        assert conn.is_connected()
    finally:
        await conn.disconnect()


async def test_concurrent_requests_share_one_link(sim: ZkSimulator) -> None:
    """Test that requests and table reads from many tasks are serialized and all answered."""
    conn = ZktecoConnection("door", zk(sim.port, max_chunk=2048))
    await conn.connect()
    try:
        results = await asyncio.gather(
            conn.get_attendance(),
            conn.get_users(),
            conn.get_attendance(),
            *(conn.get_time() for _ in range(10)),
            conn.read("serial_number"),
        )
    finally:
        await conn.disconnect()
    assert len(results[0]) == len(results[2]) == 3000
    assert len(results[1]) == 300
    assert all(isinstance(t, datetime) for t in results[3:13])
    assert results[13] == "SIM0000000001"
    assert sim.count(Command.FREE_DATA) == 3


async def test_udp_session_tables_events_and_refusals(sim: ZkSimulator, make_manager: Make) -> None:
    """Test the same session over UDP: 1 KiB data datagrams, events, a refused key, no listener."""
    conn = ZktecoConnection("door", zk(sim.port, transport="udp"))
    await conn.connect()
    try:
        assert sim.connections == 1
        assert (await conn.device_info())["serial_number"] == "SIM0000000001"
        records = await conn.get_attendance()
        assert [r.user_id for r in records] == [a.user_id for a in sim.device.attendance]
        assert len(await conn.get_users()) == 300
        # 120,004 bytes in chunks of at most 16 KiB.
        assert sim.count(Command.DATA_RDY) == 8 + 2
    finally:
        await conn.disconnect()
    await wait_until(lambda: sim.connections == 0)  # CMD_EXIT ends the UDP session
    with pytest.raises(AuthError):
        await ZktecoConnection("door", zk(sim.port, transport="udp", password=9)).connect()

    got: list[Any] = []
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("door", "zkteco", zk(sim.port, transport="udp"))
    m.on_data(lambda cid, tag, value, quality, ts: got.append(value))
    async with m:
        await m.wait_for_state("door", "connected", timeout=5)
        sim.push_attendance("12")
        await wait_until(lambda: bool(got))
        assert got[0]["user_id"] == "12"

    port = sim.port
    await sim.stop()
    with pytest.raises(ConnectError):
        await ZktecoConnection("door", zk(port, transport="udp")).connect()


async def test_edgelink_sim_zkteco_serves_the_driver_and_stops_on_sigterm() -> None:
    """Test that `edgelink sim zkteco` prints its port, serves a session with the key, ends on TERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgelink.cli",
        "sim",
        "zkteco",
        "--port",
        "0",
        "--password",
        "77",
        "--records",
        "50",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        match = re.fullmatch(r"zkteco simulator on 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        conn = ZktecoConnection("door", zk(int(match.group(1)), password=77, timeout=2))
        await conn.connect()
        try:
            assert await conn.read("record_count") == 50
        finally:
            await conn.disconnect()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_event_in_the_middle_of_a_table_read_is_taken_apart(sim: ZkSimulator) -> None:
    """Test that a punch pushed between chunks is an event, and the table still comes whole."""
    conn = ZktecoConnection("door", zk(sim.port, max_chunk=256))
    await conn.connect()
    try:
        reading = asyncio.create_task(conn.get_attendance())
        await wait_until(lambda: sim.count(Command.DATA_RDY) >= 5)
        assert sim.push_attendance("99") == 1
        records = await reading
        assert len(records) == 3000  # the buffer was prepared before the punch
        await wait_until(lambda: conn.events_received == 1)
        assert conn.stale_packets == 0
        assert len(await conn.get_attendance()) == 3001
    finally:
        await conn.disconnect()


async def test_reconnect_cycles_leave_no_descriptors_or_tasks(sim: ZkSimulator) -> None:
    """Test that 30 sessions opened and closed leave file descriptors and tasks as they were."""
    conn = ZktecoConnection("door", zk(sim.port))
    await conn.connect()
    await conn.disconnect()
    await wait_until(lambda: sim.connections == 0)
    fds = len(os.listdir("/proc/self/fd"))
    tasks = len(asyncio.all_tasks())
    for _ in range(30):
        await conn.connect()
        await conn.get_time()
        await conn.disconnect()
    await wait_until(lambda: sim.connections == 0)
    assert len(os.listdir("/proc/self/fd")) == fds
    assert len(asyncio.all_tasks()) == tasks
    assert sim.count(Command.EXIT) == 31
