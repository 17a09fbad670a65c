"""The ZK protocol of ZKTeco attendance terminals: packets, checksum, comm key, time, records.

Pure (no I/O): the ``zkteco`` driver and the ZK device simulator
(`edgelink.sim.zkteco`) both speak through this module, so the two ends can
only disagree where a test shows it.

What is here follows the public descriptions of the protocol (ZKTeco's
"Communication Protocol SDK" notes, and the open-source pyzk client,
``zk/base.py`` and ``zk/const.py``, read for understanding, not copied):

- A packet is an 8-byte header, four little-endian 16-bit words (command,
  checksum, session id, reply id), then the command's data.
- Over TCP every packet is wrapped: ``50 50 82 7d`` then the packet's length
  as a little-endian 32-bit number (`TCP_MAGIC`, `frame_tcp`).
- The checksum is the ones'-complement style sum of the packet's 16-bit
  words with the checksum field zero (`checksum`).
- The client opens a session with ``CMD_CONNECT``; the device answers with
  the session id in the header (``CMD_ACK_OK``, or ``CMD_ACK_UNAUTH`` when a
  comm key is set, after which the client sends ``CMD_AUTH`` with the key
  scrambled by `make_commkey`).
- Times are seconds counted in months of 31 days from 2000 (`encode_time`);
  real-time events carry six bytes instead (`encode_timehex`).
- Tables (users, attendance) are read through a device-side buffer: prepare
  (``CMD_DATA_WRRQ``), read chunks (``CMD_DATA_RDY``, answered by
  ``CMD_PREPARE_DATA`` + ``CMD_DATA`` + ``CMD_ACK_OK``), free
  (``CMD_FREE_DATA``). The buffer starts with the table's size in bytes, then
  fixed-size records: users of 28 (ZK6) or 72 bytes (ZK8), attendance records
  of 8, 16 or 40 bytes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final

__all__ = [
    "ATTENDANCE_RECORD_SIZES",
    "EF_ATTLOG",
    "FCT_USER",
    "HEADER_SIZE",
    "MAX_CHUNK",
    "MAX_PACKET",
    "TCP_MAGIC",
    "USER_RECORD_SIZES",
    "USHRT_MAX",
    "Attendance",
    "Command",
    "FrameError",
    "Packet",
    "RecordSplitter",
    "Sizes",
    "TcpDeframer",
    "User",
    "checksum",
    "decode_packet",
    "decode_time",
    "decode_timehex",
    "encode_packet",
    "encode_time",
    "encode_timehex",
    "frame_tcp",
    "make_commkey",
    "option_value",
    "pack_attendance",
    "pack_event",
    "pack_sizes",
    "pack_user",
    "unpack_attendance",
    "unpack_event",
    "unpack_sizes",
    "unpack_user",
]

USHRT_MAX: Final = 65535
HEADER_SIZE: Final = 8
#: The TCP wrapper's first four bytes (0x5050, 0x7D82 as little-endian words).
TCP_MAGIC: Final = b"\x50\x50\x82\x7d"
#: The largest packet accepted (header + data): a chunk of `MAX_CHUNK` and room to spare.
MAX_PACKET: Final = 0x10010
#: The largest chunk read from a device buffer over TCP (below 0x10008, as clients use).
MAX_CHUNK: Final = 0xFFC0
#: Real-time event flag: attendance verified.
EF_ATTLOG: Final = 1
#: The user table's function code for a buffered read.
FCT_USER: Final = 5
USER_RECORD_SIZES: Final = (28, 72)
ATTENDANCE_RECORD_SIZES: Final = (8, 16, 40)

_HEADER = struct.Struct("<4H")
_TCP_TOP = struct.Struct("<4sI")


class Command(enum.IntEnum):
    """Command and reply codes (the numbers every ZK client and device agree on)."""

    USERTEMP_RRQ = 9
    OPTIONS_RRQ = 11
    ATTLOG_RRQ = 13
    GET_FREE_SIZES = 50
    GET_TIME = 201
    SET_TIME = 202
    REG_EVENT = 500
    CONNECT = 1000
    EXIT = 1001
    ENABLEDEVICE = 1002
    DISABLEDEVICE = 1003
    GET_VERSION = 1100
    AUTH = 1102
    PREPARE_DATA = 1500
    DATA = 1501
    FREE_DATA = 1502
    DATA_WRRQ = 1503
    DATA_RDY = 1504
    ACK_OK = 2000
    ACK_ERROR = 2001
    ACK_DATA = 2002
    ACK_RETRY = 2003
    ACK_REPEAT = 2004
    ACK_UNAUTH = 2005
    ACK_ERROR_DATA = 0xFFFB
    ACK_ERROR_INIT = 0xFFFC
    ACK_ERROR_CMD = 0xFFFD
    ACK_UNKNOWN = 0xFFFF


def command_name(code: int) -> str:
    """Return ``CMD_<NAME>`` for a known code, else the number."""
    try:
        return f"CMD_{Command(code).name}"
    except ValueError:
        return str(code)


class FrameError(ValueError):
    """The byte stream is not ZK TCP framing (wrong magic, impossible length)."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One ZK packet: the header's four words and the data."""

    command: int
    checksum: int
    session_id: int
    reply_id: int
    data: bytes = b""

    def __repr__(self) -> str:
        return (
            f"<Packet {command_name(self.command)} session={self.session_id} "
            f"reply={self.reply_id} data={len(self.data)}B>"
        )


def checksum(packet: bytes | bytearray) -> int:
    """Return the checksum of ``packet`` (header with a zero checksum field, then data).

    The 16-bit little-endian words are summed, a sum above 0xFFFF wraps around
    by subtracting 0xFFFF (end-around carry), an odd last byte is added as is,
    and the result is complemented into 0..0xFFFE the way the devices' SDK
    does (``~sum`` brought back into range by adding 0xFFFF).
    """
    total = 0
    end = len(packet) - (len(packet) & 1)
    for (word,) in struct.iter_unpack("<H", packet[:end]):
        total += word
        if total > USHRT_MAX:
            total -= USHRT_MAX
    if end < len(packet):
        total += packet[-1]
    while total > USHRT_MAX:
        total -= USHRT_MAX
    result = ~total
    while result < 0:
        result += USHRT_MAX
    return result


def encode_packet(command: int, session_id: int, reply_id: int, data: bytes = b"") -> bytes:
    """Return the packet (header + data) with its checksum filled in."""
    unsummed = _HEADER.pack(command, 0, session_id, reply_id) + data
    return _HEADER.pack(command, checksum(unsummed), session_id, reply_id) + data


def decode_packet(raw: bytes) -> Packet:
    """Split a packet into header and data.

    Raises:
        FrameError: if ``raw`` is shorter than a header.
    """
    if len(raw) < HEADER_SIZE:
        raise FrameError(f"packet of {len(raw)} bytes is shorter than the 8-byte header")
    command, check, session_id, reply_id = _HEADER.unpack_from(raw)
    return Packet(command, check, session_id, reply_id, bytes(raw[HEADER_SIZE:]))


def packet_checksum_ok(raw: bytes) -> bool:
    """Return True if the checksum in ``raw``'s header matches its content."""
    if len(raw) < HEADER_SIZE:
        return False
    stated = struct.unpack_from("<H", raw, 2)[0]
    return bool(checksum(raw[:2] + b"\0\0" + raw[4:]) == stated)


def frame_tcp(packet: bytes) -> bytes:
    """Wrap a packet for TCP: magic, 32-bit length, packet."""
    return _TCP_TOP.pack(TCP_MAGIC, len(packet)) + packet


class TcpDeframer:
    """Cuts a TCP byte stream into packets. Holds at most one partial packet.

    Raises `FrameError` from `feed` for a wrong magic or a length outside
    ``HEADER_SIZE..max_packet``; after that the stream cannot be trusted.
    """

    __slots__ = ("_buffer", "max_packet")

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self._buffer = bytearray()
        self.max_packet = max_packet

    @property
    def pending(self) -> int:
        """Bytes of a packet not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the packets (header + data) they complete."""
        buffer = self._buffer
        buffer += data
        packets: list[bytes] = []
        start = 0
        while len(buffer) - start >= _TCP_TOP.size:
            magic, length = _TCP_TOP.unpack_from(buffer, start)
            if magic != TCP_MAGIC:
                raise FrameError(f"not a ZK TCP frame: starts {bytes(buffer[start : start + 4])!r}")
            if not HEADER_SIZE <= length <= self.max_packet:
                raise FrameError(f"ZK TCP frame length {length} outside 8..{self.max_packet}")
            end = start + _TCP_TOP.size + length
            if len(buffer) < end:
                break
            packets.append(bytes(buffer[start + _TCP_TOP.size : end]))
            start = end
        if start:
            del buffer[:start]
        return packets


def make_commkey(key: int, session_id: int, ticks: int = 50) -> bytes:
    """Scramble a comm key (the device password, a number) for ``CMD_AUTH``.

    The key's 32 bits are reversed, the session id added, the four bytes
    XORed with ``ZKSO``, the two 16-bit halves swapped, and the bytes XORed
    with ``ticks`` (the third byte replaced by ``ticks``), as the devices'
    SDK (``MakeKey``) does.
    """
    reversed_bits = int(f"{key & 0xFFFFFFFF:032b}"[::-1], 2)
    k = (reversed_bits + session_id) & 0xFFFFFFFF
    b = bytearray(struct.pack("<I", k))
    for i, c in enumerate(b"ZKSO"):
        b[i] ^= c
    b = b[2:4] + b[0:2]
    t = ticks & 0xFF
    return bytes((b[0] ^ t, b[1] ^ t, t, b[3] ^ t))


def encode_time(t: datetime) -> int:
    """Encode a time as the device counts it: seconds in 31-day months since 2000."""
    days = ((t.year % 100) * 12 * 31) + ((t.month - 1) * 31) + t.day - 1
    return days * 86400 + (t.hour * 60 + t.minute) * 60 + t.second


def decode_time(value: int) -> datetime:
    """Decode `encode_time`'s number.

    Raises:
        ValueError: for a number that is no real date (day 31 of a 30-day month).
    """
    value, second = divmod(value, 60)
    value, minute = divmod(value, 60)
    value, hour = divmod(value, 24)
    value, day = divmod(value, 31)
    year, month = divmod(value, 12)
    return datetime(year + 2000, month + 1, day + 1, hour, minute, second)


def encode_timehex(t: datetime) -> bytes:
    """Encode a time as six bytes (year - 2000, month, day, hour, minute, second)."""
    return bytes((t.year - 2000, t.month, t.day, t.hour, t.minute, t.second))


def decode_timehex(raw: bytes) -> datetime:
    """Decode `encode_timehex`'s six bytes.

    Raises:
        ValueError: for bytes that are no real date.
    """
    year, month, day, hour, minute, second = raw[:6]
    return datetime(year + 2000, month, day, hour, minute, second)


def option_value(data: bytes) -> str:
    """Return the value of a ``CMD_OPTIONS_RRQ`` answer (``~SerialNumber=ABC`` -> ``ABC``)."""
    text = data.split(b"\0", 1)[0]
    return text.split(b"=", 1)[-1].decode("utf-8", "replace")


def _text(raw: bytes, encoding: str = "utf-8") -> str:
    return raw.split(b"\0", 1)[0].decode(encoding, "replace")


@dataclass(frozen=True, slots=True)
class User:
    """One row of the device's user table."""

    uid: int
    user_id: str
    name: str = ""
    privilege: int = 0
    password: str = ""
    group_id: str = ""
    card: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The user as a JSON-friendly dict (the password left out)."""
        data = asdict(self)
        del data["password"]
        return data


_USER28 = struct.Struct("<HB5s8sIxBhI")
_USER72 = struct.Struct("<HB8s24sIx7sx24s")


def pack_user(user: User, size: int) -> bytes:
    """Encode a user as a 28-byte (ZK6, numeric user id) or 72-byte (ZK8) record."""
    if size == 28:
        return _USER28.pack(
            user.uid,
            user.privilege,
            user.password.encode(),
            user.name.encode(),
            user.card,
            int(user.group_id or 0),
            0,
            int(user.user_id),
        )
    if size == 72:
        return _USER72.pack(
            user.uid,
            user.privilege,
            user.password.encode(),
            user.name.encode(),
            user.card,
            user.group_id.encode(),
            user.user_id.encode(),
        )
    raise ValueError(f"a user record is 28 or 72 bytes, not {size}")


def unpack_user(raw: bytes, encoding: str = "utf-8") -> User:
    """Decode a 28- or 72-byte user record (the size says which)."""
    if len(raw) == 28:
        uid, privilege, password, name, card, group, _tz, user_id = _USER28.unpack(raw)
        return User(
            uid, str(user_id), _text(name, encoding), privilege, _text(password), str(group), card
        )
    if len(raw) == 72:
        uid, privilege, password, name, card, group, user_id = _USER72.unpack(raw)
        return User(
            uid,
            _text(user_id, encoding),
            _text(name, encoding),
            privilege,
            _text(password),
            _text(group),
            card,
        )
    raise ValueError(f"a user record is 28 or 72 bytes, not {len(raw)}")


@dataclass(frozen=True, slots=True)
class Attendance:
    """One attendance record (a punch): who, when, how verified, which punch."""

    user_id: str
    timestamp: datetime
    status: int = 1
    punch: int = 0
    uid: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-friendly dict (the time in ISO 8601)."""
        return {
            "user_id": self.user_id,
            "timestamp": self.timestamp.isoformat(),
            "status": self.status,
            "punch": self.punch,
            "uid": self.uid,
        }


_ATT8 = struct.Struct("<HBIB")
_ATT16 = struct.Struct("<IIBB2sI")
_ATT40 = struct.Struct("<H24sBIB8s")


def pack_attendance(record: Attendance, size: int) -> bytes:
    """Encode an attendance record of 8, 16 or 40 bytes."""
    when = encode_time(record.timestamp)
    if size == 8:
        return _ATT8.pack(record.uid, record.status, when, record.punch)
    if size == 16:
        return _ATT16.pack(int(record.user_id), when, record.status, record.punch, b"", 0)
    if size == 40:
        return _ATT40.pack(
            record.uid, record.user_id.encode(), record.status, when, record.punch, b""
        )
    raise ValueError(f"an attendance record is 8, 16 or 40 bytes, not {size}")


def unpack_attendance(raw: bytes) -> Attendance:
    """Decode an attendance record of 8, 16 or 40 bytes (the size says which).

    Raises:
        ValueError: for another size or a time that is no real date.
    """
    if len(raw) == 8:
        uid, status, when, punch = _ATT8.unpack(raw)
        return Attendance(str(uid), decode_time(when), status, punch, uid)
    if len(raw) == 16:
        user_id, when, status, punch, _reserved, _workcode = _ATT16.unpack(raw)
        return Attendance(str(user_id), decode_time(when), status, punch, 0)
    if len(raw) == 40:
        uid, user_id, status, when, punch, _space = _ATT40.unpack(raw)
        return Attendance(_text(user_id), decode_time(when), status, punch, uid)
    raise ValueError(f"an attendance record is 8, 16 or 40 bytes, not {len(raw)}")


_EVENT36 = struct.Struct("<24sBB6sI")
_EVENT12 = struct.Struct("<IBB6s")


def pack_event(record: Attendance) -> bytes:
    """Encode a real-time attendance event (the 36-byte form with a text user id)."""
    return _EVENT36.pack(
        record.user_id.encode(), record.status, record.punch, encode_timehex(record.timestamp), 0
    )


def unpack_event(raw: bytes) -> Attendance:
    """Decode a real-time attendance event of 12 (numeric user id) or 36 bytes.

    Raises:
        ValueError: for another size or a time that is no real date.
    """
    if len(raw) == 36:
        user_id, status, punch, when, _reserved = _EVENT36.unpack(raw)
        return Attendance(_text(user_id), decode_timehex(when), status, punch)
    if len(raw) == 12:
        number, status, punch, when = _EVENT12.unpack(raw)
        return Attendance(str(number), decode_timehex(when), status, punch)
    raise ValueError(f"an attendance event is 12 or 36 bytes, not {len(raw)}")


@dataclass(frozen=True, slots=True)
class Sizes:
    """What ``CMD_GET_FREE_SIZES`` tells: counts and capacities of the tables."""

    users: int = 0
    fingers: int = 0
    records: int = 0
    cards: int = 0
    fingers_cap: int = 0
    users_cap: int = 0
    records_cap: int = 0

    def as_dict(self) -> dict[str, int]:
        """The sizes as a dict."""
        return asdict(self)


_SIZES = struct.Struct("<20i")


def pack_sizes(sizes: Sizes) -> bytes:
    """Encode the 80-byte answer to ``CMD_GET_FREE_SIZES`` (and 12 bytes of face counts)."""
    fields = [0] * 20
    fields[4], fields[6], fields[8], fields[12] = (
        sizes.users,
        sizes.fingers,
        sizes.records,
        sizes.cards,
    )
    fields[14], fields[15], fields[16] = sizes.fingers_cap, sizes.users_cap, sizes.records_cap
    fields[17] = sizes.fingers_cap - sizes.fingers
    fields[18] = sizes.users_cap - sizes.users
    fields[19] = sizes.records_cap - sizes.records
    return _SIZES.pack(*fields) + bytes(12)


def unpack_sizes(data: bytes) -> Sizes:
    """Decode the answer to ``CMD_GET_FREE_SIZES``.

    Raises:
        ValueError: if it is shorter than 80 bytes.
    """
    if len(data) < _SIZES.size:
        raise ValueError(f"free sizes answer of {len(data)} bytes, expected at least 80")
    f = _SIZES.unpack_from(data)
    return Sizes(f[4], f[6], f[8], f[12], f[14], f[15], f[16])


class RecordSplitter:
    """Cuts a device buffer, read chunk by chunk, into fixed-size records.

    The buffer starts with the table's size in bytes (32-bit); the record size
    is that divided by the row count the device reported, or, without a usable
    count, the first of ``sizes`` that divides it. Holds at most one partial
    record between chunks.

    Raises `ValueError` from `feed` when no record size fits.
    """

    __slots__ = ("_buffer", "_count", "_left", "_sizes", "record_size")

    def __init__(self, count: int, sizes: tuple[int, ...]) -> None:
        self._count = count
        self._sizes = sizes
        self._buffer = bytearray()
        self._left: int | None = None
        self.record_size = 0

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Add a chunk; yield the records it completes."""
        buffer = self._buffer
        buffer += chunk
        if self._left is None:
            if len(buffer) < 4:
                return
            (total,) = struct.unpack_from("<I", buffer)
            del buffer[:4]
            self._left = total
            self.record_size = self._pick(total)
        size = self.record_size
        if not size:
            buffer.clear()
            return
        start = 0
        while len(buffer) - start >= size and self._left >= size:
            yield bytes(buffer[start : start + size])
            start += size
            self._left -= size
        del buffer[:start]

    def _pick(self, total: int) -> int:
        if total == 0:
            return 0
        count = self._count
        if count > 0 and total % count == 0 and total // count in self._sizes:
            return total // count
        for size in reversed(self._sizes):
            if total % size == 0:
                return size
        raise ValueError(f"a table of {total} bytes fits no record size of {self._sizes}")
