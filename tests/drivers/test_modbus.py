"""The modbus_tcp driver against pymodbus's own server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from conftest import Recorder
from edgelink import (
    ConfigError,
    ConnectError,
    ConnectionManager,
    DeviceError,
    ProtocolError,
)
from edgelink.drivers.modbus import ModbusTcpConnection, ModbusTimeoutError
from edgelink.drivers.modbus_tags import parse_tag
from edgelink.registry import DriverRegistry
from edgelink.sim.modbus import ModbusDevice, ModbusServer
from edgelink.testing import FaultMode, FaultProxy, ManualClock

Make = Callable[..., ConnectionManager]


def encode(tag: str, value: Any) -> list[int]:
    return parse_tag(tag).encode(value)


@pytest.fixture
def device() -> ModbusDevice:
    """Unit 1 with a value of every type in place."""
    dev = ModbusDevice(1, registers=300, bits=64)
    dev.hr[0:4] = [1, 2, 3, 0xFFFF]
    dev.hr[10:12] = encode("hr:10:float32", 21.5)
    dev.hr[12:14] = encode("hr:12:float32:cdab", -3.25)
    dev.hr[14:18] = encode("hr:14:float64", 1e100)
    dev.hr[18:20] = encode("hr:18:int32", -100000)
    dev.hr[20:22] = encode("hr:20:uint32:dcba", 3_000_000_000)
    dev.hr[22] = encode("hr:22:int16:badc", -2)[0]
    dev.ir[0:3] = [2301, 0xFF9C, 7]
    dev.coils[0:3] = [True, False, True]
    dev.di[5] = True
    return dev


@pytest.fixture
async def server(device: ModbusDevice) -> AsyncIterator[ModbusServer]:
    """The pymodbus server for ``device`` on a free loopback port."""
    async with ModbusServer([device]) as srv:
        yield srv


def mb(port: int, **extra: Any) -> dict[str, Any]:
    """The config of a modbus_tcp connection to a loopback port."""
    return {"host": "127.0.0.1", "port": port, "timeout": 0.3, **extra}


@pytest.fixture
async def conn(server: ModbusServer) -> AsyncIterator[ModbusTcpConnection]:
    """A connected modbus_tcp driver, without a supervisor."""
    c = ModbusTcpConnection("dev", mb(server.port))
    await c.connect()
    yield c
    await c.disconnect()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_reads_every_table_and_type(conn: ModbusTcpConnection) -> None:
    """Test that every table, type, word order, scale and Modicon form reads its value."""
    expected = {
        "hr:0": 1,
        "40002": 2,
        "hr:3:int16": -1,
        "hr:3:bool": True,
        "hr:10:float32": 21.5,
        "hr:12:float32:cdab": -3.25,
        "hr:14:float64": 1e100,
        "hr:18:int32": -100000,
        "hr:20:uint32:dcba": 3_000_000_000,
        "hr:22:int16:badc": -2,
        "ir:0*0.1": 230.1,
        "30002:int16*0.01": -1.0,
        "ir:2": 7,
        "coil:0": True,
        "coil:1": False,
        "00003": True,
        "di:5": True,
        "10005": False,
    }
    assert await conn.read_many(list(expected)) == expected
    for tag, value in expected.items():
        assert await conn.read(tag) == value
    assert await conn.read_registers("hr", 0, 3) == [1, 2, 3]
    assert await conn.read_registers("coil", 0, 3) == [True, False, True]


async def test_writes_every_kind(
    conn: ModbusTcpConnection, device: ModbusDevice, server: ModbusServer
) -> None:
    """Test that writes land in the device, with FC 5, 6 or 16 as the tag needs."""
    writes: list[tuple[str, Any, int]] = [
        ("hr:100", 65535, 6),
        ("40102:int16*0.1", -12.3, 6),
        ("hr:102:bool", True, 6),
        ("hr:110:float32", 2.25, 16),
        ("hr:112:float32:cdab", 2.25, 16),
        ("hr:114:float64:le", -0.5, 16),
        ("hr:118:uint32", 70000, 16),
        ("coil:9", True, 5),
        ("00011", True, 5),
    ]
    for tag, value, function in writes:
        await conn.write(tag, value)
        assert server.requests[-1].function_code == function, tag
        assert await conn.read(tag) == value, tag
    assert device.hr[100:103] == [65535, 0xFF85, 1]
    assert device.hr[110:112] == [0x4010, 0] and device.hr[112:114] == [0, 0x4010]
    assert device.coils[9] is True and device.coils[10] is True
    await conn.write("coil:9", False)
    assert device.coils[9] is False


async def test_write_function_multiple(server: ModbusServer, device: ModbusDevice) -> None:
    """Test that write_function=multiple writes even one register with FC 16."""
    c = ModbusTcpConnection("dev", mb(server.port, write_function="multiple"))
    await c.connect()
    try:
        await c.write("hr:50", 9)
    finally:
        await c.disconnect()
    assert server.requests[-1].function_code == 16 and device.hr[50] == 9


@pytest.mark.parametrize(
    ("tag", "value", "error", "match"),
    [
        ("ir:0", 1, ConfigError, "read-only"),
        ("di:0", True, ConfigError, "read-only"),
        ("hr:0", 70000, ValueError, "out of range"),
        ("hr:0:int16*0.1", 5000, ValueError, "out of range"),
        ("hr:0", "12", TypeError, "must be a number"),
        ("coil:0", 2, TypeError, "true/false"),
        ("hr:zz", 1, ConfigError, "hr:zz"),
    ],
)
async def test_bad_writes_send_nothing(
    conn: ModbusTcpConnection,
    server: ModbusServer,
    tag: str,
    value: Any,
    error: type[Exception],
    match: str,
) -> None:
    """Test that a write to a read-only table or of a value that does not fit sends no request."""
    before = len(server.requests)
    with pytest.raises(error, match=match):
        await conn.write(tag, value)
    assert len(server.requests) == before
    assert conn.is_connected()


async def test_exception_response_is_device_error_and_keeps_link(
    conn: ModbusTcpConnection, device: ModbusDevice
) -> None:
    """Test that an exception response is a DeviceError with its code and the link stays."""
    with pytest.raises(DeviceError, match="illegal data address") as info:
        await conn.read("hr:299:uint32")
    assert info.value.code == 2
    results = await conn.read_many(["hr:0", "hr:1", "hr:400", "ir:2"])
    assert results["hr:0"] == 1 and results["hr:1"] == 2 and results["ir:2"] == 7
    assert isinstance(results["hr:400"], DeviceError)
    device.exception = 6
    with pytest.raises(DeviceError, match="busy"):
        await conn.read("hr:0")
    # A device that answers, even "busy", is alive.
    assert await conn.health_check() is True
    device.exception = 11
    assert await conn.health_check() is False
    device.exception = None
    assert conn.is_connected() and await conn.read("hr:0") == 1


async def test_refused_is_connect_error_with_cause() -> None:
    """Test that a refused connect is a ConnectError whose cause is the refusal."""
    c = ModbusTcpConnection("dev", mb(free_port()))
    with pytest.raises(ConnectError) as info:
        await c.connect()
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert not c.is_connected() and c.bus is None


def test_connections_share_their_parsed_tags() -> None:
    """Test that a fleet's connections share one parsed form per tag text.

    Each connection kept its own dict of parsed tags: 1 KB per device of a
    fleet polling the same registers everywhere.
    """
    a = ModbusTcpConnection("a", mb(free_port()))
    b = ModbusTcpConnection("b", mb(free_port()))
    assert a.tag("ir:3") is b.tag("ir:3") and a.tag("hr:7:float32") is b.tag("hr:7:float32")
    assert a.plan(["ir:0", "ir:1"]) == b.plan(["ir:0", "ir:1"])
    for _ in range(2):  # a bad tag is refused every time, never cached
        with pytest.raises(ConfigError, match="nope"):
            a.tag("nope")


async def test_silent_device_times_out(conn: ModbusTcpConnection, device: ModbusDevice) -> None:
    """Test that a device that does not answer is a ModbusTimeoutError after ``timeout``."""
    device.silent = True
    started = time.monotonic()
    with pytest.raises(ModbusTimeoutError) as info:
        await conn.read("hr:0")
    assert isinstance(info.value, TimeoutError)
    assert 0.25 < time.monotonic() - started < 1.0
    assert conn.bus_status()["units"][1]["timeouts"] == 1  # type: ignore[index]


async def test_socket_is_tuned(conn: ModbusTcpConnection) -> None:
    """Test that keepalive, TCP_USER_TIMEOUT and TCP_NODELAY are set on the link's socket."""
    assert conn.bus is not None
    assert conn.bus.transport is not None
    sock = conn.bus.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 15000


async def test_no_reconnect_of_its_own(server: ModbusServer) -> None:
    """Test that a dropped link stays down until connect() is called: pymodbus never redials."""
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        c = ModbusTcpConnection("dev", mb(proxy.port))
        lost: list[BaseException | None] = []
        c.connection_lost = lost.append  # type: ignore[method-assign, assignment]
        await c.connect()
        await proxy.drop_all()
        async with asyncio.timeout(2):
            while not lost:
                await asyncio.sleep(0.01)
        assert isinstance(lost[0], ConnectError)
        assert not c.is_connected()
        await asyncio.sleep(0.3)  # pymodbus's own reconnect would have dialled by now
        with pytest.raises(ConnectError, match="not connected"):
            await c.read("hr:0")
        assert proxy.accepted == 1
        await c.connect()  # edgelink's supervisor says when
        assert await c.read("hr:0") == 1
        assert proxy.accepted == 2
        await c.disconnect()


async def test_half_frame_then_silence_is_protocol_error_and_tx_drop() -> None:
    """Test that half an answer and then nothing is a ProtocolError and a TX drop at the timeout."""
    handled = asyncio.Event()

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readexactly(12)
            writer.write(request[:2] + b"\x00\x00\x00\x05\x01\x03")  # 8 of 11 bytes
            await writer.drain()
            await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            handled.set()

    srv = await asyncio.start_server(half, "127.0.0.1", 0)
    c = ModbusTcpConnection("dev", mb(srv.sockets[0].getsockname()[1], timeout=0.3))
    drops: list[bool] = []
    c.mark_tx_drop = lambda: drops.append(True)  # type: ignore[method-assign]
    try:
        await c.connect()
        with pytest.raises(ProtocolError, match="8 bytes but no valid answer"):
            await c.read("hr:0")
        assert drops == [True]
        assert not c.is_connected()
        await c.disconnect()
        await asyncio.wait_for(handled.wait(), 5)
    finally:
        await c.disconnect()
        srv.close()
        await srv.wait_closed()


async def test_stats_count_packets_and_bytes(conn: ModbusTcpConnection) -> None:
    """Test that each request counts one packet each way and its frame bytes."""
    await conn.read_registers("hr", 0, 10)
    stats = conn.stats.as_dict()
    # 12-byte request frame; 9 bytes of header + byte count, 20 of registers.
    assert stats["packets_sent"] == 1 and stats["packets_received"] == 1
    assert stats["bytes_sent"] == 12 and stats["bytes_received"] == 29


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"port": 502}, "config.host"),
        ({"host": "h", "port": 0}, "config.port"),
        ({"host": "h", "port": "502"}, "config.port"),
        ({"host": "h", "unit_id": 256}, "config.unit_id"),
        ({"host": "h", "timeout": 0}, "config.timeout"),
        ({"host": "h", "timeout": "1"}, "config.timeout"),
        ({"host": "h", "health_tag": "hr:x"}, "config.health_tag"),
        ({"host": "h", "max_registers": 126}, "config.max_registers"),
        ({"host": "h", "write_function": "single"}, "config.write_function"),
        ({"host": "h", "bus": 5}, "config.bus"),
    ],
)
def test_bad_config(config: dict[str, Any], path: str) -> None:
    """Test that a bad modbus_tcp config is a ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        ModbusTcpConnection("dev", config)
    assert info.value.path == path


def test_bad_poll_tag_fails_at_config_time() -> None:
    """Test that a mistyped poll tag is a ConfigError naming the tag and its JSON path."""
    m = ConnectionManager()
    with pytest.raises(ConfigError) as info:
        m.add_connection(
            "dev", "modbus_tcp", mb(502), poll=[{"tags": ["hr:1", "hr:1:floa32"], "interval": 1}]
        )
    assert info.value.path == "connections.dev.poll[0].tags[1]"
    assert "'hr:1:floa32'" in info.value.message and "unknown type" in info.value.message


def test_missing_pymodbus_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that without pymodbus the type fails at use with the pip install to run."""
    for name in list(sys.modules):
        if name == "pymodbus" or name.startswith(("pymodbus.", "edgelink.drivers.modbus")):
            monkeypatch.delitem(sys.modules, name)
        if name == "edgelink.drivers._modbus_bus":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pymodbus", None)
    with pytest.raises(ConfigError, match=r"pip install 'edgelink\[modbus\]'"):
        DriverRegistry(load_entry_points=False).get("modbus_tcp")


# ------------------------------------------------------------- supervised


async def test_poll_group_coalesces_registers(
    make_manager: Make, server: ModbusServer, device: ModbusDevice
) -> None:
    """Test that a poll group of 140 registers, 2 input registers and 3 coils takes 4 requests."""
    m = make_manager(health_check_interval=60)
    tags = [f"hr:{i}" for i in range(130)] + ["hr:130:float32", "hr:132:int32", "hr:134:float64"]
    tags += ["ir:0*0.1", "ir:1:int16", "coil:0", "coil:1", "coil:2"]
    got: dict[str, Any] = {}
    m.on_data(lambda cid, tag, value, quality, ts: got.__setitem__(tag, (value, quality)))
    m.add_connection("dev", "modbus_tcp", mb(server.port), poll=[{"tags": tags, "interval": 60}])
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        async with asyncio.timeout(5):
            while len(got) < len(tags):
                await asyncio.sleep(0.01)
    polled = [r for r in server.requests if r.function_code != 3 or r.count != 1]
    assert [(r.function_code, r.address, r.count) for r in polled] == [
        (3, 0, 125),
        (3, 125, 13),
        (4, 0, 2),
        (1, 0, 3),
    ]
    assert got["hr:130:float32"] == (0.0, "good") and got["ir:0*0.1"] == (230.1, "good")
    assert got["hr:2"] == (3, "good") and got["coil:2"] == (True, "good")


async def test_refused_tag_in_poll_group_is_bad_and_link_stays(
    make_manager: Make, server: ModbusServer
) -> None:
    """Test that an exception response for one polled tag marks it bad while the link stays up."""
    m = make_manager(health_check_interval=60)
    got: list[tuple[str, Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, value, quality)))
    rec = Recorder(m)
    m.add_connection(
        "dev",
        "modbus_tcp",
        mb(server.port),
        poll=[{"tags": ["hr:0", "hr:1", "hr:2", "hr:299:uint32"], "interval": 0.05}],
    )
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await rec.wait_for("error")
        async with asyncio.timeout(5):
            while got.count(("hr:0", 1, "good")) < 4:
                await asyncio.sleep(0.01)
        assert m.get_state("dev") == "connected"
        assert m.get_status("dev")["stats"]["reconnects"] == 0
    assert ("hr:299:uint32", None, "bad") in got
    assert ("hr:0", 1, "good") in got and ("hr:2", 3, "good") in got
    errors = await rec.of("error")
    # Once per good->bad transition, not on every poll round.
    assert [e.data["tag"] for e in errors] == ["hr:299:uint32"]
    assert got.count(("hr:299:uint32", None, "bad")) == 1
    assert "exception 2" in errors[0].data["error"]


async def test_poll_round_values_share_one_timestamp_in_tag_order(
    make_manager: Make, server: ModbusServer
) -> None:
    """Test that the good values of one poll round carry one timestamp, in the group's order.

    They came in one answer; a tag refused between them keeps its place.
    """
    m = make_manager(health_check_interval=60)
    got: list[tuple[str, str, float]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, quality, ts)))
    m.add_connection(
        "dev",
        "modbus_tcp",
        mb(server.port),
        poll=[{"tags": ["hr:0", "hr:299:uint32", "hr:1", "hr:2"], "interval": 60}],
    )
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        async with asyncio.timeout(5):
            while len(got) < 4:
                await asyncio.sleep(0.01)
    assert [(tag, quality) for tag, quality, _ in got] == [
        ("hr:0", "good"),
        ("hr:299:uint32", "bad"),
        ("hr:1", "good"),
        ("hr:2", "good"),
    ]
    assert got[2][2] == got[3][2]  # one answer, one timestamp
    assert m.get_status("dev")["stats"]["packets_sent"] >= 3  # the block, then the lone tag


async def test_execute_with_retry_reads_and_writes(
    make_manager: Make, server: ModbusServer, device: ModbusDevice
) -> None:
    """Test that execute_with_retry reads and writes through the supervised connection."""
    m = make_manager()
    m.add_connection("dev", "modbus_tcp", mb(server.port))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await m.execute_with_retry("dev", lambda c: c.write("hr:200:float32", 5.5))
        assert await m.execute_with_retry("dev", lambda c: c.read("hr:200:float32")) == 5.5
        with pytest.raises(DeviceError):
            await m.execute_with_retry("dev", lambda c: c.read("hr:5000"))
        assert m.get_state("dev") == "connected"
    assert device.hr[200:202] == encode("hr:200:float32", 5.5)


async def test_garbage_is_protocol_error_and_link_rebuilt(
    make_manager: Make, server: ModbusServer
) -> None:
    """Test that garbage from the peer fails the request at once and the link is rebuilt."""
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        c = ModbusTcpConnection("raw", mb(proxy.port, timeout=5.0))
        await c.connect()
        proxy.mode = FaultMode.CORRUPT
        started = time.monotonic()
        with pytest.raises(ProtocolError, match="garbage"):
            await c.read("hr:0")
        assert time.monotonic() - started < 1.0  # not the 5 s timeout
        assert not c.is_connected()
        await c.disconnect()

        proxy.mode = FaultMode.PASS
        m = make_manager(health_check_interval=60, reconnect_initial_delay=0.01)
        rec = Recorder(m)
        m.add_connection(
            "dev", "modbus_tcp", mb(proxy.port), poll=[{"tags": ["hr:0"], "interval": 0.05}]
        )
        async with m:
            await m.wait_for_state("dev", "connected", timeout=5)
            proxy.mode = FaultMode.CORRUPT
            await m.wait_for_state("dev", "reconnecting", timeout=5)
            proxy.mode = FaultMode.PASS
            await m.wait_for_state("dev", "connected", timeout=5)
            assert m.get_status("dev")["stats"]["reconnects"] >= 1
        lost = (await rec.of("disconnected"))[0]
        assert lost.data["reason"] == "protocol_error"


async def test_truncated_answer_is_protocol_error_and_fast_reconnect(
    make_manager: Make, server: ModbusServer
) -> None:
    """Test that an answer cut mid-frame is a ProtocolError, a TX drop and a fast-path reconnect."""
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        c = ModbusTcpConnection("raw", mb(proxy.port))
        drops: list[bool] = []
        c.mark_tx_drop = lambda: drops.append(True)  # type: ignore[method-assign]
        await c.connect()
        proxy.drop_after(5)  # 5 bytes of the 29-byte answer, then a reset
        with pytest.raises(ProtocolError, match="mid-frame"):
            await c.read_registers("hr", 0, 10)
        assert drops == [True] and not c.is_connected()
        await c.disconnect()

        m = make_manager(health_check_interval=60)
        rec = Recorder(m)
        m.add_connection(
            "dev", "modbus_tcp", mb(proxy.port), poll=[{"tags": ["hr:0:float64"], "interval": 0.05}]
        )
        async with m:
            await m.wait_for_state("dev", "connected", timeout=5)
            proxy.drop_after(3)
            await rec.wait_for("reconnect_ok")
        types = await rec.types()
        assert "tx_drop_detected" in types and "fast_path_active" in types


async def test_transaction_id_out_of_step_is_tx_drop() -> None:
    """Test that an answer with a transaction id nobody asked for drops the frame and the link."""
    handled = asyncio.Event()

    async def wrong_tid(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readexactly(12)
            tid = struct.unpack(">H", request[:2])[0]
            # A well-formed answer to FC 3, one register, but for another transaction.
            writer.write(struct.pack(">HHHBBBH", tid + 7, 0, 5, 1, 3, 2, 42))
            await writer.drain()
            await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            handled.set()

    srv = await asyncio.start_server(wrong_tid, "127.0.0.1", 0)
    try:
        port = srv.sockets[0].getsockname()[1]
        c = ModbusTcpConnection("dev", mb(port, timeout=5.0))
        drops: list[bool] = []
        c.mark_tx_drop = lambda: drops.append(True)  # type: ignore[method-assign]
        await c.connect()
        with pytest.raises(ProtocolError, match="out of step"):
            await c.read("hr:0")
        assert drops == [True] and not c.is_connected()
        await c.disconnect()
        await asyncio.wait_for(handled.wait(), 5)
    finally:
        srv.close()
        await srv.wait_closed()


async def test_peer_restarted_mid_poll_resumes_with_one_poller(
    make_manager: Make, server: ModbusServer, device: ModbusDevice
) -> None:
    """Test that a restarted peer is reconnected to and polling resumes with exactly one poller."""
    m = make_manager(health_check_interval=60, reconnect_initial_delay=0.05)
    got: list[tuple[float, Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((time.monotonic(), value, quality)))
    m.add_connection(
        "dev", "modbus_tcp", mb(server.port), poll=[{"tags": ["hr:0", "hr:1"], "interval": 0.05}]
    )
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await asyncio.sleep(0.2)
        await server.stop()
        await m.wait_for_state("dev", "reconnecting", timeout=5)
        device.hr[0] = 77
        await server.start()
        await m.wait_for_state("dev", "connected", timeout=5)
        back = time.monotonic()
        await asyncio.sleep(0.3)
        pollers = [t for t in asyncio.all_tasks() if t.get_name().startswith("edgelink[dev].poll")]
        assert len(pollers) == 1
        assert m.get_status("dev")["stats"]["reconnects"] == 1
    after = [(v, q) for t, v, q in got if t > back]
    assert (77, "good") in after
    # One poller at 0.05 s: about 6 rounds of 2 tags in 0.3 s, not twice that.
    assert len(after) <= 2 * 10


async def test_silent_device_found_by_health_check(
    make_manager: Make, server: ModbusServer, device: ModbusDevice, clock: ManualClock
) -> None:
    """Test that a device gone silent is lost at the first health check after it went quiet."""
    m = make_manager(
        clock=clock, health_check_interval=5.0, health_check_timeout=1.0, watchdog_interval=1e9
    )
    m.add_connection("dev", "modbus_tcp", mb(server.port, timeout=0.2))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await clock.wait_for_timer(lambda delay: delay == 5.0)  # the health check's interval
        device.silent = True
        await clock.advance(4.9)
        await clock.settle()
        assert m.get_state("dev") == "connected"
        await clock.advance(0.1)
        started = time.monotonic()
        await rec.wait_for("health_check_failed", timeout=2)
        # Within the driver's 0.2 s timeout (well inside health_check_timeout).
        assert time.monotonic() - started < 1.0
        await m.wait_for_state("dev", "reconnecting", timeout=2)
    failed = (await rec.of("health_check_failed"))[0]
    assert "no answer within 0.2 s" in failed.data["error"]


async def test_late_answer_to_an_abandoned_request_is_dropped() -> None:
    """Test that an answer arriving after its request timed out is dropped, not taken as garbage."""
    # A scripted device: answers transaction 1 after 0.6 s and 2 after 0.3 s, with the
    # register value 10 x the transaction id. (pymodbus's server cannot do this: with
    # overlapping requests on one link it stamps answers with the latest request's id.)
    delays = {1: 0.6, 2: 0.3}
    answered: list[int] = []
    done = asyncio.Event()

    async def device(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def answer(tid: int) -> None:
            await asyncio.sleep(delays[tid])
            writer.write(struct.pack(">HHHBBBH", tid, 0, 5, 1, 3, 2, 10 * tid))
            answered.append(tid)

        pending = []
        try:
            for _ in range(2):
                request = await reader.readexactly(12)
                pending.append(asyncio.create_task(answer(struct.unpack(">H", request[:2])[0])))
            await asyncio.gather(*pending)
            await writer.drain()
            await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            done.set()

    srv = await asyncio.start_server(device, "127.0.0.1", 0)
    c = ModbusTcpConnection("late", mb(srv.sockets[0].getsockname()[1], timeout=0.4))
    drops: list[bool] = []
    c.mark_tx_drop = lambda: drops.append(True)  # type: ignore[method-assign]
    try:
        await c.connect()
        with pytest.raises(ModbusTimeoutError):
            await c.read("hr:0")
        # Transaction 1's answer comes while transaction 2 is on the wire.
        assert await c.read("hr:0") == 20
        assert answered == [1, 2]
        assert c.is_connected() and drops == []
        await c.disconnect()
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await c.disconnect()
        srv.close()
        await srv.wait_closed()


async def test_many_link_cycles_leave_no_sockets_or_tasks(server: ModbusServer) -> None:
    """Test that connecting, failing and disconnecting many times leaks no fds or tasks."""
    import psutil

    proc = psutil.Process()
    # Let what earlier tests left closing finish, so only growth counts here
    # (a leak adds descriptors; a late close elsewhere can only remove some).
    gc.collect()
    await asyncio.sleep(0.05)
    fds, tasks = proc.num_fds(), len(asyncio.all_tasks())
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        fds_proxy = proc.num_fds()
        for i in range(20):
            c = ModbusTcpConnection("dev", mb(proxy.port))
            await c.connect()
            assert await c.read("hr:0") == 1
            if i % 2:
                proxy.mode = FaultMode.CORRUPT
                with pytest.raises(ProtocolError):
                    await c.read("hr:0")
                proxy.mode = FaultMode.PASS
            await c.disconnect()
        for _ in range(50):
            await asyncio.sleep(0.01)
            if proc.num_fds() <= fds_proxy and proxy.active_links == 0:
                break
        assert proc.num_fds() <= fds_proxy
    await asyncio.sleep(0.05)
    assert proc.num_fds() <= fds
    assert len(asyncio.all_tasks()) == tasks
