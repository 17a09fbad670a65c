"""`BmsParser` (the base of every protocol) and `FrameBuffer` (streaming reassembly).

A parser is stateful, one per link: bytes go in with `BmsParser.feed`,
`Decoded` readings and errors come out. It never returns a wrong number: a
frame whose start, length, end byte or checksum does not hold is a
`ProtocolError` with the reason, and nothing of it is decoded.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final

from edgelink.bms.reading import BmsReading
from edgelink.errors import DeviceError, ProtocolError

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "GARBAGE_REPORT",
    "BmsParser",
    "Decoded",
    "DeviceMatch",
    "FrameBuffer",
    "FrameError",
]

#: Bytes a parser buffers while waiting for the rest of a frame (the longest
#: frame any supported protocol sends is well under 1 KiB).
DEFAULT_MAX_BUFFER: Final = 4096
#: Unreported garbage that is reported at the end of a feed without waiting
#: for a frame (a shorter run waits: its frame may be on its way).
GARBAGE_REPORT: Final = 32

#: What `BmsParser.feed` yields for a frame that is not valid.
FrameError = ProtocolError | DeviceError


@dataclass(frozen=True, slots=True)
class DeviceMatch:
    """How a BMS shows itself over BLE: name prefixes, service UUIDs, manufacturer ids."""

    name_prefixes: tuple[str, ...] = ()
    service_uuids: tuple[str, ...] = ()
    manufacturer_ids: tuple[int, ...] = ()

    def matches(
        self,
        name: str | None,
        service_uuids: Sequence[str] = (),
        manufacturer_ids: Sequence[int] = (),
    ) -> bool:
        """Return True if any of the advertised name, services or manufacturer ids fits."""
        if name and any(name.startswith(prefix) for prefix in self.name_prefixes):
            return True
        wanted = {u.lower() for u in self.service_uuids}
        if wanted & {u.lower() for u in service_uuids}:
            return True
        return bool(set(self.manufacturer_ids) & set(manufacturer_ids))


@dataclass(frozen=True, slots=True)
class BleGatt:
    """Where a BMS's UART bridge sits in its GATT table.

    Requests are written to ``write``; frames arrive as notifications of
    ``notify`` (both in ``service``).
    """

    service: str
    notify: str
    write: str


@dataclass(slots=True)
class Decoded:
    """One valid frame: its key (the request it answers) and what it carried."""

    key: int
    reading: BmsReading
    size: int


@dataclass(slots=True)
class FrameBuffer:
    """The bytes received and not yet a frame, bounded by ``max_buffer``.

    Counts what it throws away: ``garbage_bytes`` skipped while looking for a
    frame start (``pending_garbage`` of them not reported yet), ``overflows``
    when the buffer was cleared for being full.
    """

    max_buffer: int = DEFAULT_MAX_BUFFER
    data: bytearray = field(default_factory=bytearray)
    garbage_bytes: int = 0
    pending_garbage: int = 0
    overflows: int = 0

    def __len__(self) -> int:
        return len(self.data)

    def drop(self, count: int) -> None:
        """Throw away ``count`` bytes from the front as garbage."""
        del self.data[:count]
        self.garbage_bytes += count
        self.pending_garbage += count

    def skip_to(self, start: bytes) -> bool:
        """Drop the bytes before the next ``start`` as garbage; return whether one is buffered."""
        at = self.data.find(start)
        drop = len(self.data) if at < 0 else at
        if at < 0 and len(start) > 1:
            # Keep a trailing partial start marker (a two-byte marker cut in half).
            for keep in range(len(start) - 1, 0, -1):
                if self.data.endswith(start[:keep]):
                    drop -= keep
                    break
        if drop:
            self.drop(drop)
        return at >= 0

    def report_garbage(self, protocol: str, *, at_least: int = 1) -> list[FrameError]:
        """Return a `ProtocolError` for the unreported garbage if it is ``at_least`` bytes long.

        A parser reports it before the next frame, so a run of noise is one
        error however it was fed, and at the end of a feed once it is long
        (``GARBAGE_REPORT`` bytes), so a device that sends only noise is noticed.
        """
        count = self.pending_garbage
        if not count or count < at_least:
            return []
        self.pending_garbage = 0
        return [ProtocolError(f"{count} bytes of garbage before a {protocol} frame")]


class BmsParser(abc.ABC):
    """One BMS protocol: the requests to send, the device to look for, frames to readings.

    Subclasses set `name`, `match`, `baudrate` and implement `requests`,
    `_split` (reassembly) and `decode` (one verified frame to a reading).

    Example:
        parser = get_parser("jbd")
        for request in parser.requests():
            port.write(request)
        for item in parser.feed(port.read()):
            if isinstance(item, Decoded):
                print(item.reading.voltage)
            else:
                print("bad frame:", item)
    """

    #: The name in configs: ``"daly"``, ``"jbd"``, ``"victron"``.
    name: ClassVar[str]
    #: How the device advertises itself over BLE.
    match: ClassVar[DeviceMatch] = DeviceMatch()
    #: The UART speed the device uses out of the box.
    baudrate: ClassVar[int] = 9600
    #: The GATT characteristics of its BLE module; None: not read over a GATT link.
    gatt: ClassVar[BleGatt | None] = None

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self.buffer = FrameBuffer(max_buffer)
        #: Everything decoded so far, merged: the latest complete picture.
        self.state = BmsReading()
        self.frames_ok = 0
        self.frames_bad = 0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} ok={self.frames_ok} bad={self.frames_bad} "
            f"buffered={len(self.buffer)} garbage={self.buffer.garbage_bytes}>"
        )

    def requests(self) -> list[bytes]:
        """Return the frames to send for one poll cycle, in order (none: the device talks)."""
        return []

    def answer_key(self, request: bytes) -> int:
        """Return the `Decoded.key` of the answer to ``request`` (its data id or register)."""
        return request[2]

    def reset(self) -> None:
        """Forget buffered bytes (after a reconnect); keep the counters and the state."""
        self.buffer.data.clear()
        self.buffer.pending_garbage = 0

    def feed(self, data: bytes) -> list[Decoded | FrameError]:
        """Take received bytes; return each complete frame decoded, or why it is not valid.

        Garbage before a frame is reported once per run of skipped bytes. A
        buffer that fills without a complete frame is cleared and reported.
        """
        buf = self.buffer
        buf.data += data
        out: list[Decoded | FrameError] = []
        for item in self._split():
            if isinstance(item, bytes):
                try:
                    decoded = self.decode(item)
                except (ProtocolError, DeviceError) as exc:
                    self.frames_bad += 1
                    out.append(exc)
                    continue
                self.frames_ok += 1
                self.state.merge(decoded.reading)
                out.append(decoded)
            else:
                self.frames_bad += 1
                out.append(item)
        if len(buf.data) > buf.max_buffer:
            size = len(buf.data)
            buf.data.clear()
            buf.overflows += 1
            self.frames_bad += 1
            out.append(ProtocolError(f"{size} bytes buffered without a complete frame"))
        return out

    @abc.abstractmethod
    def _split(self) -> list[bytes | FrameError]:
        """Cut complete, checksum-verified frames off the front of ``self.buffer``."""

    @abc.abstractmethod
    def decode(self, frame: bytes) -> Decoded:
        """Decode one complete, verified frame.

        Raises:
            ProtocolError: if the content does not make sense (an unknown
                data id, a length that does not fit it, a cell number over 32).
            DeviceError: if the BMS answered with an error status.
        """
