"""The ``zkteco`` driver: ZKTeco attendance terminals over the ZK protocol (port 4370, TCP or UDP).

Config keys (the model `edgelink.drivers.configs.ZktecoConfig`; unknown keys are refused):

- ``host`` (required), ``port`` (4370)
- ``password``: the comm key, a number (0: none); a secret, redacted in
  status, events and logs
- ``timeout`` (5 s): how long the device has for each answer packet
- ``transport`` (tcp): ``tcp``, or ``udp`` (a packet per datagram, no wrapper)
- ``realtime`` (true): register for attendance events; each punch is reported
  as the datapoint ``attendance_event``
- ``max_chunk`` (65472): bytes per chunk when a table is read
- ``max_records`` (200,000): rows a users or attendance list holds at most
- ``encoding`` (utf-8) of names; the TCP keepalive keys of every TCP driver

A link is a session: ``connect()`` opens the socket, sends ``CMD_CONNECT``
and, when the device asks for it, ``CMD_AUTH`` with the scrambled comm key.
A refused key is an `AuthError` (state ``error``, no retries); an answer that
is no ZK framing, or one for another session, is a `ProtocolError` (the link
is rebuilt); a device that does not answer within ``timeout`` is a
`ConnectTimeout` (the health check fails, the link is rebuilt). The device says no
(``CMD_ACK_ERROR``, an unknown command) with a `DeviceError`: the link stays.

Operations: `device_info`, `get_time` / `set_time`, `get_sizes`,
`iter_users` / `get_users`, `iter_attendance` / `get_attendance`,
`enable_device` / `disable_device`, and `request(op, ...)` naming any of
them. Tags: ``read`` of ``time``, ``firmware_version``, ``serial_number``,
``platform``, ``device_name``, ``mac``, ``device_info``, ``sizes``,
``user_count``, ``record_count``, ``users``, ``attendance``; ``write`` of
``time`` (a datetime or ISO 8601 text) and ``enabled`` (true/false).

The device answers one packet at a time, so requests are serialized on the
link. Tables are read through the device's buffer in chunks of at most
``max_chunk`` bytes and cut into records as they arrive: memory stays bounded
by one chunk however long the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, Final, cast

from edgelink.connection import Connection
from edgelink.drivers._socket import close_transport, open_tcp_link
from edgelink.drivers.configs import ZktecoConfig
from edgelink.drivers.zk_protocol import (
    ATTENDANCE_RECORD_SIZES,
    EF_ATTLOG,
    FCT_USER,
    USER_RECORD_SIZES,
    USHRT_MAX,
    Attendance,
    Command,
    FrameError,
    Packet,
    RecordSplitter,
    Sizes,
    TcpDeframer,
    User,
    command_name,
    decode_packet,
    decode_time,
    encode_packet,
    encode_time,
    frame_tcp,
    make_commkey,
    option_value,
    unpack_attendance,
    unpack_event,
    unpack_sizes,
    unpack_user,
)
from edgelink.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    DeviceError,
    EdgelinkError,
    ProtocolError,
)

__all__ = ["EVENT_TAG", "READ_TAGS", "WRITE_TAGS", "ZktecoConnection"]

logger = logging.getLogger(__name__)

#: The datapoint tag of a real-time attendance event.
EVENT_TAG: Final = "attendance_event"
READ_TAGS: Final = frozenset(
    {
        "time",
        "firmware_version",
        "serial_number",
        "platform",
        "device_name",
        "mac",
        "device_info",
        "sizes",
        "user_count",
        "record_count",
        "users",
        "attendance",
    }
)
WRITE_TAGS: Final = frozenset({"time", "enabled"})
#: Answer packets of one request held at most (a chunk is one PREPARE, a few DATA, one ACK).
INBOX_LIMIT: Final = 64
#: The largest chunk asked for over UDP.
UDP_MAX_CHUNK: Final = 16 * 1024
#: A table the device announces as larger than this is refused as garbage.
MAX_TABLE: Final = 256 * 1024 * 1024

_OPTIONS: Final = {
    "serial_number": "~SerialNumber",
    "platform": "~Platform",
    "device_name": "~DeviceName",
    "mac": "MAC",
}
_DEVICE_NO: Final = frozenset(
    {
        Command.ACK_ERROR,
        Command.ACK_RETRY,
        Command.ACK_REPEAT,
        Command.ACK_ERROR_DATA,
        Command.ACK_ERROR_INIT,
        Command.ACK_ERROR_CMD,
        Command.ACK_UNKNOWN,
    }
)


class ZktecoConnection(Connection):
    """A ZKTeco attendance terminal, e.g. the simulator of `edgelink.sim.zkteco`.

    Example:
        manager.add_connection("door", "zkteco", {"host": "192.168.1.201", "password": 1234})
        info = await manager.execute_with_retry("door", lambda c: c.device_info())
        records = await manager.execute_with_retry("door", lambda c: c.get_attendance())
    """

    type_name = "zkteco"
    config_model = ZktecoConfig
    cfg: ZktecoConfig

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        cfg = self.cfg
        self.host: str = cfg.host
        self.port: int = cfg.port
        self._udp = cfg.transport == "udp"
        # Over UDP a chunk comes as CMD_DATA datagrams of 1 KiB: 16 KiB per chunk.
        self._max_chunk = min(cfg.max_chunk, UDP_MAX_CHUNK) if self._udp else cfg.max_chunk
        self._transport: asyncio.Transport | asyncio.DatagramTransport | None = None
        self._protocol: _ZkProtocol | _ZkDatagram | None = None
        self._session = 0
        self._reply_id = USHRT_MAX - 1
        self._open = False
        # One request on the link at a time; a table read holds the device
        # buffer from prepare to free, so two table reads must not interleave.
        self._lock = asyncio.Lock()
        self._transfer_lock = asyncio.Lock()
        self._expect: int | None = None
        self._answering = False
        self._inbox: deque[Packet] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed_error: BaseException | None = None
        #: Answers that matched no request (late answers to abandoned ones).
        self.stale_packets = 0
        #: Real-time events received, and those of kinds this driver does not decode.
        self.events_received = 0
        self.events_ignored = 0
        #: Rows left out of lists because they passed ``max_records``; records not decodable.
        self.records_truncated = 0
        self.records_skipped = 0

    def __repr__(self) -> str:
        return (
            f"<ZktecoConnection {self.connection_id} {self.host}:{self.port} "
            f"{'session ' + str(self._session) if self._open else 'closed'}>"
        )

    # -- link ---------------------------------------------------------------

    async def connect(self) -> None:
        """Open the socket and the session (``CMD_CONNECT``, then ``CMD_AUTH`` if asked).

        Raises:
            ConnectError: the socket could not be opened.
            ConnectTimeout: the device did not answer.
            AuthError: the device refused the comm key.
            ProtocolError: the device answered something that is no ZK session.
        """
        await self.disconnect()
        transport: asyncio.Transport | asyncio.DatagramTransport
        protocol: _ZkProtocol | _ZkDatagram
        if self._udp:
            transport, protocol = await self._open_udp()
        else:
            transport, protocol = await open_tcp_link(
                lambda: _ZkProtocol(self),
                self.host,
                self.port,
                self.cfg,
                connection_id=self.connection_id,
            )
        self._transport, self._protocol = transport, protocol
        self._closed_error = None
        self._session = 0
        self._reply_id = USHRT_MAX - 1
        try:
            await self._open_session()
        except BaseException:
            await self.disconnect()
            raise

    async def _open_udp(self) -> tuple[asyncio.DatagramTransport, _ZkDatagram]:
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _ZkDatagram(self), remote_addr=(self.host, self.port)
            )
        except OSError as exc:
            raise ConnectError(
                f"cannot open UDP to {self.host}:{self.port}: {exc.strerror or exc}",
                connection_id=self.connection_id,
                cause=exc,
            ) from exc
        return transport, protocol

    def _emit(
        self,
        packet: bytes,
        transport: asyncio.Transport | asyncio.DatagramTransport | None = None,
    ) -> int:
        """Send one packet as the transport carries it (ours by default); return the bytes sent."""
        transport = transport or self._transport
        if transport is None:
            return 0
        if self._udp:
            cast(asyncio.DatagramTransport, transport).sendto(packet)
            sent = len(packet)
        else:
            frame = frame_tcp(packet)
            cast(asyncio.Transport, transport).write(frame)
            sent = len(frame)
        self._stats.count_sent(sent)
        return sent

    async def _open_session(self) -> None:
        reply = await self._command(Command.CONNECT)
        self._session = reply.session_id
        if reply.command == Command.ACK_UNAUTH:
            key = make_commkey(self.cfg.password, self._session)
            reply = await self._command(Command.AUTH, key)
            if reply.command == Command.ACK_UNAUTH:
                raise AuthError(
                    "the device refused the comm key (config.password)",
                    connection_id=self.connection_id,
                )
        if reply.command != Command.ACK_OK:
            raise ProtocolError(
                f"the device answered {command_name(reply.command)} to CMD_CONNECT",
                connection_id=self.connection_id,
            )
        if self.cfg.realtime:
            self._check(await self._command(Command.REG_EVENT, struct.pack("<I", EF_ATTLOG)))
        self._open = True

    async def disconnect(self) -> None:
        """Say goodbye (``CMD_EXIT``, not waited for) and close; idempotent, never raises."""
        transport, self._transport = self._transport, None
        protocol, self._protocol = self._protocol, None
        was_open, self._open = self._open, False
        self._wake(ConnectError("connection closed", connection_id=self.connection_id))
        if transport is None or protocol is None:
            return
        protocol.detach()
        if was_open and not transport.is_closing():
            # The device frees the session at once instead of at its own timeout.
            self._emit(encode_packet(Command.EXIT, self._session, self._next_id()), transport)
        await close_transport(transport, protocol.closed, unsent_ok=64)

    def is_connected(self) -> bool:
        """Return True while the session is open."""
        transport = self._transport
        return self._open and transport is not None and not transport.is_closing()

    @property
    def session_id(self) -> int:
        """The session id the device gave (0 before the first connect)."""
        return self._session

    async def health_check(self) -> bool:
        """Read the device's clock: a real request answered by the device's firmware."""
        await self.get_time()
        return True

    # -- operations ---------------------------------------------------------

    async def get_time(self) -> datetime:
        """Return the device's clock.

        Raises:
            ProtocolError: if the answer is no time.
        """
        reply = self._check(await self._command(Command.GET_TIME))
        try:
            return decode_time(struct.unpack("<I", reply.data[:4])[0])
        except (struct.error, ValueError) as exc:
            raise self._garbage(f"the device's time is no date: {reply.data[:4]!r}") from exc

    async def set_time(self, when: datetime | str) -> None:
        """Set the device's clock (to the second; 2000..2099).

        Raises:
            ValueError: for a time the device cannot hold.
        """
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        if not 2000 <= when.year <= 2099:
            raise ValueError(f"the device holds years 2000..2099, not {when.year}")
        self._check(await self._command(Command.SET_TIME, struct.pack("<I", encode_time(when))))

    async def get_option(self, name: str) -> str:
        """Return a device option by name (``~SerialNumber``, ``~Platform``, ``MAC``...)."""
        reply = self._check(await self._command(Command.OPTIONS_RRQ, name.encode() + b"\0"))
        return option_value(reply.data)

    async def get_firmware_version(self) -> str:
        """Return the firmware version (``Ver 6.60 Apr 28 2017``)."""
        reply = self._check(await self._command(Command.GET_VERSION))
        return reply.data.split(b"\0", 1)[0].decode("utf-8", "replace")

    async def get_sizes(self) -> Sizes:
        """Return the counts and capacities of the device's tables."""
        reply = self._check(await self._command(Command.GET_FREE_SIZES))
        try:
            return unpack_sizes(reply.data)
        except ValueError as exc:
            raise self._garbage(str(exc)) from exc

    async def device_info(self) -> dict[str, Any]:
        """Return firmware version, serial number, platform, device name, MAC and the sizes."""
        info: dict[str, Any] = {"firmware_version": await self.get_firmware_version()}
        for key, option in _OPTIONS.items():
            try:
                info[key] = await self.get_option(option)
            except DeviceError:
                info[key] = None  # an older firmware without the option
        info.update((await self.get_sizes()).as_dict())
        return info

    async def enable_device(self) -> None:
        """Let people use the terminal again."""
        self._check(await self._command(Command.ENABLEDEVICE))

    async def disable_device(self) -> None:
        """Lock the terminal ("working..." on its screen), e.g. while tables are changed."""
        self._check(await self._command(Command.DISABLEDEVICE))

    async def iter_users(self) -> AsyncIterator[User]:
        """Yield the user table row by row, read in chunks (memory: one chunk)."""
        sizes = await self.get_sizes()
        async for raw in self._iter_table(
            Command.USERTEMP_RRQ, FCT_USER, sizes.users, USER_RECORD_SIZES
        ):
            yield unpack_user(raw, self.cfg.encoding)

    async def iter_attendance(self) -> AsyncIterator[Attendance]:
        """Yield the attendance records, read in chunks (memory: one chunk).

        A record whose time is no date is skipped, counted in
        ``records_skipped`` and named in a WARNING.
        """
        sizes = await self.get_sizes()
        async for raw in self._iter_table(
            Command.ATTLOG_RRQ, 0, sizes.records, ATTENDANCE_RECORD_SIZES
        ):
            try:
                yield unpack_attendance(raw)
            except ValueError as exc:
                self.records_skipped += 1
                logger.warning("[%s] attendance record skipped: %s", self.connection_id, exc)

    async def get_users(self, limit: int | None = None) -> list[User]:
        """Return the users, at most ``limit`` (default ``max_records``; the rest is counted)."""
        return await self._collect(self.iter_users(), limit)

    async def get_attendance(self, limit: int | None = None) -> list[Attendance]:
        """Return the attendance records, at most ``limit`` (default ``max_records``)."""
        return await self._collect(self.iter_attendance(), limit)

    async def request(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run an operation by name, with its arguments.

        The operations: ``device_info``, ``time``, ``set_time``, ``sizes``,
        ``users``, ``attendance``, ``enable``, ``disable``, or a read tag.

        Raises:
            ValueError: for an unknown operation.
        """
        ops: dict[str, Any] = {
            "device_info": self.device_info,
            "time": self.get_time,
            "get_time": self.get_time,
            "set_time": self.set_time,
            "sizes": self.get_sizes,
            "users": self.get_users,
            "attendance": self.get_attendance,
            "enable": self.enable_device,
            "disable": self.disable_device,
        }
        fn = ops.get(op)
        if fn is not None:
            return await fn(*args, **kwargs)
        if op in READ_TAGS:
            return await self.read(op)
        raise ValueError(f"unknown zkteco operation {op!r}; known: {', '.join(sorted(ops))}")

    def check_tag(self, tag: str) -> None:
        """Accept the read tags of this driver."""
        if tag not in READ_TAGS:
            raise ConfigError(
                f"unknown zkteco tag {tag!r}; known: {', '.join(sorted(READ_TAGS))}", path="tags"
            )

    async def read(self, tag: str) -> Any:
        """Read a tag (JSON-friendly values: times in ISO 8601, rows as dicts).

        Raises:
            ValueError: for an unknown tag.
        """
        if tag == "time":
            return (await self.get_time()).isoformat()
        if tag == "firmware_version":
            return await self.get_firmware_version()
        if tag in _OPTIONS:
            return await self.get_option(_OPTIONS[tag])
        if tag == "device_info":
            return await self.device_info()
        if tag == "sizes":
            return (await self.get_sizes()).as_dict()
        if tag == "user_count":
            return (await self.get_sizes()).users
        if tag == "record_count":
            return (await self.get_sizes()).records
        if tag == "users":
            return [u.as_dict() for u in await self.get_users()]
        if tag == "attendance":
            return [a.as_dict() for a in await self.get_attendance()]
        raise ValueError(f"unknown zkteco tag {tag!r}; known: {', '.join(sorted(READ_TAGS))}")

    async def write(self, tag: str, value: Any) -> None:
        """Write ``time`` (datetime or ISO text) or ``enabled`` (bool).

        Raises:
            ValueError: for an unknown tag or a bad value.
        """
        if tag == "time":
            await self.set_time(value)
        elif tag == "enabled":
            if not isinstance(value, bool):
                raise ValueError(f"enabled must be true or false, not {value!r}")
            await (self.enable_device() if value else self.disable_device())
        else:
            raise ValueError(f"zkteco tags written: {', '.join(sorted(WRITE_TAGS))}; not {tag!r}")

    # -- tables -------------------------------------------------------------

    async def _collect(self, rows: AsyncIterator[Any], limit: int | None) -> list[Any]:
        limit = self.cfg.max_records if limit is None else limit
        out: list[Any] = []
        extra = 0
        async with contextlib.aclosing(rows):  # type: ignore[type-var]
            async for row in rows:
                if len(out) < limit:
                    out.append(row)
                else:
                    extra += 1
        if extra:
            self.records_truncated += extra
            logger.warning(
                "[%s] %d rows past the limit of %d left out", self.connection_id, extra, limit
            )
        return out

    async def _iter_table(
        self, command: int, fct: int, count: int, sizes: tuple[int, ...]
    ) -> AsyncIterator[bytes]:
        """Yield the records of a table read through the device buffer."""
        async with self._transfer_lock:
            splitter = RecordSplitter(count, sizes)
            first = await self._command(Command.DATA_WRRQ, struct.pack("<bhii", 1, command, fct, 0))
            if first.command == Command.DATA:  # a small table comes at once
                for raw in self._split(splitter, first.data):
                    yield raw
                return
            self._check(first)
            if len(first.data) < 5:
                raise self._garbage(f"buffer size missing: {first.data!r}")
            (size,) = struct.unpack_from("<I", first.data, 1)
            if size > MAX_TABLE:
                raise self._garbage(f"the device announces a table of {size} bytes")
            try:
                start = 0
                while start < size:
                    length = min(self._max_chunk, size - start)
                    chunk = await self._read_chunk(start, length)
                    start += length
                    for raw in self._split(splitter, chunk):
                        yield raw
            finally:
                if self.is_connected():
                    with contextlib.suppress(EdgelinkError):
                        await self._command(Command.FREE_DATA)

    def _split(self, splitter: RecordSplitter, chunk: bytes) -> list[bytes]:
        try:
            return list(splitter.feed(chunk))
        except ValueError as exc:
            raise self._garbage(str(exc)) from exc

    async def _read_chunk(self, start: int, length: int) -> bytes:
        """Read one chunk: ``CMD_PREPARE_DATA`` (the size), ``CMD_DATA``..., ``CMD_ACK_OK``."""
        async with self._lock:
            what = "CMD_DATA_RDY"
            self._send(Command.DATA_RDY, struct.pack("<ii", start, length))
            reply = await self._receive(what)
            if reply.command == Command.DATA:
                return reply.data
            if reply.command != Command.PREPARE_DATA:
                self._check(reply)
            if len(reply.data) < 4:
                raise self._garbage("CMD_PREPARE_DATA without a size")
            (size,) = struct.unpack_from("<I", reply.data)
            if size > length:
                raise self._garbage(f"chunk of {size} bytes for {length} asked")
            parts: list[bytes] = []
            got = 0
            while got < size:
                part = await self._receive(what)
                if part.command != Command.DATA:
                    raise self._garbage(f"{command_name(part.command)} inside a chunk")
                parts.append(part.data)
                got += len(part.data)
            if got != size:
                raise self._garbage(f"chunk of {got} bytes, {size} announced")
            end = await self._receive(what)
            if end.command != Command.ACK_OK:
                raise self._garbage(f"chunk ended by {command_name(end.command)}")
            return b"".join(parts)

    # -- packets ------------------------------------------------------------

    def _next_id(self) -> int:
        self._reply_id = (self._reply_id + 1) % USHRT_MAX
        return self._reply_id

    def _send(self, command: int, data: bytes = b"") -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectError(
                "not connected", connection_id=self.connection_id, cause=self._closed_error
            )
        rid = self._next_id()
        self._expect = rid
        self._answering = False
        # Answers the last request did not read (it failed half-way) are stale.
        self.stale_packets += len(self._inbox)
        self._inbox.clear()
        self._emit(encode_packet(command, self._session, rid, data))

    async def _receive(self, what: str) -> Packet:
        timeout = self.cfg.timeout
        try:
            async with asyncio.timeout(timeout):
                while not self._inbox:
                    if self._transport is None:
                        raise ConnectError(
                            "not connected",
                            connection_id=self.connection_id,
                            cause=self._closed_error,
                        )
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiter = waiter
                    try:
                        await waiter
                    finally:
                        self._waiter = None
        except TimeoutError as exc:
            # The request is abandoned: its late answers are stale. They are told
            # apart by the reply id, so the link may stay; whoever called decides
            # (the supervisor rebuilds it after a failed health check).
            self._expect = None
            raise ConnectTimeout(
                f"no answer to {what} within {timeout:g} s", connection_id=self.connection_id
            ) from exc
        except BaseException:
            self._expect = None
            raise
        return self._inbox.popleft()

    async def _command(self, command: int, data: bytes = b"") -> Packet:
        async with self._lock:
            self._send(command, data)
            return await self._receive(command_name(command))

    def _check(self, reply: Packet) -> Packet:
        """Return an ``CMD_ACK_OK`` reply; raise for the others."""
        code = reply.command
        if code == Command.ACK_OK:
            return reply
        if code in _DEVICE_NO:
            raise DeviceError(
                f"the device answered {command_name(code)}",
                code=code,
                connection_id=self.connection_id,
            )
        if code == Command.ACK_UNAUTH:
            raise self._garbage("the device no longer knows our session (CMD_ACK_UNAUTH)")
        raise self._garbage(f"unexpected answer {command_name(code)}")

    def _garbage(self, message: str) -> ProtocolError:
        return ProtocolError(message, connection_id=self.connection_id)

    def _on_packet(self, packet: Packet) -> None:
        """A packet arrived (called by the protocol)."""
        if packet.command == Command.REG_EVENT:
            self._on_event(packet)
            return
        if self._expect is None or (not self._answering and packet.reply_id != self._expect):
            self.stale_packets += 1
            return
        if self._session and packet.session_id != self._session:
            self._fail_link(
                self._garbage(f"answer for session {packet.session_id}, ours is {self._session}")
            )
            return
        if len(self._inbox) >= INBOX_LIMIT:
            self._fail_link(self._garbage(f"more than {INBOX_LIMIT} answers to one request"))
            return
        self._answering = True
        self._inbox.append(packet)
        self._wake(None)

    def _on_event(self, packet: Packet) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            # Acknowledged as the device expects, or it sends the event again.
            self._emit(encode_packet(Command.ACK_OK, self._session, packet.reply_id))
        self.events_received += 1
        if len(packet.data) not in (12, 36):
            self.events_ignored += 1  # another kind of event (finger, door, alarm...)
            return
        try:
            record = unpack_event(packet.data)
        except ValueError as exc:
            self.report_data(EVENT_TAG, None, quality="bad", reason=str(exc))
            return
        self.report_data(EVENT_TAG, record.as_dict())

    def _wake(self, error: BaseException | None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
                waiter.exception()

    def _fail_link(self, error: BaseException) -> None:
        transport = self._transport
        protocol = self._protocol
        if protocol is not None:
            protocol.detach()
        if transport is not None:
            transport.abort()
        self._on_closed(error)

    def _on_closed(self, error: BaseException) -> None:
        """The link ended (EOF, reset, garbage): fail the request, tell the owner."""
        was_open = self._open
        self._transport = None
        self._protocol = None
        self._open = False
        self._closed_error = error
        self._wake(error)
        if was_open:
            self.connection_lost(error)


class _ZkProtocol(asyncio.Protocol):
    """The socket side of `ZktecoConnection`: cuts the byte stream into ZK packets."""

    __slots__ = ("_conn", "_deframer", "closed")

    def __init__(self, conn: ZktecoConnection) -> None:
        self._conn: ZktecoConnection | None = conn
        self._deframer = TcpDeframer()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def detach(self) -> None:
        """Stop reporting to the driver (it closes the link itself)."""
        self._conn = None

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            packets = self._deframer.feed(data)
        except FrameError as exc:
            conn._fail_link(ProtocolError(str(exc), connection_id=conn.connection_id))
            return
        for raw in packets:
            conn._stats.count_received(len(raw) + 8)
            conn.record_activity()
            conn._on_packet(decode_packet(raw))
            if self._conn is None:  # the packet's consumer closed the link
                return

    def eof_received(self) -> bool | None:
        return None  # close the transport: a half-closed device is gone

    def connection_lost(self, exc: Exception | None) -> None:
        conn, self._conn = self._conn, None
        if not self.closed.done():
            self.closed.set_result(None)
        if conn is None:
            return
        error: BaseException
        if exc is not None:
            error = ConnectError(f"read failed: {exc}", connection_id=conn.connection_id, cause=exc)
        elif self._deframer.pending:
            error = ProtocolError(
                f"the device closed the link mid-packet ({self._deframer.pending} bytes)",
                connection_id=conn.connection_id,
            )
        else:
            error = ConnectError("the device closed the link", connection_id=conn.connection_id)
        conn._on_closed(error)


class _ZkDatagram(asyncio.DatagramProtocol):
    """The UDP side of `ZktecoConnection`: one packet per datagram, no wrapper."""

    def __init__(self, conn: ZktecoConnection) -> None:
        self._conn: ZktecoConnection | None = conn
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def detach(self) -> None:
        """Stop reporting to the driver (it closes the link itself)."""
        self._conn = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        conn = self._conn
        if conn is None:
            return
        conn._stats.count_received(len(data))
        conn.record_activity()
        try:
            packet = decode_packet(data)
        except FrameError as exc:
            conn._fail_link(ProtocolError(str(exc), connection_id=conn.connection_id))
            return
        conn._on_packet(packet)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: nothing listens on the device's UDP port.
        conn = self._conn
        if conn is not None:
            conn._fail_link(
                ConnectError(f"UDP error: {exc}", connection_id=conn.connection_id, cause=exc)
            )

    def connection_lost(self, exc: Exception | None) -> None:
        conn, self._conn = self._conn, None
        if not self.closed.done():
            self.closed.set_result(None)
        if conn is not None:
            conn._on_closed(ConnectError("UDP endpoint closed", connection_id=conn.connection_id))
