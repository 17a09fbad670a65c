"""Simulated Modbus devices on pymodbus's own server: test peers and a fleet simulator.

`ModbusDevice` is one unit id: its four tables as plain Python lists (the
source of truth tests seed and inspect), plus faults a test can switch on:
``silent`` (requests are dropped unanswered, like a dead slave), ``delay``
(answers come late) and ``exception`` (every request is refused with that
Modbus exception code). `ModbusServer` serves a set of devices with pymodbus's
server, over TCP on loopback or RTU on a serial port, and records every
request it received (``requests``), so a test can count what went on the wire.

`ModbusSimulator` runs many servers, one per port, each with a small
inverter-with-battery register map whose values change as time passes
(``edgelink sim modbus --count N --base-port P``, benchmarks, demos):

=================  ==============  ==========================================
tag                type            meaning
=================  ==============  ==========================================
``ir:0``           uint16          status: 0 off, 1 running
``ir:1``           float32         AC power, W (0..5000, limited by ``hr:0``)
``ir:3``           uint16 x0.1     AC voltage, V
``ir:4``           uint16 x0.01    grid frequency, Hz
``ir:5``           uint32          energy fed in since start, Wh
``ir:7``           int16 x0.1      inverter temperature, °C
``ir:8``           uint16 x0.1     battery state of charge, %
``ir:9``           uint16 x0.01    battery voltage, V
``ir:10``          int16 x0.1      battery current, A (positive: charging)
``ir:11``          float32         battery power, W (positive: charging)
``ir:13``          uint32          seconds since start
``hr:0``           uint16          power limit, % of 5000 W (default 100)
``hr:1``           uint16          mode: 0 auto, 1 charge, 2 discharge
``hr:2``           float32         battery power setpoint, W (modes 1 and 2)
``hr:10..hr:99``   uint16          free registers (read/write)
``coil:0``         bool            inverter enabled (default on)
``di:0``           bool            grid present (on)
``di:1``           bool            over-temperature alarm (above 60 °C)
=================  ==============  ==========================================

Every address outside the map answers "illegal data address".
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

try:
    from pymodbus.constants import ExcCodes
    from pymodbus.framer import FramerType
    from pymodbus.pdu import ModbusPDU
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer
    from pymodbus.server.base import ModbusBaseServer
    from pymodbus.simulator import DataType, SimData, SimDevice
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "the Modbus simulator needs pymodbus: pip install 'edgelink[modbus]'"
    ) from exc

from edgelink.lifecycle import Service
from edgelink.sim.tcp import Drift

__all__ = [
    "ModbusDevice",
    "ModbusRequest",
    "ModbusServer",
    "ModbusSimulator",
    "inverter_device",
    "run_modbus_simulator",
]

logger = logging.getLogger(__name__)

#: Function codes by the table they touch.
_TABLE_OF_FC = {1: "coil", 5: "coil", 15: "coil", 2: "di", 4: "ir"}
_TABLE_OF_FC.update(dict.fromkeys((3, 6, 16, 22, 23), "hr"))


@dataclass(frozen=True, slots=True)
class ModbusRequest:
    """One request a server received: unit, function code, address and count."""

    unit_id: int
    function_code: int
    address: int
    count: int


class ModbusDevice:
    """One simulated unit: the four tables as lists, and switchable faults.

    Tables have ``registers`` holding and input registers and ``bits`` coils
    and discrete inputs, all starting at address 0; seed them by assignment
    (``device.hr[10:12] = parse_tag("hr:10:float32").encode(1.5)``) and read
    back what a client wrote the same way. ``on_read`` is called before each
    request is served, to let values move with time.

    Attributes:
        silent: Drop every request unanswered (a dead slave). Requests held
            while silent are dropped for good when it is switched off.
        delay: Seconds to wait before answering.
        exception: Refuse every request with this Modbus exception code.
        requests: What this unit received, in order (see `ModbusServer`).
    """

    def __init__(
        self,
        unit_id: int = 1,
        *,
        registers: int = 1000,
        bits: int = 1000,
        on_read: Callable[[ModbusDevice], None] | None = None,
    ) -> None:
        if not 1 <= unit_id <= 255:
            raise ValueError(f"unit_id must be 1..255, got {unit_id}")
        if registers < 1 or bits < 1 or registers > 65536 or bits > 65536:
            raise ValueError("registers and bits must be 1..65536")
        self.unit_id = unit_id
        self.hr: list[int] = [0] * registers
        self.ir: list[int] = [0] * registers
        self.coils: list[bool] = [False] * bits
        self.di: list[bool] = [False] * bits
        self.on_read = on_read
        self.delay = 0.0
        self.exception: int | None = None
        self.requests: list[ModbusRequest] = []
        self._silent = False
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        faults = [name for name in ("silent",) if getattr(self, name)]
        if self.exception is not None:
            faults.append(f"exception={self.exception}")
        return (
            f"<ModbusDevice unit={self.unit_id} requests={len(self.requests)} "
            f"{' '.join(faults) or 'ok'}>"
        )

    @property
    def silent(self) -> bool:
        """Whether requests are dropped unanswered."""
        return self._silent

    @silent.setter
    def silent(self, value: bool) -> None:
        self._silent = bool(value)
        if not value:
            self.release()

    def release(self) -> None:
        """Drop every request held while silent (they are never answered)."""
        self._wake.set()
        self._wake = asyncio.Event()

    def table(self, name: str) -> list[int] | list[bool]:
        """Return one table by its tag prefix: ``hr``, ``ir``, ``coil`` or ``di``."""
        tables: dict[str, list[int] | list[bool]] = {
            "hr": self.hr,
            "ir": self.ir,
            "coil": self.coils,
            "di": self.di,
        }
        return tables[name]

    def sim_device(self) -> SimDevice:
        """Build the pymodbus `SimDevice` that serves this unit."""

        def regs(count: int) -> list[SimData]:
            return [SimData(0, count=count, values=0, datatype=DataType.REGISTERS)]

        def flags(count: int) -> list[SimData]:
            return [SimData(0, count=count, values=False, datatype=DataType.BITS)]

        return SimDevice(
            self.unit_id,
            simdata=(
                flags(len(self.coils)),
                flags(len(self.di)),
                regs(len(self.hr)),
                regs(len(self.ir)),
            ),
            action=self._action,
        )

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Serve one request from the lists (pymodbus's SimDevice action hook)."""
        if self._silent:
            wake = self._wake
            await wake.wait()
            # Dropped: ending the handler task unanswered is how a request
            # goes missing in pymodbus's server.
            raise asyncio.CancelledError
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        if self.exception is not None:
            return ExcCodes(self.exception)
        table = _TABLE_OF_FC.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if self.on_read is not None:
            self.on_read(self)
        if table in ("coil", "di"):
            bits = self.coils if table == "coil" else self.di
            if set_values is not None:
                bits[address : address + len(set_values)] = [bool(v) for v in set_values]
            # ``count`` is in packed registers here: 16 bits each, from address // 16.
            first = address // 16
            for index in range(first, first + count):
                word = 0
                for bit in range(16):
                    number = index * 16 + bit
                    if number < len(bits) and bits[number]:
                        word |= 1 << bit
                registers[index - start_address] = word
            return None
        words = self.hr if table == "hr" else self.ir
        if set_values is not None:
            words[address : address + len(set_values)] = [int(v) for v in set_values]
        offset = address - start_address
        registers[offset : offset + count] = words[address : address + count]
        return None


class ModbusServer(Service):
    """pymodbus's server for a set of `ModbusDevice` units: TCP on loopback, or RTU on a port.

    Example:
        device = ModbusDevice(1)
        device.hr[0:3] = [1, 2, 3]
        async with ModbusServer([device]) as server:
            ...  # connect a modbus_tcp connection to 127.0.0.1:server.port
            assert server.requests[-1].function_code == 3

    Args:
        devices: The units it serves (distinct unit ids).
        host: The TCP listen address.
        port: The TCP port, 0 for an ephemeral one (kept across `stop`/`start`).
        serial_port: Serve RTU on this serial device instead of TCP.
        baudrate: The serial speed (RTU).
    """

    def __init__(
        self,
        devices: Sequence[ModbusDevice] | ModbusDevice,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        serial_port: str | None = None,
        baudrate: int = 19200,
    ) -> None:
        self.devices = [devices] if isinstance(devices, ModbusDevice) else list(devices)
        ids = [d.unit_id for d in self.devices]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"devices need distinct unit ids, got {ids}")
        self.host = host
        self._port = port
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.requests: list[ModbusRequest] = []
        self._by_unit = {d.unit_id: d for d in self.devices}
        self._server: ModbusBaseServer | None = None

    def __repr__(self) -> str:
        where = self.serial_port or f"{self.host}:{self._port}"
        state = "running" if self._server is not None else "stopped"
        return f"<ModbusServer {where} {state} units={sorted(self._by_unit)}>"

    @property
    def port(self) -> int:
        """The TCP port (after `start`)."""
        if not self._port:
            raise RuntimeError("ModbusServer has no port yet: call start() first")
        return self._port

    def device(self, unit_id: int) -> ModbusDevice:
        """Return the unit served under ``unit_id``."""
        return self._by_unit[unit_id]

    def is_running(self) -> bool:
        """Return whether the server is serving."""
        return self._server is not None

    async def start(self) -> None:
        """Start serving (a no-op while serving).

        Raises:
            OSError: if the server cannot listen (port taken, no such serial port).
        """
        if self._server is not None:
            return
        devices = [d.sim_device() for d in self.devices]
        server: ModbusBaseServer
        if self.serial_port is not None:
            server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self.serial_port,
                baudrate=self.baudrate,
                trace_pdu=self._trace_pdu,
            )
        else:
            server = ModbusTcpServer(
                devices, address=(self.host, self._port), trace_pdu=self._trace_pdu
            )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus says only "Could not start listen"
            where = self.serial_port or f"{self.host}:{self._port}"
            raise OSError(f"cannot serve Modbus on {where}: {exc}") from exc
        self._server = server
        if self.serial_port is None:
            listener: Any = server.transport
            self._port = int(listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop serving and close every client link (idempotent); held requests are dropped."""
        server, self._server = self._server, None
        for device in self.devices:
            device.release()
        if server is not None:
            # pymodbus leaves shutdown() unannotated.
            shutdown: Callable[[], Awaitable[None]] = server.shutdown
            await shutdown()
            # Closed transports release their sockets on the next loop turns.
            for _ in range(3):
                await asyncio.sleep(0)

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            count = pdu.count or len(pdu.registers) or len(pdu.bits)
            request = ModbusRequest(pdu.dev_id, pdu.function_code, pdu.address, count)
            self.requests.append(request)
            device = self._by_unit.get(pdu.dev_id)
            if device is not None:
                device.requests.append(request)
        return pdu


RATED_POWER = 5000.0
BATTERY_WH = 10_000.0


def _f32(value: float) -> list[int]:
    data = struct.pack(">f", value)
    return [int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big")]


def _from_f32(words: Sequence[int]) -> float:
    value: float = struct.unpack(">f", b"".join(w.to_bytes(2, "big") for w in words[:2]))[0]
    return value


def _u32(value: int) -> list[int]:
    value &= 0xFFFFFFFF
    return [value >> 16, value & 0xFFFF]


def _i16(value: float) -> int:
    return round(value) & 0xFFFF


class _Inverter:
    """The moving parts of the simulated inverter with battery, advanced lazily on read."""

    def __init__(self, rng: random.Random) -> None:
        now = time.monotonic()
        self.rng = rng
        self.started = now
        self.when = now
        self.energy_wh = 0.0
        self.soc = rng.uniform(30, 80)
        self.sun = Drift(rng.uniform(0.4, 0.8), 0.15, 120.0, 4, 0.0, now)
        self.temp = Drift(rng.uniform(30, 40), 2.0, 300.0, 2, -20.0, now)
        self.volt = Drift(230.0, 1.5, 30.0, 1, 0.0, now)
        self.freq = Drift(50.0, 0.02, 10.0, 3, 0.0, now)

    def update(self, device: ModbusDevice) -> None:
        now = time.monotonic()
        dt = max(now - self.when, 0.0)
        self.when = now
        enabled = device.coils[0]
        limit = min(device.hr[0], 100) / 100.0
        sun = min(max(float(self.sun.read(now, self.rng)), 0.0), 1.0)
        power = RATED_POWER * min(sun, limit) if enabled else 0.0
        mode = device.hr[1]
        setpoint = _from_f32(device.hr[2:4])
        if mode == 1:
            battery_w = abs(setpoint)
        elif mode == 2:
            battery_w = -abs(setpoint)
        else:
            battery_w = 0.3 * power - 400.0  # surplus charges, a base load drains
        if (self.soc >= 100 and battery_w > 0) or (self.soc <= 5 and battery_w < 0):
            battery_w = 0.0
        self.soc = min(max(self.soc + battery_w * dt / 3600.0 / BATTERY_WH * 100, 0.0), 100.0)
        self.energy_wh += power * dt / 3600.0
        battery_v = 48.0 + 6.0 * self.soc / 100.0
        temperature = float(self.temp.read(now, self.rng)) + 15.0 * power / RATED_POWER
        ir = device.ir
        ir[0] = 1 if enabled else 0
        ir[1:3] = _f32(power)
        ir[3] = round(float(self.volt.read(now, self.rng)) * 10)
        ir[4] = round(float(self.freq.read(now, self.rng)) * 100)
        ir[5:7] = _u32(int(self.energy_wh))
        ir[7] = _i16(temperature * 10)
        ir[8] = round(self.soc * 10)
        ir[9] = round(battery_v * 100)
        ir[10] = _i16(battery_w / battery_v * 10)
        ir[11:13] = _f32(battery_w)
        ir[13:15] = _u32(int(now - self.started))
        device.di[0] = True
        device.di[1] = temperature > 60.0


def inverter_device(unit_id: int = 1, *, seed: int | None = None) -> ModbusDevice:
    """Return a `ModbusDevice` with the inverter-with-battery map of the module docstring."""
    inverter = _Inverter(random.Random(seed))
    device = ModbusDevice(unit_id, registers=100, bits=16, on_read=inverter.update)
    device.hr[0] = 100
    device.coils[0] = True
    inverter.update(device)
    return device


class ModbusSimulator(Service):
    """Many simulated inverters, one `ModbusServer` per TCP port.

    Device ``i`` listens on ``base_port + i`` (or an ephemeral port when
    ``base_port`` is 0) and serves ``units`` unit ids (1..units), each an
    `inverter_device`. Stopping and starting a device is a network outage:
    its port refuses, then serves the same values again.

    Example:
        async with ModbusSimulator(10) as sim:
            ports = sim.ports
            await sim.stop_device(3)
            await sim.start_device(3)
    """

    def __init__(
        self,
        count: int,
        base_port: int = 0,
        *,
        host: str = "127.0.0.1",
        units: int = 1,
        seed: int | None = None,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if not 1 <= units <= 247:
            raise ValueError(f"units must be 1..247, got {units}")
        if base_port < 0 or (base_port and base_port + count - 1 > 65535):
            raise ValueError(f"ports {base_port}..{base_port + count - 1} are out of range")
        self.count = count
        self.base_port = base_port
        self.host = host
        self.units = units
        self._rng = random.Random(seed)
        self.servers: list[ModbusServer] = []

    def __repr__(self) -> str:
        running = sum(1 for s in self.servers if s.is_running())
        return f"<ModbusSimulator {self.count} devices {self.host} running={running}>"

    @property
    def ports(self) -> list[int]:
        """The device ports, by index (empty before `start`)."""
        return [s.port for s in self.servers]

    @property
    def requests(self) -> int:
        """Requests received over all devices."""
        return sum(len(s.requests) for s in self.servers)

    def device(self, index: int, unit_id: int = 1) -> ModbusDevice:
        """Return unit ``unit_id`` of device ``index``."""
        return self.servers[index].device(unit_id)

    async def start(self) -> None:
        """Start every device.

        Raises:
            OSError: if a port cannot be bound; started devices are stopped.
            RuntimeError: if the simulator was started before.
        """
        if self.servers:
            raise RuntimeError("ModbusSimulator.start() called twice")
        for i in range(self.count):
            devices = [
                inverter_device(u, seed=self._rng.randrange(2**32))
                for u in range(1, self.units + 1)
            ]
            port = self.base_port + i if self.base_port else 0
            self.servers.append(ModbusServer(devices, host=self.host, port=port))
        try:
            for server in self.servers:
                await server.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every device (idempotent)."""
        for server in self.servers:
            await server.stop()

    async def stop_device(self, index: int) -> None:
        """Unplug device ``index``: its port refuses and its links close."""
        await self.servers[index].stop()

    async def start_device(self, index: int) -> None:
        """Plug device ``index`` back in, on the same port."""
        await self.servers[index].start()


async def run_modbus_simulator(
    count: int,
    base_port: int,
    host: str = "127.0.0.1",
    units: int = 1,
    *,
    control: bool = False,
) -> None:
    """Run a `ModbusSimulator` until cancelled.

    Prints ``listening: <count> devices on <host>:<first>-<last>`` once every
    device listens. Quiets pymodbus's own per-connection log lines.

    Args:
        count: Devices, on consecutive ports from ``base_port``.
        base_port: The first port (0: ephemeral ones).
        host: The listen address.
        units: Unit ids per device.
        control: Read commands from stdin, one a line: ``down`` stops every
            device (its port refuses, its links close) and prints ``down:``;
            ``up`` starts them again on the same ports and prints the
            ``listening:`` line again. A fleet outage on cue (``bench/recovery.py``).
    """
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    simulator = ModbusSimulator(count, base_port, host=host, units=units)
    await simulator.start()
    try:
        ports = simulator.ports
        listening = f"listening: {count} devices on {host}:{ports[0]}-{ports[-1]}"
        print(listening, flush=True)
        if not control:
            await asyncio.Event().wait()
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            command = line.decode(errors="replace").strip()
            if command == "down":
                await asyncio.gather(*(simulator.stop_device(i) for i in range(count)))
                print(f"down: {count} devices", flush=True)
            elif command == "up":
                for i in range(count):
                    await simulator.start_device(i)
                print(listening, flush=True)
            elif command:
                print(f"unknown command {command!r}: down or up", file=sys.stderr, flush=True)
        await asyncio.Event().wait()  # stdin closed: run on until cancelled
    finally:
        await simulator.stop()
