"""The modbus_rtu driver over a socat pty pair, against pymodbus's serial server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edgelink import ConfigError, ConnectError, ConnectionManager, ProtocolError
from edgelink.drivers.modbus import ModbusRtuConnection, ModbusTimeoutError
from edgelink.sim.modbus import ModbusDevice, ModbusServer

Make = Callable[..., ConnectionManager]


class PtyPair:
    """Two linked pseudo-terminals made by socat: the driver's end and the device's end."""

    def __init__(self, folder: Path) -> None:
        self.driver_end = str(folder / "ttyDRIVER")
        self.device_end = str(folder / "ttyDEVICE")
        self._proc: asyncio.subprocess.Process | None = None

    async def plug(self) -> None:
        """Start socat and wait until both links exist."""
        self._proc = await asyncio.create_subprocess_exec(
            "socat",
            f"pty,raw,echo=0,link={self.driver_end}",
            f"pty,raw,echo=0,link={self.device_end}",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        async with asyncio.timeout(5):
            while not (os.path.exists(self.driver_end) and os.path.exists(self.device_end)):
                await asyncio.sleep(0.01)

    async def unplug(self) -> None:
        """Kill socat: both ends hang up and the links go away."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        # Killed, socat leaves its links behind, dangling: a port that is gone.
        for link in (self.driver_end, self.device_end):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)


@pytest.fixture
async def pty(tmp_path: Path) -> AsyncIterator[PtyPair]:
    """A socat pty pair (socat is installed by scripts/bootstrap)."""
    pair = PtyPair(tmp_path)
    await pair.plug()
    try:
        yield pair
    finally:
        await pair.unplug()


@pytest.fixture
def units() -> list[ModbusDevice]:
    """Units 1 and 2 of an RS485 line; hr:0 holds the unit id."""
    devices = [ModbusDevice(u, registers=50, bits=16) for u in (1, 2)]
    for dev in devices:
        dev.hr[0] = dev.unit_id
        dev.ir[0:2] = [0x4049, 0x0000]  # float32 3.140625
    return devices


@pytest.fixture
async def line(pty: PtyPair, units: list[ModbusDevice]) -> AsyncIterator[ModbusServer]:
    """The pymodbus RTU server for both units on the device end of the pty pair."""
    async with ModbusServer(units, serial_port=pty.device_end) as server:
        yield server


def rtu(port: str, unit_id: int = 1, **extra: Any) -> dict[str, Any]:
    return {"port": port, "unit_id": unit_id, "baudrate": 115200, "timeout": 0.3, **extra}


async def test_two_units_share_the_port_and_read_and_write(
    pty: PtyPair, line: ModbusServer, units: list[ModbusDevice]
) -> None:
    """Test that two units on one serial port share it and each reads and writes its own tables."""
    one = ModbusRtuConnection("one", rtu(pty.driver_end, 1))
    two = ModbusRtuConnection("two", rtu(pty.driver_end, 2))
    await one.connect()
    await two.connect()
    try:
        assert one.bus is two.bus
        assert await one.health_check() and await two.health_check()
        assert await one.read_many(["hr:0", "hr:1", "ir:0:float32", "coil:0"]) == {
            "hr:0": 1,
            "hr:1": 0,
            "ir:0:float32": 3.140625,
            "coil:0": False,
        }
        assert await two.read("40001") == 2
        await two.write("hr:10:int32", -5)
        await two.write("coil:3", True)
        await one.write("hr:10", 9)
        assert units[1].hr[10:12] == [0xFFFF, 0xFFFB] and units[1].coils[3] is True
        assert units[0].hr[10] == 9
        assert await two.read("hr:10:int32") == -5
        fcs = [(r.unit_id, r.function_code) for r in line.requests[-4:]]
        assert fcs == [(2, 16), (2, 5), (1, 6), (2, 3)]
        # One request for the four tags of three tables: hr, ir and coils.
        assert [(r.unit_id, r.function_code) for r in line.requests[2:5]] == [
            (1, 3),
            (1, 4),
            (1, 1),
        ]
        assert one.stats.packets_received >= 3 and two.stats.bytes_received > 0
    finally:
        await one.disconnect()
        await two.disconnect()


async def test_silent_unit_times_out_and_the_other_still_answers(
    pty: PtyPair, line: ModbusServer, units: list[ModbusDevice]
) -> None:
    """Test that a silent slave times out alone and the next unit on the line is answered."""
    one = ModbusRtuConnection("one", rtu(pty.driver_end, 1))
    two = ModbusRtuConnection("two", rtu(pty.driver_end, 2))
    await one.connect()
    await two.connect()
    try:
        units[1].silent = True
        with pytest.raises(ModbusTimeoutError):
            await two.read("hr:0")
        assert one.is_connected() and two.is_connected()
        assert await one.read("hr:0") == 1
    finally:
        await one.disconnect()
        await two.disconnect()


async def test_garbage_on_the_line_is_protocol_error(pty: PtyPair) -> None:
    """Test that bytes that are no valid frame are a ProtocolError and a TX drop, not a timeout."""
    fd = os.open(pty.device_end, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()

    def answer_garbage() -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 256)
            os.write(fd, b"\x01\x03\x02\x00")  # a frame cut before its CRC

    loop.add_reader(fd, answer_garbage)
    c = ModbusRtuConnection("dev", rtu(pty.driver_end))
    drops: list[bool] = []
    c.mark_tx_drop = lambda: drops.append(True)  # type: ignore[method-assign]
    try:
        await c.connect()
        with pytest.raises(ProtocolError, match="no valid answer"):
            await c.read("hr:0")
        assert drops == [True]
    finally:
        await c.disconnect()
        loop.remove_reader(fd)
        os.close(fd)


async def test_missing_port_is_connect_error(tmp_path: Path) -> None:
    """Test that a serial port that does not exist is a ConnectError naming it."""
    c = ModbusRtuConnection("dev", rtu(str(tmp_path / "ttyNONE")))
    with pytest.raises(ConnectError, match="ttyNONE"):
        await c.connect()
    assert not c.is_connected()


async def test_units_on_one_port_must_agree_on_its_settings(pty: PtyPair) -> None:
    """Test that a second unit with another baud rate on the same port is a ConfigError."""
    one = ModbusRtuConnection("one", rtu(pty.driver_end, 1))
    two = ModbusRtuConnection("two", rtu(pty.driver_end, 2, baudrate=9600))
    await one.connect()
    try:
        with pytest.raises(ConfigError, match="baudrate 9600 vs 115200"):
            await two.connect()
    finally:
        await one.disconnect()


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({}, "config.port"),
        ({"port": "/dev/x", "unit_id": 0}, "config.unit_id"),
        ({"port": "/dev/x", "unit_id": 248}, "config.unit_id"),
        ({"port": "/dev/x", "parity": "X"}, "config.parity"),
        ({"port": "/dev/x", "stopbits": 3}, "config.stopbits"),
        ({"port": "/dev/x", "bytesize": 9}, "config.bytesize"),
        ({"port": "/dev/x", "baudrate": "9600"}, "config.baudrate"),
        ({"port": "/dev/x", "handle_local_echo": 1}, "config.handle_local_echo"),
    ],
)
def test_bad_config(config: dict[str, Any], path: str) -> None:
    """Test that a bad modbus_rtu config is a ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        ModbusRtuConnection("dev", config)
    assert info.value.path == path


def test_parity_names() -> None:
    """Test that parity takes N/E/O and their names."""
    assert ModbusRtuConnection("d", {"port": "/p", "parity": "even"}).bus_config.parity == "E"
    assert ModbusRtuConnection("d", {"port": "/p", "parity": "O"}).bus_config.parity == "O"


async def test_unplug_and_replug_under_supervision(
    make_manager: Make, pty: PtyPair, units: list[ModbusDevice]
) -> None:
    """Test that a vanished serial port is noticed, retried, and polling resumes once it is back."""
    m = make_manager(health_check_interval=60, reconnect_initial_delay=0.05)
    got: list[tuple[Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((value, quality)))
    m.add_connection(
        "bms", "modbus_rtu", rtu(pty.driver_end, 2), poll=[{"tags": ["hr:0"], "interval": 0.05}]
    )
    server = ModbusServer(units, serial_port=pty.device_end)
    await server.start()
    try:
        async with m:
            await m.wait_for_state("bms", "connected", timeout=5)
            await server.stop()
            await pty.unplug()
            await m.wait_for_state("bms", "reconnecting", timeout=5)
            await pty.plug()
            units[1].hr[0] = 42
            await server.start()
            await m.wait_for_state("bms", "connected", timeout=5)
            async with asyncio.timeout(5):
                while (42, "good") not in got:
                    await asyncio.sleep(0.01)
            assert m.get_status("bms")["stats"]["reconnects"] >= 1
    finally:
        await server.stop()
