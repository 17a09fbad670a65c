"""Modbus links shared by several logical devices: one pymodbus client per line.

A `ModbusBus` is one physical link (a TCP connection to a device or a
gateway, or one serial port) and the pymodbus async client on it. Every
``modbus_tcp`` / ``modbus_rtu`` connection is a *member* of exactly one bus;
several members (unit ids) behind one gateway or on one RS485 line share it.
The bus owns what only the link can know:

- **the wire**: one request at a time (RS485 is half-duplex, and a gateway
  serializes anyway), handed out by a fair queue, round-robin by unit id, so
  a member with many requests cannot starve the others;
- **per-device timeouts and failure counts**: each request runs under its
  member's ``timeout``; a unit that leaves ``dead_after`` requests in a row
  unanswered is *dead*: from then on it gets one probe on the wire per
  ``probe_interval`` and its other requests fail at once without touching
  the wire, so a dead slave costs the live ones at most one timeout per
  probe interval;
- **error translation** at the library boundary: an exception response is a
  `DeviceError` (the link stays), garbage or a partial frame a
  `ProtocolError`, a silent device `ModbusTimeoutError`, a closed or refused
  link `ConnectError`. A frame that broke mid-way (a partial answer, a
  transaction id out of step) calls ``mark_tx_drop()`` on the members, so
  their supervisors reconnect on the fast path;
- **stats**: packets and bytes of each request go to the member that sent it.

pymodbus is used for what it is good at (PDUs, framing, transactions) with
its own recovery switched off: no reconnect (``reconnect_delay=0``), no
retries, no timeout of its own (ours is per member) and the transport opened
by us, because its ``connect()`` retries on its own and swallows the
`OSError` that says whether a device refused or timed out. Requests never
open the link: a member's ``connect()`` does, when its Supervisor says so.

Buses are kept per event loop and found by key: ``tcp:<host>:<port>`` (plus
the connection's ``bus`` name, if it has one) or ``rtu:<port>``. The last
member to leave closes the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import struct
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Final, Literal, Protocol

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU
from pymodbus.transport.serialtransport import create_serial_connection

from edgelink._deadline import DeadlineWheel
from edgelink.clock import Clock, SystemClock
from edgelink.drivers._socket import tune_tcp_socket
from edgelink.errors import (
    ConfigError,
    ConnectError,
    DeviceError,
    EdgelinkError,
    ExceptionMap,
    ProtocolError,
    map_exceptions,
)

__all__ = ["BusConfig", "BusMember", "ModbusBus", "ModbusTimeoutError", "get_bus"]

logger = logging.getLogger(__name__)

#: Exception codes of the Modbus application protocol, for messages.
EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

#: Exception codes by which a gateway says the device behind it did not answer.
GATEWAY_SILENT: Final = frozenset({10, 11})

#: pymodbus's exceptions as edgelink's, first match wins (subclasses first): a
#: closed link is transient, anything else pymodbus raises (an I/O error in a
#: frame, a decode failure) is garbage on the wire.
PYMODBUS_ERRORS: Final[ExceptionMap] = {
    ConnectionException: (ConnectError, "{what}: {error.string}"),
    ModbusException: (ProtocolError, "{what}: {error.string}"),  # ModbusIOException too
}

#: After an abandoned request on a serial line, wait this long before the next
#: one, so a late answer cannot be taken for the next request's (RTU frames
#: carry no transaction id).
RTU_GUARD: Final = 0.05

_MBAP: Final = struct.Struct(">HHH")


class ModbusTimeoutError(EdgelinkError, TimeoutError):
    """A Modbus device did not answer a request within its ``timeout``.

    A `TimeoutError`: the Supervisor treats it as a dropped frame (fast-path
    reconnect), and `execute_with_retry` retries after the reconnect.
    """


@dataclasses.dataclass(frozen=True, slots=True)
class BusConfig:
    """What one link is: the transport settings every member of a bus must share."""

    kind: Literal["tcp", "rtu"]
    key: str
    host: str = ""
    port: int = 0
    device: str = ""
    baudrate: int = 19200
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    handle_local_echo: bool = False
    keepalive_idle: int = 10
    keepalive_interval: int = 5
    keepalive_count: int = 3
    tcp_user_timeout: float = 15.0

    def describe(self) -> str:
        """The link, for messages: ``10.0.0.5:502`` or ``/dev/ttyUSB0 9600 8N1``."""
        if self.kind == "tcp":
            return f"{self.host}:{self.port}"
        return f"{self.device} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


class BusMember(Protocol):
    """What a bus needs of the connection that uses it (a ``modbus_*`` driver)."""

    connection_id: str
    unit_id: int
    #: Seconds this device gets to answer a request.
    timeout: float
    #: Unanswered requests in a row after which the device is dead (probe lane).
    dead_after: int
    #: Seconds between probes of a dead device.
    probe_interval: float

    def update_stats(self, **deltas: int) -> None:
        """Count traffic."""

    def count_exchange(self, bytes_sent: int, packets_received: int, bytes_received: int) -> None:
        """Count one request and its answer."""

    def connection_lost(self, exc: BaseException | None = None) -> None:
        """The link is gone."""

    def mark_tx_drop(self) -> None:
        """A frame broke mid-way."""


class _FairQueue:
    """One holder at a time; waiters are served round-robin by lane (unit id).

    Uncontended, `acquire` takes the wire without creating a future.
    """

    __slots__ = ("_busy", "_waiting")

    def __init__(self) -> None:
        self._busy = False
        # Lane -> its waiters; dict order is the rotation order.
        self._waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def try_acquire(self) -> bool:
        """Take the wire if it is free and nobody waits; never blocks."""
        if self._busy or self._waiting:
            return False
        self._busy = True
        return True

    async def acquire(self, lane: Hashable) -> None:
        if self.try_acquire():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(lane, deque()).append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # Granted and cancelled in the same turn: pass the wire on.
                self.release()
            else:
                queue = self._waiting.get(lane)
                if queue is not None and fut in queue:
                    queue.remove(fut)
                    if not queue:
                        del self._waiting[lane]
            raise

    def release(self) -> None:
        while self._waiting:
            lane = next(iter(self._waiting))
            queue = self._waiting.pop(lane)
            fut = queue.popleft()
            if queue:
                # Back of the rotation: every other lane goes first.
                self._waiting[lane] = queue
            if not fut.done():
                fut.set_result(None)
                return
        self._busy = False


@dataclasses.dataclass(slots=True)
class _Unit:
    """What the bus knows about one unit id: its run of unanswered requests."""

    failures: int = 0
    dead: bool = False
    next_probe_at: float = 0.0
    answered: int = 0
    timeouts: int = 0


class _Flight:
    """The request on the wire: who sent it, what came back so far, how to abort it."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "cancelling",
        "error",
        "function_code",
        "member",
        "packets_received",
        "task",
        "tid",
        "unit_id",
    )

    def __init__(self, member: BusMember, task: asyncio.Task[Any]) -> None:
        self.member = member
        self.unit_id = member.unit_id
        self.task = task
        self.cancelling = task.cancelling()
        self.error: BaseException | None = None
        self.tid: int | None = None
        self.function_code = -1
        self.bytes_sent = 0
        self.bytes_received = 0
        self.packets_received = 0


class ModbusBus:
    """One Modbus link and its members. Created by `get_bus`; used by the drivers.

    Not thread-safe: every call runs on the loop the bus was created on.
    """

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        self.members: dict[str, BusMember] = {}
        #: Counts the links opened; a member is connected while its generation is current.
        self.generation = 0
        self._client: ModbusBaseClient | None = None
        self._open_lock = asyncio.Lock()
        self._queue = _FairQueue()
        self._wheel = DeadlineWheel()
        self._units: dict[int, _Unit] = {}
        self._flight: _Flight | None = None
        self._rx_last = b""
        # Made when a request is first abandoned: a deque costs 600 bytes per
        # device, and most links of a fleet never abandon one.
        self._stale_tids: deque[int] | None = None
        self._silent_units: set[int] = set()
        self._quiet_until = 0.0
        self._connected: asyncio.Future[None] | None = None
        #: Where the probe lane reads the time; tests put a ManualClock here.
        self.clock: Clock = SystemClock()

    def __repr__(self) -> str:
        state = "open" if self.is_open() else "closed"
        return (
            f"<ModbusBus {self.config.key} {state} generation={self.generation} "
            f"members={sorted(self.members)} queued={len(self._queue)}>"
        )

    def attach(self, member: BusMember) -> None:
        """Add a member (idempotent)."""
        self.members[member.connection_id] = member

    def detach(self, member: BusMember) -> None:
        """Remove a member; the last one to leave closes the link and forgets the bus."""
        if self.members.get(member.connection_id) is member:
            del self.members[member.connection_id]
        if not self.members:
            self.close()
            _forget(self)

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        """The link's asyncio transport while it is open (``get_extra_info`` for its socket)."""
        client = self._client
        if client is None or not client.connected:
            return None
        return client.ctx.transport

    def is_open(self) -> bool:
        """Return True while the link is up."""
        client = self._client
        return client is not None and client.connected

    def unit_status(self, unit_id: int) -> dict[str, Any]:
        """Return what the bus knows about one unit: failures, dead, next probe."""
        unit = self._units.get(unit_id, _Unit())
        now = self.clock.monotonic()
        return {
            "failures": unit.failures,
            "dead": unit.dead,
            "next_probe_in": max(0.0, unit.next_probe_at - now) if unit.dead else None,
            "answered": unit.answered,
            "timeouts": unit.timeouts,
        }

    def describe(self) -> dict[str, Any]:
        """Return the bus's state for status views and tests."""
        return {
            "key": self.config.key,
            "link": self.config.describe(),
            "open": self.is_open(),
            "generation": self.generation,
            "members": sorted(self.members),
            "queued": len(self._queue),
            "units": {uid: self.unit_status(uid) for uid in sorted(self._units)},
        }

    async def open(self) -> int:
        """Open the link unless it is open; return its generation.

        Concurrent calls open it once. Never retries.

        Raises:
            ConnectError: if the device refuses, cannot be reached or the port
                cannot be opened (the OS error is the cause).
            ConfigError: if the serial settings are refused by the port.
        """
        async with self._open_lock:
            if self.is_open():
                return self.generation
            self._close_client()
            loop = asyncio.get_running_loop()
            self._connected = loop.create_future()
            client = self._new_client()
            try:
                if self.config.kind == "tcp":
                    await self._open_tcp(loop, client)
                else:
                    await self._open_serial(loop, client)
                # The serial transport reports itself up a loop turn later.
                await self._connected
            except BaseException:
                client.close()
                raise
            finally:
                self._connected = None
            self._client = client
            self.generation += 1
            self._rx_last = b""
            self._stale_tids = None
            self._silent_units.clear()
            self._quiet_until = 0.0
            logger.debug("%s: link %d open", self.config.key, self.generation)
            return self.generation

    def _new_client(self) -> ModbusBaseClient:
        cfg = self.config
        hooks: dict[str, Any] = {
            "name": f"edgelink[{cfg.key}]",
            "reconnect_delay": 0,
            "retries": 0,
            "trace_packet": self._trace_packet,
            "trace_pdu": self._trace_pdu,
            "trace_connect": self._trace_connect,
        }
        client: ModbusBaseClient
        if cfg.kind == "tcp":
            client = AsyncModbusTcpClient(cfg.host, port=cfg.port, **hooks)
        else:
            client = AsyncModbusSerialClient(
                cfg.device,
                baudrate=cfg.baudrate,
                bytesize=cfg.bytesize,
                parity=cfg.parity,
                stopbits=cfg.stopbits,
                handle_local_echo=cfg.handle_local_echo,
                **hooks,
            )
        # Each request runs under its member's own timeout (the bus's deadline
        # wheel); pymodbus's single per-client timeout would count failures,
        # log and close the link on its own. None makes its wait a plain await.
        params: Any = client.ctx.comm_params
        params.timeout_connect = None
        client.set_max_no_responses(2**31)
        return client

    async def _open_tcp(self, loop: asyncio.AbstractEventLoop, client: ModbusBaseClient) -> None:
        cfg = self.config
        try:
            transport, _ = await loop.create_connection(
                client.ctx.handle_new_connection, cfg.host, cfg.port
            )
        except OSError as exc:
            raise ConnectError(
                f"cannot connect to {cfg.host}:{cfg.port}: {exc.strerror or exc}", cause=exc
            ) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            tune_tcp_socket(
                sock,
                keepalive_idle=cfg.keepalive_idle,
                keepalive_interval=cfg.keepalive_interval,
                keepalive_count=cfg.keepalive_count,
                user_timeout=cfg.tcp_user_timeout,
            )

    async def _open_serial(self, loop: asyncio.AbstractEventLoop, client: ModbusBaseClient) -> None:
        cfg = self.config
        try:
            transport, _ = await create_serial_connection(
                loop,
                client.ctx.handle_new_connection,
                cfg.device,
                baudrate=cfg.baudrate,
                bytesize=cfg.bytesize,
                parity=cfg.parity,
                stopbits=cfg.stopbits,
                timeout=0,
            )
        except OSError as exc:  # serial.SerialException is an OSError
            raise ConnectError(f"cannot open {cfg.device}: {exc}", cause=exc) from exc
        except ValueError as exc:
            raise ConfigError(
                f"serial settings refused by {cfg.device}: {exc}", path="config"
            ) from exc
        # What pymodbus's own connect() does; connection_made follows a turn later.
        client.ctx.transport = transport

    def close(self) -> None:
        """Close the link (idempotent). Members are not told: they asked for it."""
        self._abort(ConnectError(f"link {self.config.key} closed"))
        self._close_client()

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # pymodbus marks itself closing first, so no disconnect callback fires.
            client.close()

    def _fail_link(self, error: BaseException, *, tx_drop: bool = False) -> None:
        """The link is broken: abort the request, close, tell every member of this link."""
        generation = self.generation
        was_open = self._client is not None
        self._abort(error)
        self._close_client()
        if not was_open:
            return
        logger.debug("%s: link %d failed: %s", self.config.key, generation, error)
        for member in list(self.members.values()):
            if tx_drop:
                member.mark_tx_drop()
            else:
                member.connection_lost(error)

    def _abort(self, error: BaseException) -> None:
        """End the request on the wire now with ``error`` (it is raised in its task)."""
        flight = self._flight
        if flight is not None and flight.error is None and not flight.task.done():
            flight.error = error
            flight.task.cancel()

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        flight = self._flight
        if sending:
            self._rx_last = b""
            if flight is not None:
                flight.bytes_sent += len(data)
                if self.config.kind == "tcp" and len(data) >= 8:
                    flight.tid = int.from_bytes(data[0:2], "big")
                    flight.function_code = data[7]
                elif len(data) >= 2:
                    flight.function_code = data[1]
            return data
        # pymodbus hands over its whole receive buffer each time: count what is
        # new since the last call (the buffer restarts after a decoded frame).
        last = self._rx_last
        new = len(data) - len(last) if last and data.startswith(last) else len(data)
        self._rx_last = data
        if flight is not None:
            flight.bytes_received += new
        if self.config.kind == "tcp":
            problem = self._check_mbap(data, flight)
            if problem is not None:
                error, tx_drop = problem
                self._fail_link(error, tx_drop=tx_drop)
                # Nothing of a broken stream goes on to the framer.
                return b""
        return data

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self._rx_last = b""
            flight = self._flight
            if flight is not None:
                flight.packets_received += 1
        return pdu

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            fut = self._connected
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        # The peer closed or reset the link, or the serial port went away.
        flight = self._flight
        if flight is not None and flight.bytes_received:
            self._fail_link(
                ProtocolError(
                    f"link closed mid-frame ({flight.bytes_received} bytes of an answer)"
                ),
                tx_drop=True,
            )
        else:
            self._fail_link(ConnectError(f"{self.config.describe()} closed the connection"))

    def _check_mbap(self, data: bytes, flight: _Flight | None) -> tuple[BaseException, bool] | None:
        """Check the MBAP headers in ``data``; return (error, tx_drop) for a broken stream."""
        offset = 0
        size = len(data)
        while size - offset >= 8:
            tid, pid, length = _MBAP.unpack_from(data, offset)
            if pid != 0 or not 2 <= length <= 254:
                return (
                    ProtocolError(
                        f"garbage from {self.config.describe()}: not a Modbus TCP frame "
                        f"(protocol id {pid}, length {length})"
                    ),
                    False,
                )
            if flight is None or tid != flight.tid:
                if self._stale_tids is None or tid not in self._stale_tids:
                    expected = "none" if flight is None else flight.tid
                    return (
                        ProtocolError(f"transaction id {tid} out of step (expected {expected})"),
                        True,
                    )
            else:
                unit, function = data[offset + 6], data[offset + 7]
                if unit != flight.unit_id or function & 0x7F != flight.function_code:
                    return (
                        ProtocolError(
                            f"answer for unit {unit} function {function} to a request of "
                            f"unit {flight.unit_id} function {flight.function_code}"
                        ),
                        False,
                    )
            offset += 6 + length
        return None

    async def request(
        self,
        member: BusMember,
        generation: int,
        call: Callable[[ModbusBaseClient], Awaitable[ModbusPDU]],
        what: str,
    ) -> ModbusPDU:
        """Send one request for ``member`` and return its answer.

        ``generation`` is the link the member connected to; a member of an
        older link is not connected any more. ``what`` names the request in
        errors (``"read hr:0+10"``).

        Raises:
            DeviceError: for an exception response (``code`` = the exception code).
            ModbusTimeoutError: if the unit did not answer within the member's timeout.
            ProtocolError: for garbage or a partial answer (the link is dropped).
            ConnectError: if the link is down, or the unit is dead and its next
                probe is not due yet (no request is sent then).
        """
        cid = member.connection_id
        unit = self._units.get(member.unit_id)
        if unit is None:
            unit = self._units[member.unit_id] = _Unit()
        if unit.dead:
            now = self.clock.monotonic()
            if now < unit.next_probe_at:
                raise ConnectError(
                    f"unit {member.unit_id} on {self.config.describe()} left {unit.failures} "
                    f"requests unanswered; next probe in {unit.next_probe_at - now:.1f} s",
                    connection_id=cid,
                )
            # This request is the probe; the next one waits a whole interval.
            unit.next_probe_at = now + member.probe_interval
        queue = self._queue
        if not queue.try_acquire():
            await queue.acquire(member.unit_id)
        try:
            response = await self._on_wire(member, generation, unit, call, what)
        finally:
            queue.release()
        if response.isError():
            code = response.exception_code
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise DeviceError(
                f"{what} (unit {member.unit_id}): Modbus exception {code} ({name})",
                code=code,
                connection_id=cid,
            )
        return response

    async def _on_wire(
        self,
        member: BusMember,
        generation: int,
        unit: _Unit,
        call: Callable[[ModbusBaseClient], Awaitable[ModbusPDU]],
        what: str,
    ) -> ModbusPDU:
        cid = member.connection_id
        client = self._client
        if client is None or not client.connected or generation != self.generation:
            raise ConnectError("not connected", connection_id=cid)
        loop = asyncio.get_running_loop()
        if self._quiet_until:
            wait = self._quiet_until - loop.time()
            self._quiet_until = 0.0
            if wait > 0:
                await asyncio.sleep(wait)
        task = asyncio.current_task()
        assert task is not None
        flight = _Flight(member, task)
        self._flight = flight
        started = loop.time()
        try:
            try:
                with (
                    self._wheel.timeout(member.timeout),
                    map_exceptions(PYMODBUS_ERRORS, connection_id=cid, what=what),
                ):
                    response = await call(client)
            finally:
                # Off the wire before anything else: what follows may fail the
                # link, and must not abort this (finished) request's task.
                self._flight = None
                _count(member, flight)
        except asyncio.CancelledError:
            error = flight.error
            if error is not None and task.uncancel() <= flight.cancelling:
                # Our own abort (garbage, link lost): raise its error instead.
                if isinstance(error, EdgelinkError) and error.connection_id is None:
                    error.connection_id = cid
                raise error from None
            self._abandoned(flight, started + member.timeout)
            raise
        except TimeoutError:
            self._abandoned(flight, loop.time() + RTU_GUARD)
            raise self._timed_out(member, unit, flight, what) from None
        unit.failures = 0
        unit.answered += 1
        if unit.dead:
            unit.dead = False
            logger.info("%s: unit %d answers again", self.config.key, member.unit_id)
        self._silent_units.clear()
        return response

    def _abandoned(self, flight: _Flight, quiet_until: float) -> None:
        """Remember a request left without its answer, so a late answer is not mistaken."""
        if flight.tid is not None:
            if self._stale_tids is None:
                self._stale_tids = deque(maxlen=32)
            self._stale_tids.append(flight.tid)
        if self.config.kind == "rtu":
            self._quiet_until = max(self._quiet_until, quiet_until)

    def _timed_out(
        self, member: BusMember, unit: _Unit, flight: _Flight, what: str
    ) -> BaseException:
        cid = member.connection_id
        if flight.bytes_received:
            # Bytes came, no valid frame: garbage or a frame cut short.
            error = ProtocolError(
                f"{what} (unit {member.unit_id}): {flight.bytes_received} bytes but no valid "
                f"answer within {member.timeout:g} s",
                connection_id=cid,
            )
            if self.config.kind == "tcp":
                self._fail_link(error, tx_drop=True)
            else:
                # A serial line has no stream to fall out of step with: only
                # this device's link restarts.
                member.mark_tx_drop()
            return error
        unit.failures += 1
        unit.timeouts += 1
        if unit.failures >= member.dead_after and not unit.dead:
            unit.dead = True
            unit.next_probe_at = self.clock.monotonic() + member.probe_interval
            logger.warning(
                "%s: unit %d left %d requests unanswered; probing it every %g s",
                self.config.key,
                member.unit_id,
                unit.failures,
                member.probe_interval,
            )
        silent = ModbusTimeoutError(
            f"{what} (unit {member.unit_id}): no answer within {member.timeout:g} s",
            connection_id=cid,
        )
        self._silent_units.add(member.unit_id)
        if self.config.kind == "tcp" and len(self._silent_units) >= 2:
            # Two units in a row without a word from anyone: the TCP link (or
            # the gateway) is what is silent, not one device behind it.
            self._fail_link(
                ModbusTimeoutError(
                    f"{self.config.describe()}: units {sorted(self._silent_units)} silent "
                    "in a row; rebuilding the link"
                )
            )
        return silent


def _count(member: BusMember, flight: _Flight) -> None:
    """Book one request's traffic on the member that sent it (one stats update)."""
    if flight.bytes_sent:
        member.count_exchange(flight.bytes_sent, flight.packets_received, flight.bytes_received)


#: The buses of each event loop, by key.
_BUSES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, ModbusBus]] = (
    weakref.WeakKeyDictionary()
)


def get_bus(config: BusConfig, connection_id: str) -> ModbusBus:
    """Return the running loop's bus for ``config.key``, creating it if needed.

    Raises:
        ConfigError: if a bus of that key exists with other transport settings.
    """
    loop = asyncio.get_running_loop()
    buses = _BUSES.get(loop)
    if buses is None:
        buses = _BUSES[loop] = {}
    bus = buses.get(config.key)
    if bus is None:
        bus = buses[config.key] = ModbusBus(config)
        return bus
    if bus.config != config:
        differ = ", ".join(
            f"{f.name} {getattr(config, f.name)!r} vs {getattr(bus.config, f.name)!r}"
            for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(bus.config, f.name)
        )
        raise ConfigError(
            f"shares link {config.key} with {', '.join(sorted(bus.members)) or 'another'} "
            f"but its settings differ ({differ}); "
            "connections on one link must use the same transport settings",
            path="config",
            connection_id=connection_id,
        )
    return bus


def _forget(bus: ModbusBus) -> None:
    with contextlib.suppress(RuntimeError):
        buses = _BUSES.get(asyncio.get_running_loop())
        if buses is not None and buses.get(bus.config.key) is bus:
            del buses[bus.config.key]
