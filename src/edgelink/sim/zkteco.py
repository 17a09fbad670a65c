"""A ZKTeco attendance terminal on TCP and UDP: the ``zkteco`` driver's test peer, and the sim.

It speaks the ZK protocol of `edgelink.drivers.zk_protocol` as the devices
do: sessions opened by ``CMD_CONNECT`` (``CMD_ACK_UNAUTH`` and a
``CMD_AUTH`` with the scrambled comm key when one is set), device
information through ``CMD_GET_VERSION`` and ``CMD_OPTIONS_RRQ``, the clock,
the free sizes, the user and attendance tables through the device buffer
(prepare, read chunks, free), real-time attendance events to sessions that
registered for them, enable/disable, and ``CMD_EXIT``.

Faults (`ZkFault`), set on `ZkSimulator.fault`: ``REFUSE`` closes every new
link at once, ``SILENCE`` reads and never answers, ``DROP_MID_REPLY`` cuts the
next table chunk half-way and resets the link (then clears itself), and
``WRONG_SESSION`` answers with another session id; `ZkSimulator.reply_delay`
makes a slow terminal.

Example:
    async with ZkSimulator(device=ZkDevice(comm_key=1234, user_count=50)) as sim:
        manager.add_connection("door", "zkteco",
                               {"host": "127.0.0.1", "port": sim.port, "password": 1234})
        sim.push_attendance("7")      # someone punches in
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import struct
from collections import Counter
from datetime import datetime, timedelta
from typing import Any, Final, cast

from edgelink.drivers.zk_protocol import (
    EF_ATTLOG,
    FCT_USER,
    MAX_CHUNK,
    Attendance,
    Command,
    FrameError,
    Packet,
    Sizes,
    TcpDeframer,
    User,
    decode_packet,
    decode_time,
    encode_packet,
    encode_time,
    frame_tcp,
    make_commkey,
    pack_attendance,
    pack_event,
    pack_sizes,
    pack_user,
)
from edgelink.lifecycle import Service

__all__ = ["ZkDevice", "ZkFault", "ZkSimulator", "run_zk_simulator"]

logger = logging.getLogger(__name__)

#: A table buffer at most this long is sent at once as CMD_DATA (no chunks, no free).
DIRECT_LIMIT: Final = 1024
#: Bytes of table data per CMD_DATA packet over UDP (one datagram each).
UDP_DATA: Final = 1024
#: The first attendance record's time in generated data.
FIRST_PUNCH: Final = datetime(2026, 1, 5, 8, 0, 0)


class ZkFault(enum.StrEnum):
    """What the simulated device does wrong."""

    REFUSE = "refuse"
    SILENCE = "silence"
    DROP_MID_REPLY = "drop_mid_reply"
    WRONG_SESSION = "wrong_session"


class ZkDevice:
    """The state of one simulated terminal: identity, comm key, clock, tables.

    Args:
        comm_key: The device password (0: none).
        user_count: Users generated (uid 1..N, user id "1".."N").
        record_count: Attendance records generated, 5 minutes apart.
        user_record_size: 72 (ZK8 firmware) or 28 (ZK6).
        attendance_record_size: 40, 16 or 8.
        serial_number, firmware, platform, device_name, mac: what the device tells.
    """

    def __init__(
        self,
        *,
        comm_key: int = 0,
        user_count: int = 10,
        record_count: int = 100,
        user_record_size: int = 72,
        attendance_record_size: int = 40,
        serial_number: str = "SIM0000000001",
        firmware: str = "Ver 6.60 Apr 28 2017",
        platform: str = "ZEM560_TFT",
        device_name: str = "K40",
        mac: str = "00:17:61:00:00:01",
    ) -> None:
        self.comm_key = comm_key
        self.user_record_size = user_record_size
        self.attendance_record_size = attendance_record_size
        self.firmware = firmware
        self.options: dict[str, str] = {
            "~SerialNumber": serial_number,
            "~Platform": platform,
            "~DeviceName": device_name,
            "MAC": mac,
            "~ZKFPVersion": "10",
            "~ExtendFmt": "1" if user_record_size == 72 else "0",
        }
        self.users: list[User] = [
            User(i, str(i), f"User {i}", 0, "", "1", 1000 + i) for i in range(1, user_count + 1)
        ]
        self.attendance: list[Attendance] = [
            Attendance(
                str(i % max(user_count, 1) + 1),
                FIRST_PUNCH + timedelta(minutes=5 * i),
                1,
                i % 2,
                i % max(user_count, 1) + 1,
            )
            for i in range(record_count)
        ]
        self.enabled = True
        self._clock_offset = timedelta()
        self._tables: dict[int, tuple[int, bytes]] = {}

    @property
    def serial_number(self) -> str:
        """The serial number (``~SerialNumber``)."""
        return self.options["~SerialNumber"]

    def now(self) -> datetime:
        """The device's clock (the host's, moved by ``CMD_SET_TIME``), to the second."""
        return (datetime.now() + self._clock_offset).replace(microsecond=0)

    def set_time(self, when: datetime) -> None:
        """Set the device's clock."""
        self._clock_offset = when - datetime.now()

    def sizes(self) -> Sizes:
        """The answer to ``CMD_GET_FREE_SIZES``."""
        return Sizes(
            users=len(self.users),
            records=len(self.attendance),
            users_cap=max(3000, len(self.users)),
            records_cap=max(100_000, len(self.attendance)),
            fingers_cap=3000,
        )

    def table(self, command: int, fct: int) -> bytes | None:
        """The device buffer of a table: its size in bytes, then the records; None if unknown.

        Kept until the table's length changes (a device holds its tables as
        bytes too), so a benchmark of the reader does not measure the packing.
        """
        rows: list[User] | list[Attendance]
        if command == Command.USERTEMP_RRQ and fct == FCT_USER:
            rows = self.users
        elif command == Command.ATTLOG_RRQ:
            rows = self.attendance
        else:
            return None
        cached = self._tables.get(command)
        if cached is not None and cached[0] == len(rows):
            return cached[1]
        if command == Command.ATTLOG_RRQ:
            size = self.attendance_record_size
            body = b"".join(pack_attendance(a, size) for a in self.attendance)
        else:
            body = b"".join(pack_user(u, self.user_record_size) for u in self.users)
        table = struct.pack("<I", len(body)) + body
        self._tables[command] = (len(rows), table)
        return table


class _Session:
    """One client's session with the simulated device; its link is TCP or UDP (subclasses)."""

    def __init__(self, sim: ZkSimulator) -> None:
        self._sim = sim
        self.session_id = 0
        self.authenticated = False
        self.events = 0
        self._buffer: bytes | None = None

    def is_open(self) -> bool:
        """True while packets can be sent to the client."""
        raise NotImplementedError

    def emit(self, packet: bytes) -> None:
        """Send one packet as the link carries it."""
        raise NotImplementedError

    def close(self) -> None:
        """End the link (a TCP reset; a UDP client is forgotten)."""
        raise NotImplementedError

    def emit_broken(self, packet: bytes) -> None:
        """Send part of ``packet`` and end the link (the drop-mid-reply fault)."""
        raise NotImplementedError

    def end(self) -> None:
        """End the session politely (after ``CMD_EXIT``): what was sent still arrives."""
        self.close()

    def send(
        self, command: int, reply_id: int, data: bytes = b"", session: int | None = None
    ) -> None:
        if not self.is_open():
            return
        sid = self.session_id if session is None else session
        if self._sim.fault is ZkFault.WRONG_SESSION:
            sid = (sid + 1) & 0xFFFF
        packet = encode_packet(command, sid, reply_id, data)
        delay = self._sim.reply_delay
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._emit_late, packet)
        else:
            self.emit(packet)

    def _emit_late(self, packet: bytes) -> None:
        if self.is_open():
            self.emit(packet)

    def send_data(self, reply_id: int, chunk: bytes) -> None:
        """Send a chunk as CMD_DATA (one packet over TCP)."""
        self.send(Command.DATA, reply_id, chunk)

    def _handle(self, packet: Packet) -> None:
        sim = self._sim
        device = sim.device
        cmd, rid = packet.command, packet.reply_id
        sim.commands[cmd] += 1
        if cmd == Command.ACK_OK:  # a client acknowledging an event
            sim.events_acked += 1
            return
        if sim.fault is ZkFault.SILENCE:
            return
        if cmd == Command.CONNECT:
            self.session_id = secrets.randbelow(0xFFFE) + 1
            sim.sessions_opened += 1
            self.authenticated = device.comm_key == 0
            self.send(Command.ACK_OK if self.authenticated else Command.ACK_UNAUTH, rid)
            return
        if self.session_id == 0 or packet.session_id != self.session_id:
            self.send(Command.ACK_UNAUTH, rid)
            return
        if cmd == Command.AUTH:
            data = packet.data
            ticks = data[2] if len(data) == 4 else 50
            if len(data) == 4 and data == make_commkey(device.comm_key, self.session_id, ticks):
                self.authenticated = True
                self.send(Command.ACK_OK, rid)
            else:
                sim.auth_failures += 1
                self.send(Command.ACK_UNAUTH, rid)
            return
        if not self.authenticated:
            self.send(Command.ACK_UNAUTH, rid)
            return
        self._command(packet.command, rid, packet.data)

    def _command(self, cmd: int, rid: int, data: bytes) -> None:
        sim = self._sim
        device = sim.device
        ok = Command.ACK_OK
        if cmd == Command.EXIT:
            self.send(ok, rid)
            self.end()
        elif cmd in (Command.ENABLEDEVICE, Command.DISABLEDEVICE):
            device.enabled = cmd == Command.ENABLEDEVICE
            self.send(ok, rid)
        elif cmd == Command.GET_VERSION:
            self.send(ok, rid, device.firmware.encode() + b"\0")
        elif cmd == Command.OPTIONS_RRQ:
            key = data.split(b"\0", 1)[0].decode("ascii", "replace")
            value = device.options.get(key)
            if value is None:
                self.send(Command.ACK_ERROR, rid)
            else:
                self.send(ok, rid, f"{key}={value}".encode() + b"\0")
        elif cmd == Command.GET_FREE_SIZES:
            self.send(ok, rid, pack_sizes(device.sizes()))
        elif cmd == Command.GET_TIME:
            self.send(ok, rid, struct.pack("<I", encode_time(device.now())))
        elif cmd == Command.SET_TIME:
            try:
                device.set_time(decode_time(struct.unpack("<I", data[:4])[0]))
            except (ValueError, struct.error):
                self.send(Command.ACK_ERROR, rid)
            else:
                self.send(ok, rid)
        elif cmd == Command.REG_EVENT:
            self.events = struct.unpack("<I", data[:4])[0] if len(data) >= 4 else 0
            self.send(ok, rid)
        elif cmd == Command.DATA_WRRQ:
            self._prepare(rid, data)
        elif cmd == Command.DATA_RDY:
            self._read_chunk(rid, data)
        elif cmd == Command.FREE_DATA:
            self._buffer = None
            self.send(ok, rid)
        else:
            self.send(Command.ACK_UNKNOWN, rid)

    def _prepare(self, rid: int, data: bytes) -> None:
        if len(data) < 11:
            self.send(Command.ACK_ERROR, rid)
            return
        _one, command, fct, _ext = struct.unpack("<bhii", data[:11])
        table = self._sim.device.table(command, fct)
        if table is None:
            self.send(Command.ACK_ERROR, rid)
        elif len(table) <= DIRECT_LIMIT:
            self.send(Command.DATA, rid, table)
        else:
            self._buffer = table
            self.send(Command.ACK_OK, rid, b"\0" + struct.pack("<I", len(table)) + bytes(4))

    def _read_chunk(self, rid: int, data: bytes) -> None:
        buffer = self._buffer
        if buffer is None or len(data) < 8:
            self.send(Command.ACK_ERROR, rid)
            return
        start, size = struct.unpack("<ii", data[:8])
        if start < 0 or not 0 < size <= MAX_CHUNK or start + size > len(buffer):
            self.send(Command.ACK_ERROR, rid)
            return
        chunk = buffer[start : start + size]
        self.send(Command.PREPARE_DATA, rid, struct.pack("<II", len(chunk), 0))
        sim = self._sim
        if sim.fault is ZkFault.DROP_MID_REPLY:
            sim.fault = None
            self.emit_broken(encode_packet(Command.DATA, self.session_id, rid, chunk))
            return
        self.send_data(rid, chunk)
        self.send(Command.ACK_OK, rid)


class _TcpSession(_Session, asyncio.Protocol):
    """A session over one TCP link (each packet wrapped in the TCP header)."""

    def __init__(self, sim: ZkSimulator) -> None:
        super().__init__(sim)
        self._deframer = TcpDeframer()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's is no asyncio.Transport subclass.
        self._transport = cast(asyncio.Transport, transport)
        sim = self._sim
        sim.accepted += 1
        if sim.fault is ZkFault.REFUSE:
            self._transport.abort()
            return
        sim._sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._sim._sessions.discard(self)
        self._transport = None

    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def emit(self, packet: bytes) -> None:
        if self._transport is not None:
            self._transport.write(frame_tcp(packet))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def end(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def emit_broken(self, packet: bytes) -> None:
        frame = frame_tcp(packet)
        if self._transport is not None:
            self._transport.write(frame[: len(frame) // 2])
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            packets = self._deframer.feed(data)
        except FrameError as exc:
            logger.debug("zk sim: %s; closing the link", exc)
            self.close()
            return
        for raw in packets:
            if self._transport is None:
                return
            self._handle(decode_packet(raw))


class _UdpSession(_Session):
    """A session with one UDP client address (one packet per datagram, no wrapper)."""

    def __init__(self, sim: ZkSimulator, endpoint: _UdpEndpoint, addr: Any) -> None:
        super().__init__(sim)
        self._endpoint = endpoint
        self.addr = addr

    def is_open(self) -> bool:
        return self._endpoint.sessions.get(self.addr) is self and self._endpoint.is_open()

    def emit(self, packet: bytes) -> None:
        self._endpoint.sendto(packet, self.addr)

    def close(self) -> None:
        if self._endpoint.sessions.get(self.addr) is self:
            del self._endpoint.sessions[self.addr]
        self._sim._sessions.discard(self)

    def emit_broken(self, packet: bytes) -> None:
        self.close()  # the datagram is lost, and the device forgets the client

    def send_data(self, reply_id: int, chunk: bytes) -> None:
        """Send a chunk as CMD_DATA packets of at most `UDP_DATA` bytes."""
        for start in range(0, len(chunk), UDP_DATA):
            self.send(Command.DATA, reply_id, chunk[start : start + UDP_DATA])


class _UdpEndpoint(asyncio.DatagramProtocol):
    """The device's UDP port: a session per client address."""

    def __init__(self, sim: ZkSimulator) -> None:
        self._sim = sim
        self._transport: asyncio.DatagramTransport | None = None
        self.sessions: dict[Any, _UdpSession] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport is no DatagramTransport subclass.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for session in list(self.sessions.values()):
            session.close()
        if not self.closed.done():
            self.closed.set_result(None)

    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def sendto(self, packet: bytes, addr: Any) -> None:
        if self._transport is not None:
            self._transport.sendto(packet, addr)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        sim = self._sim
        try:
            packet = decode_packet(data)
        except FrameError:
            return
        session = self.sessions.get(addr)
        if session is None or packet.command == Command.CONNECT:
            if sim.fault is ZkFault.REFUSE:
                return
            if session is not None:
                session.close()
            session = _UdpSession(sim, self, addr)
            self.sessions[addr] = session
            sim._sessions.add(session)
            sim.accepted += 1
        session._handle(packet)


class ZkSimulator(Service):
    """A ZKTeco terminal listening on TCP and UDP (4370 on a real one; any port here).

    Args:
        device: The device's state (a default `ZkDevice` if None).
        host: The address to listen on.
        port: The port, 0 for an ephemeral one (kept across `restart`).
    """

    def __init__(
        self, *, device: ZkDevice | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.device = device if device is not None else ZkDevice()
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._udp: _UdpEndpoint | None = None
        self._sessions: set[_Session] = set()
        #: What the device does wrong (None: nothing).
        self.fault: ZkFault | None = None
        #: Seconds every answer is held back (a slow or busy terminal).
        self.reply_delay = 0.0
        self.accepted = 0
        self.sessions_opened = 0
        self.auth_failures = 0
        self.events_acked = 0
        self.commands: Counter[int] = Counter()

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return (
            f"<ZkSimulator {self.host}:{self._port} {state} links={self.connections} "
            f"fault={self.fault}>"
        )

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            RuntimeError: if never started and given port 0.
        """
        if self._port == 0:
            raise RuntimeError("ZkSimulator has no port yet: call start() first")
        return self._port

    @property
    def connections(self) -> int:
        """Client links open now (TCP links and UDP clients with a session)."""
        return len(self._sessions)

    def count(self, command: Command) -> int:
        """How many packets of ``command`` the device received."""
        return self.commands[command]

    async def start(self) -> None:
        """Listen (on the same port again after a `stop`). No-op if running."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _TcpSession(self), self.host, self._port, reuse_address=True
        )
        self._port = server.sockets[0].getsockname()[1]
        try:
            # A terminal answers on UDP at the same port number.
            _, endpoint = await loop.create_datagram_endpoint(
                lambda: _UdpEndpoint(self), local_addr=(self.host, self._port)
            )
        except OSError:
            server.close()
            raise
        self._server, self._udp = server, endpoint
        self._arm_leak_warning()

    async def stop(self) -> None:
        """Stop listening and reset every client link. Idempotent."""
        server, self._server = self._server, None
        udp, self._udp = self._udp, None
        if server is not None:
            server.close()
        if udp is not None:
            udp.close()
        for session in list(self._sessions):
            session.close()
        for _ in range(3):
            if not self._sessions:
                break
            await asyncio.sleep(0)
        if server is not None:
            await server.wait_closed()
        if udp is not None:
            await udp.closed
        self._disarm_leak_warning()

    async def restart(self) -> None:
        """Stop, then listen again on the same port (the device keeps its state)."""
        await self.stop()
        await self.start()

    def drop_links(self) -> None:
        """Reset every client link (the device rebooted its network)."""
        for session in list(self._sessions):
            session.close()

    def push_attendance(
        self, user_id: str, *, status: int = 1, punch: int = 0, when: datetime | None = None
    ) -> int:
        """Record a punch and send it as an event to every session registered for it.

        Returns:
            The number of sessions it was sent to.
        """
        uid = int(user_id) if user_id.isdigit() else 0
        record = Attendance(user_id, when or self.device.now(), status, punch, uid)
        self.device.attendance.append(record)
        sent = 0
        payload = pack_event(record)
        for session in list(self._sessions):
            if session.authenticated and session.events & EF_ATTLOG:
                # The event code travels in the session id field; reply id 0.
                session.send(Command.REG_EVENT, 0, payload, session=EF_ATTLOG)
                sent += 1
        return sent


async def run_zk_simulator(
    port: int = 4370,
    host: str = "127.0.0.1",
    *,
    comm_key: int = 0,
    users: int = 10,
    records: int = 100,
    event_interval: float = 0.0,
) -> None:
    """Run one simulated terminal until cancelled; punch every ``event_interval`` s if > 0."""
    device = ZkDevice(comm_key=comm_key, user_count=users, record_count=records)
    async with ZkSimulator(device=device, host=host, port=port) as sim:
        print(f"zkteco simulator on {host}:{sim.port}", flush=True)
        n = 0
        while True:
            if event_interval > 0:
                await asyncio.sleep(event_interval)
                n += 1
                sim.push_attendance(str(n % max(users, 1) + 1))
            else:
                await asyncio.Event().wait()
