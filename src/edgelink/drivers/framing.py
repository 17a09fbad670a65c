r"""Framing of a byte stream into messages: delimited lines or length-prefixed frames.

Used by the ``serial`` driver (and its config model), the serial device
simulator (`edgelink.sim.serial`) and the test kit's `SerialPeer`, so both
ends of a simulated link split the stream by the same rules. Public for that
reason; it imports no driver library. Pure: no I/O.

Two framings:

- ``line``: every message ends with ``delimiter`` (``\n`` by default). With the
  default delimiter a ``\r`` before it is dropped too, so CRLF devices work.
- ``length``: every message is a length prefix followed by that many payload
  bytes. ``length_prefix`` names the prefix: ``u8``, ``u16be`` (the default),
  ``u16le``, ``u32be`` or ``u32le`` — an unsigned integer of 1, 2 or 4 bytes,
  big- or little-endian, counting the payload bytes only (not itself). A zero
  prefix is an empty message. Example: ``b"\x00\x04PING"`` is the payload
  ``PING`` with ``u16be``.

A message longer than ``max_frame`` bytes (payload, without delimiter or
prefix) is an error: a peer that streams garbage cannot grow a buffer without
bound, and a length prefix announcing more than that is garbage too.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from edgelink.errors import ConfigError

__all__ = ["LENGTH_PREFIXES", "FrameDecoder", "FrameError", "Framing"]

#: Length prefix names and their struct formats.
LENGTH_PREFIXES: Final[Mapping[str, str]] = {
    "u8": ">B",
    "u16be": ">H",
    "u16le": "<H",
    "u32be": ">I",
    "u32le": "<I",
}

#: The default cap of one message, in payload bytes.
DEFAULT_MAX_FRAME: Final = 4096


class FrameError(ValueError):
    """The byte stream cannot be split into messages (overlong or impossible frame)."""


@dataclass(frozen=True, slots=True)
class Framing:
    r"""How a byte stream is cut into messages.

    Example:
        framing = Framing.from_config({"framing": "length", "length_prefix": "u16le"})
        wire = framing.encode(b"PING")           # b"\x04\x00PING"
        assert framing.decoder().feed(wire) == [b"PING"]

    Attributes:
        kind: ``line`` or ``length``.
        delimiter: The end of a ``line`` message.
        length_prefix: The prefix of a ``length`` message (a key of `LENGTH_PREFIXES`).
        max_frame: The longest payload accepted, in bytes.
    """

    kind: Literal["line", "length"] = "line"
    delimiter: bytes = b"\n"
    length_prefix: str = "u16be"
    max_frame: int = DEFAULT_MAX_FRAME

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, connection_id: str | None = None) -> Framing:
        """Read ``framing``, ``delimiter``, ``length_prefix`` and ``max_frame`` from a config.

        Raises:
            ConfigError: naming the key and the reason, for any invalid value.
        """

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(why, path=f"config.{key}", connection_id=connection_id)

        kind = config.get("framing", "line")
        if kind not in ("line", "length"):
            raise bad("framing", f"must be 'line' or 'length', got {kind!r}")
        delimiter = config.get("delimiter", "\n")
        if isinstance(delimiter, str):
            delimiter = delimiter.encode("utf-8")
        if not isinstance(delimiter, bytes) or not delimiter:
            raise bad("delimiter", f"must be a non-empty string, got {delimiter!r}")
        prefix = config.get("length_prefix", "u16be")
        if prefix not in LENGTH_PREFIXES:
            raise bad(
                "length_prefix", f"must be one of {', '.join(LENGTH_PREFIXES)}, got {prefix!r}"
            )
        prefix_max = (1 << (8 * struct.calcsize(LENGTH_PREFIXES[prefix]))) - 1
        default_max = min(DEFAULT_MAX_FRAME, prefix_max) if kind == "length" else DEFAULT_MAX_FRAME
        max_frame = config.get("max_frame", default_max)
        if isinstance(max_frame, bool) or not isinstance(max_frame, int) or max_frame < 1:
            raise bad("max_frame", f"must be a positive integer, got {max_frame!r}")
        if kind == "length" and max_frame > prefix_max:
            raise bad(
                "max_frame",
                f"{max_frame} does not fit the {prefix} length prefix (at most {prefix_max})",
            )
        return cls(kind, delimiter, prefix, max_frame)

    def encode(self, payload: bytes) -> bytes:
        """Frame one message for the wire.

        A ``line`` payload that already ends with the delimiter is sent as is.

        Raises:
            FrameError: if the payload is longer than ``max_frame``, or a ``line``
                payload contains the delimiter before its end.
        """
        if self.kind == "line":
            body = payload[: -len(self.delimiter)] if payload.endswith(self.delimiter) else payload
            if self.delimiter in body:
                raise FrameError(f"payload contains the delimiter {self.delimiter!r}: {body!r}")
            if len(body) > self.max_frame:
                raise FrameError(f"payload of {len(body)} bytes exceeds max_frame {self.max_frame}")
            return body + self.delimiter
        if len(payload) > self.max_frame:
            raise FrameError(f"payload of {len(payload)} bytes exceeds max_frame {self.max_frame}")
        return struct.pack(LENGTH_PREFIXES[self.length_prefix], len(payload)) + payload

    def decoder(self) -> FrameDecoder:
        """Return a fresh decoder for one stream."""
        return FrameDecoder(self)


class FrameDecoder:
    """Splits one byte stream into messages as bytes arrive.

    After a `FrameError` the stream is out of step: `reset` (or a new link)
    is the only way on.
    """

    __slots__ = ("_buffer", "_framing", "_prefix")

    def __init__(self, framing: Framing) -> None:
        self._framing = framing
        self._buffer = bytearray()
        self._prefix = struct.Struct(LENGTH_PREFIXES[framing.length_prefix])

    @property
    def pending(self) -> int:
        """Bytes received of a message that is not complete yet."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget any partial message."""
        self._buffer.clear()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the payloads of every message now complete.

        Raises:
            FrameError: for a message longer than ``max_frame`` (or a length
                prefix announcing one).
        """
        self._buffer += data
        if self._framing.kind == "line":
            return self._lines()
        return self._frames()

    def _lines(self) -> list[bytes]:
        framing = self._framing
        delim = framing.delimiter
        buf = self._buffer
        out: list[bytes] = []
        start = 0
        while (end := buf.find(delim, start)) >= 0:
            line = bytes(buf[start:end])
            start = end + len(delim)
            if delim == b"\n" and line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > framing.max_frame:
                del buf[:start]
                raise FrameError(f"line of {len(line)} bytes exceeds max_frame {framing.max_frame}")
            out.append(line)
        del buf[:start]
        # A delimiter may be split across reads: allow for its first bytes.
        if len(buf) > framing.max_frame + len(delim):
            size = len(buf)
            buf.clear()
            raise FrameError(
                f"{size} bytes without a {delim!r} delimiter exceed max_frame {framing.max_frame}"
            )
        return out

    def _frames(self) -> list[bytes]:
        framing = self._framing
        head = self._prefix.size
        buf = self._buffer
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= head:
            (length,) = self._prefix.unpack_from(buf, pos)
            if length > framing.max_frame:
                buf.clear()
                raise FrameError(
                    f"length prefix announces {length} bytes, more than max_frame "
                    f"{framing.max_frame}"
                )
            if len(buf) - pos - head < length:
                break
            out.append(bytes(buf[pos + head : pos + head + length]))
            pos += head + length
        del buf[:pos]
        return out
