"""The ``modbus_tcp`` and ``modbus_rtu`` drivers (pymodbus; the ``modbus`` extra).

One connection is one logical device: a unit id on a link. Connections to
the same Modbus TCP host and port, or on the same serial port, share one link
(a `edgelink.drivers._modbus_bus.ModbusBus`): one transport, a fair request
queue, per-device timeouts and failure counts, and a slow probe lane for a
device that stopped answering, so it never stalls the others.

Tags are parsed once (`edgelink.drivers.modbus_tags`): ``hr:<addr>``,
``ir:<addr>``, ``coil:<addr>``, ``di:<addr>`` with the 0-based wire address,
or Modicon references (``40001`` is ``hr:0``), with an optional type, word
order and scale (``hr:100:float32:cdab*0.1``). A poll group's tags are read
with as few requests as the device limits allow (`read_many`).

What the device says becomes edgelink's errors at this boundary: an exception
response is a `DeviceError` (the link stays), garbage or a partial frame a
`ProtocolError` (the link is rebuilt), no answer within ``timeout`` a
`ModbusTimeoutError` (a `TimeoutError`: a dropped frame, fast-path
reconnect), a refused or closed link a `ConnectError`. The driver never
retries, sleeps or reconnects by itself.

Config keys (see ``docs/drivers/modbus.md``):

- ``modbus_tcp``: ``host`` (required), ``port`` (502), ``unit_id`` (1),
  ``timeout`` (1.0 s), ``bus`` (a link name: connections to one host:port
  share a link unless their ``bus`` names differ), ``keepalive_idle`` /
  ``keepalive_interval`` / ``keepalive_count`` (10/5/3), ``tcp_user_timeout``
  (15 s);
- ``modbus_rtu``: ``port`` (the device path, required), ``baudrate``
  (19200), ``parity`` (``N``), ``stopbits`` (1), ``bytesize`` (8),
  ``unit_id`` (1), ``timeout`` (1.0 s), ``handle_local_echo`` (false);
- both: ``health_tag`` (``hr:0``; the register the health check reads),
  ``max_registers`` (125), ``max_bits`` (2000), ``max_gap`` (0),
  ``write_function`` (``auto``: FC 6 for one register, 16 for more; or
  ``multiple``: always 16), ``dead_after`` (3) and ``probe_interval`` (5 s).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

try:
    from pymodbus.client import ModbusBaseClient
    from pymodbus.pdu import ModbusPDU
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "the modbus_tcp and modbus_rtu drivers need pymodbus: pip install 'edgelink[modbus]'"
    ) from exc

from edgelink.connection import Connection
from edgelink.drivers._modbus_bus import (
    GATEWAY_SILENT,
    BusConfig,
    ModbusBus,
    ModbusTimeoutError,
    get_bus,
)
from edgelink.drivers.configs import ModbusConfig, ModbusRtuConfig, ModbusTcpConfig
from edgelink.drivers.modbus_tags import (
    MAX_WRITE_REGISTERS,
    ModbusTag,
    ReadBlock,
    Table,
    parse_tag,
    plan_reads,
)
from edgelink.errors import ConfigError, ConnectError, DeviceError, ProtocolError

__all__ = [
    "ModbusConnection",
    "ModbusRtuConnection",
    "ModbusTcpConnection",
    "ModbusTimeoutError",
]

#: Poll groups whose read plans are kept (a connection has a handful).
_PLAN_CACHE_SIZE: Final = 64
#: Parsed tags kept, shared by every connection: a fleet polls the same tags
#: on every device, and a parsed tag is immutable (1 KB per device when each
#: connection kept its own); the least recently used goes.
_TAG_CACHE_SIZE: Final = 4096
_parsed_tag = functools.lru_cache(maxsize=_TAG_CACHE_SIZE)(parse_tag)

Call = Callable[[ModbusBaseClient], Awaitable[ModbusPDU]]


@dataclass(frozen=True, slots=True)
class _Read:
    """One planned read request: the block, its name in errors, how to send it."""

    block: ReadBlock
    what: str
    call: Call


class ModbusConnection(Connection):
    """What ``modbus_tcp`` and ``modbus_rtu`` share: tags, reads, writes, health, the bus.

    Subclasses build the link's `BusConfig`.
    """

    type_name: ClassVar[str] = ""
    config_model: ClassVar[type[ModbusConfig]] = ModbusConfig
    cfg: ModbusConfig

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        cfg = self.cfg
        self.unit_id: int = cfg.unit_id
        self.timeout: float = cfg.timeout
        self.max_registers = cfg.max_registers
        self.max_bits = cfg.max_bits
        self.max_gap = cfg.max_gap
        self.write_multiple = cfg.write_function == "multiple"
        self.dead_after = cfg.dead_after
        self.probe_interval = cfg.probe_interval
        self._plans: dict[tuple[str, ...], list[_Read]] = {}
        self._raw_reads: dict[tuple[str, int, int], _Read] = {}
        try:
            self.health_tag = self.tag(cfg.health_tag)
        except ConfigError as exc:
            raise ConfigError(
                exc.message, path="config.health_tag", connection_id=connection_id
            ) from None
        self.bus_config = self._bus_config()
        self._bus: ModbusBus | None = None
        self._generation = 0

    def _bus_config(self) -> BusConfig:
        raise NotImplementedError

    def endpoint_changed(self) -> None:
        """Take the link (host and port, or serial line) of the endpoint failover chose."""
        self.bus_config = self._bus_config()

    def tag(self, text: str) -> ModbusTag:
        """Return the parsed form of a tag (parsed once, then cached).

        Raises:
            ConfigError: for a bad tag, naming it.
        """
        return _parsed_tag(text)

    def can_write(self, tag: str) -> bool:
        """Return whether ``tag`` is in a table a client may write (holding registers, coils)."""
        try:
            return self.tag(tag).table.is_writable
        except ConfigError:
            return False

    def check_tag(self, tag: str) -> None:
        """Check a tag at config time (see `Connection.check_tag`).

        Raises:
            ConfigError: for a bad tag, naming it.
        """
        self.tag(tag)

    def plan(self, tags: Sequence[str]) -> list[ReadBlock]:
        """Return the read requests ``tags`` take (parsed and coalesced; cached per group).

        Raises:
            ConfigError: for a bad tag.
        """
        return [read.block for read in self._plan(tuple(tags))]

    def _plan(self, tags: tuple[str, ...]) -> list[_Read]:
        plan = self._plans.get(tags)
        if plan is None:
            blocks = plan_reads(
                (self.tag(t) for t in tags),
                max_registers=self.max_registers,
                max_bits=self.max_bits,
                max_gap=self.max_gap,
            )
            plan = [self._read_for(block) for block in blocks]
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[tags] = plan
        return plan

    def _read_for(self, block: ReadBlock) -> _Read:
        start, count, unit = block.start, block.count, self.unit_id
        call: Call
        if block.table is Table.HOLDING:

            def call(c: ModbusBaseClient) -> Awaitable[ModbusPDU]:
                return c.read_holding_registers(start, count=count, device_id=unit)
        elif block.table is Table.INPUT:

            def call(c: ModbusBaseClient) -> Awaitable[ModbusPDU]:
                return c.read_input_registers(start, count=count, device_id=unit)
        elif block.table is Table.COIL:

            def call(c: ModbusBaseClient) -> Awaitable[ModbusPDU]:
                return c.read_coils(start, count=count, device_id=unit)
        else:

            def call(c: ModbusBaseClient) -> Awaitable[ModbusPDU]:
                return c.read_discrete_inputs(start, count=count, device_id=unit)

        return _Read(block, f"read {block.table}:{start}+{count}", call)

    @property
    def bus(self) -> ModbusBus | None:
        """The link this connection is on, while connected or connecting."""
        return self._bus

    async def connect(self) -> None:
        """Join the link (shared with other connections on it) and open it if needed.

        Raises:
            ConnectError: if the link cannot be opened (refused, unreachable,
                no such serial port); the OS error is the cause.
            ConfigError: if another connection on the same link has other
                transport settings.
        """
        await self.disconnect()
        bus = get_bus(self.bus_config, self.connection_id)
        bus.attach(self)
        self._bus = bus
        try:
            self._generation = await bus.open()
        except BaseException:
            await self.disconnect()
            raise

    async def disconnect(self) -> None:
        """Leave the link; the last connection on it closes it. Idempotent, never raises."""
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.detach(self)

    def is_connected(self) -> bool:
        """Return True while the link this connection joined is up."""
        bus = self._bus
        return bus is not None and self._generation == bus.generation and bus.is_open()

    async def health_check(self) -> bool:
        """Read ``health_tag``: any answer, even an exception response, means the device is alive.

        A gateway's "target device failed to respond" (exception 10 or 11)
        means the device behind it is not.

        Raises:
            ModbusTimeoutError: if the device does not answer.
        """
        try:
            await self._request(self._plan((self.health_tag.text,))[0])
        except DeviceError as exc:
            return exc.code not in GATEWAY_SILENT
        return True

    async def _request(self, read: _Read) -> Sequence[int] | Sequence[bool]:
        bus = self._bus
        if bus is None:
            raise ConnectError("not connected", connection_id=self.connection_id)
        response = await bus.request(self, self._generation, read.call, read.what)
        block = read.block
        raw: Sequence[int] | Sequence[bool] = (
            response.bits if block.table.is_bits else response.registers
        )
        if len(raw) < block.count:
            raise ProtocolError(
                f"{read.what}: the device answered {len(raw)} values",
                connection_id=self.connection_id,
            )
        return raw

    async def read_registers(self, table: str, address: int, count: int) -> list[int] | list[bool]:
        """Read ``count`` raw registers (or bits) of ``table`` from ``address`` in one request.

        Raises:
            ConfigError: for an unknown table or a block outside the limits.
            DeviceError, ModbusTimeoutError, ProtocolError, ConnectError: as `read`.
        """
        key = (table, address, count)
        read = self._raw_reads.get(key)
        if read is None:
            try:
                kind = Table(table)
            except ValueError:
                names = ", ".join(t.value for t in Table)
                raise ConfigError(
                    f"unknown table {table!r} (known: {names})", path="table"
                ) from None
            limit = self.max_bits if kind.is_bits else self.max_registers
            if not 1 <= count <= limit or address < 0 or address + count > 65536:
                raise ConfigError(
                    f"{table}:{address}+{count} is outside 0..65535 or over {limit} per request",
                    path="count",
                )
            read = self._read_for(ReadBlock(kind, address, count, ()))
            if len(self._raw_reads) >= _PLAN_CACHE_SIZE:
                self._raw_reads.clear()
            self._raw_reads[key] = read
        raw = await self._request(read)
        return list(raw[:count])

    async def read(self, tag: str) -> Any:
        """Read one tag.

        Raises:
            ConfigError: for a bad tag.
            DeviceError: for an exception response, or registers that cannot be decoded
                (the link stays).
            ModbusTimeoutError: if the device did not answer in ``timeout``.
            ProtocolError: for garbage or a partial answer (the link is rebuilt).
            ConnectError: if the link is down.
        """
        read = self._plan((tag,))[0]
        value = read.block.values(await self._request(read))[tag]
        if isinstance(value, DeviceError):
            raise value
        return value

    async def read_many(self, tags: Sequence[str]) -> dict[str, Any]:
        """Read several tags with as few requests as the limits allow.

        A refused block is retried tag by tag, so only the tags the device
        refuses map to their `DeviceError`; a bad tag maps to its
        `ConfigError`. An error that breaks the link is raised.
        """
        results: dict[str, Any] = {}
        key = tuple(tags)
        plan = self._plans.get(key)
        if plan is None:
            # Not planned yet (or a bad tag in it): sort the bad tags out first.
            good: list[str] = []
            for text in key:
                try:
                    self.tag(text)
                except ConfigError as exc:
                    results[text] = exc
                else:
                    good.append(text)
            plan = self._plan(tuple(good))
        for read in plan:
            try:
                raw = await self._request(read)
            except DeviceError as exc:
                if len(read.block.tags) == 1:
                    results[read.block.tags[0].text] = exc
                    continue
                for tag in read.block.tags:
                    single = self._plan((tag.text,))[0]
                    try:
                        results[tag.text] = single.block.values(await self._request(single))[
                            tag.text
                        ]
                    except DeviceError as tag_exc:
                        results[tag.text] = tag_exc
                continue
            results.update(read.block.values(raw))
        return results

    async def write(self, tag: str, value: Any) -> None:
        """Write one tag: a coil (FC 5) or holding registers (FC 6, or 16 for several).

        Raises:
            ConfigError: for a bad tag, or one of a read-only table.
            TypeError, ValueError: if ``value`` does not fit the tag (naming it).
            DeviceError, ModbusTimeoutError, ProtocolError, ConnectError: as `read`.
        """
        parsed = self.tag(tag)
        if not parsed.table.is_writable:
            kind = "input registers" if parsed.table is Table.INPUT else "discrete inputs"
            raise ConfigError(f"tag {tag!r}: {kind} are read-only", path="tag")
        address, unit = parsed.address, self.unit_id
        call: Call
        if parsed.table is Table.COIL:
            bit = parsed.encode_bit(value)

            def call(c: ModbusBaseClient) -> Awaitable[ModbusPDU]:
                return c.write_coil(address, bit, device_id=unit)
        else:
            words = parsed.encode(value)
            if len(words) == 1 and not self.write_multiple:
                word = words[0]

                def call(c: ModbusBaseClient) -> Awaitable[ModbusPDU]:
                    return c.write_register(address, word, device_id=unit)
            else:
                assert len(words) <= MAX_WRITE_REGISTERS

                def call(c: ModbusBaseClient) -> Awaitable[ModbusPDU]:
                    return c.write_registers(address, words, device_id=unit)

        bus = self._bus
        if bus is None:
            raise ConnectError("not connected", connection_id=self.connection_id)
        await bus.request(self, self._generation, call, f"write {tag}")

    def bus_status(self) -> dict[str, Any] | None:
        """Return the link's state (members, queue, per-unit failure counts), if joined."""
        bus = self._bus
        if bus is None:
            return None
        return bus.describe()


class ModbusTcpConnection(ModbusConnection):
    """A Modbus TCP device, or one unit behind a Modbus TCP gateway.

    Example:
        manager.add_connection(
            "inverter", "modbus_tcp", {"host": "192.168.1.20", "unit_id": 1},
            poll=[{"tags": ["ir:0:float32", "ir:2:uint32*0.1"], "interval": 1.0}],
        )
        power = await manager.execute_with_retry("inverter", lambda c: c.read("ir:0:float32"))
    """

    type_name = "modbus_tcp"
    config_model = ModbusTcpConfig
    cfg: ModbusTcpConfig
    endpoint_fields = frozenset({"host", "port"})

    def _bus_config(self) -> BusConfig:
        cfg = self.cfg
        key = f"tcp:{cfg.host}:{cfg.port}" + (f"/{cfg.bus}" if cfg.bus else "")
        return BusConfig(
            kind="tcp",
            key=key,
            host=cfg.host,
            port=cfg.port,
            keepalive_idle=cfg.keepalive_idle,
            keepalive_interval=cfg.keepalive_interval,
            keepalive_count=cfg.keepalive_count,
            tcp_user_timeout=cfg.tcp_user_timeout,
        )


class ModbusRtuConnection(ModbusConnection):
    """A Modbus RTU device on a serial line (RS485/RS232); devices on one port share it.

    Example:
        manager.add_connection(
            "bms", "modbus_rtu", {"port": "/dev/ttyUSB0", "baudrate": 9600, "unit_id": 2},
            poll=[{"tags": ["hr:0:uint16*0.1", "hr:1:int16*0.01"], "interval": 2.0}],
        )
    """

    type_name = "modbus_rtu"
    config_model = ModbusRtuConfig
    cfg: ModbusRtuConfig
    endpoint_fields = frozenset({"port", "baudrate", "parity", "stopbits", "bytesize"})

    def _bus_config(self) -> BusConfig:
        cfg = self.cfg
        return BusConfig(
            kind="rtu",
            key=f"rtu:{cfg.port}",
            device=cfg.port,
            baudrate=cfg.baudrate,
            parity=cfg.parity[0],  # NONE, EVEN... are N, E...
            stopbits=cfg.stopbits,
            bytesize=cfg.bytesize,
            handle_local_echo=cfg.handle_local_echo,
        )
