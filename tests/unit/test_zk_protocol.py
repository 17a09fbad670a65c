"""The ZK protocol's pure parts against vectors worked out by hand from its public description.

The description followed is the one every ZK client implements (ZKTeco's SDK
notes as re-told by the open-source pyzk client, ``zk/base.py``: the
``__create_checksum``, ``make_commkey`` and ``__encode_time`` descriptions,
and ``zk/const.py`` for the command numbers). Each vector below shows its
arithmetic, so it checks the rule, not this implementation against itself.
"""

from __future__ import annotations

import struct
from datetime import datetime

import pytest

from edgelink.drivers.zk_protocol import (
    Attendance,
    Command,
    FrameError,
    RecordSplitter,
    Sizes,
    TcpDeframer,
    User,
    checksum,
    decode_packet,
    decode_time,
    decode_timehex,
    encode_packet,
    encode_time,
    encode_timehex,
    frame_tcp,
    make_commkey,
    option_value,
    pack_attendance,
    pack_event,
    pack_sizes,
    pack_user,
    packet_checksum_ok,
    unpack_attendance,
    unpack_event,
    unpack_sizes,
    unpack_user,
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # CMD_CONNECT header, all else zero: ~1000 brought into range = 65535 - 1001.
        (struct.pack("<4H", 1000, 0, 0, 0), 64534),
        # An odd byte is added as is: ~1 + 65535.
        (b"\x01", 65533),
        # The empty packet sums to zero, whose complement is 65534.
        (b"", 65534),
        # 0xFFFF + 1 passes 0xFFFF, so 0xFFFF is taken off (end-around carry): 1 -> ~1.
        (b"\xff\xff\x01\x00", 65533),
    ],
)
def test_checksum_vectors(data: bytes, expected: int) -> None:
    """Test that the checksum sums 16-bit words with end-around carry and complements."""
    assert checksum(data) == expected


def test_connect_packet_and_tcp_frame() -> None:
    """Test the bytes of CMD_CONNECT (session 0, reply 0) and its TCP wrapper."""
    packet = encode_packet(Command.CONNECT, 0, 0)
    assert packet == bytes.fromhex("e80316fc00000000")  # 1000, 64534, 0, 0
    assert packet_checksum_ok(packet)
    assert frame_tcp(packet) == bytes.fromhex("5050827d08000000") + packet
    parsed = decode_packet(packet + b"abc")
    assert (parsed.command, parsed.session_id, parsed.reply_id, parsed.data) == (1000, 0, 0, b"abc")


def test_deframer_joins_split_frames_and_refuses_garbage() -> None:
    """Test that frames split anywhere are rebuilt, and wrong magic or length is a FrameError."""
    frames = frame_tcp(encode_packet(Command.ACK_OK, 7, 1)) + frame_tcp(
        encode_packet(Command.DATA, 7, 2, b"x" * 100)
    )
    deframer = TcpDeframer()
    got = [p for i in range(len(frames)) for p in deframer.feed(frames[i : i + 1])]
    assert [decode_packet(p).command for p in got] == [Command.ACK_OK, Command.DATA]
    assert deframer.pending == 0
    with pytest.raises(FrameError, match="not a ZK TCP frame"):
        TcpDeframer().feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(FrameError, match="length 4 outside"):
        TcpDeframer().feed(bytes.fromhex("5050827d04000000"))
    with pytest.raises(FrameError, match="outside"):
        TcpDeframer(max_packet=64).feed(bytes.fromhex("5050827d") + struct.pack("<I", 65))


@pytest.mark.parametrize(
    ("key", "session", "expected"),
    [
        # 0 reversed is 0; bytes 00000000 ^ "ZKSO" = 5a4b534f; halves swapped 534f5a4b;
        # ^ 0x32 (ticks 50) with the third byte set to 0x32: 61 7d 32 79.
        (0, 0, "617d3279"),
        # 1234 = bits 10,7,6,4,1; reversed: bits 21,24,25,27,30 = 0x4b200000; + 0x1a2b =
        # 0x4b201a2b, bytes 2b1a204b ^ 5a4b534f = 71517304; swapped 73047151; ^ 0x32: 41363263.
        (1234, 0x1A2B, "41363263"),
    ],
)
def test_make_commkey_vectors(key: int, session: int, expected: str) -> None:
    """Test the comm key scrambling: bits reversed, session added, XOR ZKSO, halves swapped, ticks."""
    assert make_commkey(key, session).hex() == expected


def test_time_encoding_vectors() -> None:
    """Test the 31-day-month seconds count and the six-byte event time."""
    assert encode_time(datetime(2000, 1, 1)) == 0
    # (17*12*31 + 3*31 + 27) days * 86400 + 12:30:45 = 6444*86400 + 45045.
    when = datetime(2017, 4, 28, 12, 30, 45)
    assert encode_time(when) == 556_806_645
    assert decode_time(556_806_645) == when
    assert encode_timehex(when) == bytes((17, 4, 28, 12, 30, 45))
    assert decode_timehex(bytes((17, 4, 28, 12, 30, 45))) == when
    # Day index 30 of month index 3: April 31st, which no calendar has.
    with pytest.raises(ValueError, match="day is out of range"):
        decode_time(((21 * 12 + 3) * 31 + 30) * 86400)


@pytest.mark.parametrize("size", [28, 72])
def test_user_records_round_trip(size: int) -> None:
    """Test that 28- and 72-byte user records keep every field."""
    user = User(
        uid=7, user_id="1007", name="Ada", privilege=14, password="12", group_id="1", card=99
    )
    raw = pack_user(user, size)
    assert len(raw) == size
    assert unpack_user(raw) == user
    assert "password" not in user.as_dict()


@pytest.mark.parametrize("size", [8, 16, 40])
def test_attendance_records_round_trip(size: int) -> None:
    """Test that 8-, 16- and 40-byte attendance records decode what was encoded."""
    record = Attendance("42", datetime(2026, 3, 4, 5, 6, 7), status=1, punch=1, uid=42)
    got = unpack_attendance(pack_attendance(record, size))
    assert (got.user_id, got.timestamp, got.status, got.punch) == ("42", record.timestamp, 1, 1)


def test_events_sizes_and_options() -> None:
    """Test event, free-size and option decoding (the 80-byte sizes: fields 4, 8, 15, 16)."""
    record = Attendance("abc", datetime(2026, 1, 2, 3, 4, 5), status=15, punch=2)
    assert len(pack_event(record)) == 36
    assert unpack_event(pack_event(record)) == record
    assert unpack_event(struct.pack("<IBB6s", 5, 1, 0, bytes((26, 1, 2, 3, 4, 5)))).user_id == "5"
    sizes = Sizes(users=3, records=9, users_cap=100, records_cap=1000)
    raw = pack_sizes(sizes)
    assert struct.unpack_from("<20i", raw)[4::4][:3] == (3, 9, 0)
    assert unpack_sizes(raw) == sizes
    with pytest.raises(ValueError, match="at least 80"):
        unpack_sizes(b"\0" * 10)
    assert option_value(b"~SerialNumber=ABC123\0\0") == "ABC123"


def test_record_splitter_across_chunks() -> None:
    """Test that records split across chunk borders come out whole; size from the count."""
    body = b"".join(bytes([i]) * 40 for i in range(10))
    buffer = struct.pack("<I", len(body)) + body
    splitter = RecordSplitter(10, (8, 16, 40))
    records = [r for i in range(0, len(buffer), 7) for r in splitter.feed(buffer[i : i + 7])]
    assert records == [bytes([i]) * 40 for i in range(10)]
    assert splitter.record_size == 40
    # Without a count, the largest size that divides the table is taken.
    assert RecordSplitter(0, (28, 72))._pick(144) == 72
    with pytest.raises(ValueError, match="fits no record size"):
        list(RecordSplitter(0, (28, 72)).feed(struct.pack("<I", 30) + bytes(30)))
