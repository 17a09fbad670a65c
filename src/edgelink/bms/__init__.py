"""BMS parsers: Daly, JBD / Xiaoxiang, Victron (VE.Direct, instant readout) and ANT.

Pure: bytes in, `BmsReading` out, no I/O (the ``bms`` connection type in
`edgelink.drivers.bms` moves the bytes). A parser verifies the start, length,
end and checksum of every frame: a bad frame is a `edgelink.errors.ProtocolError`
with the reason, never a wrong number. See docs/bms.md.

Example:
    >>> parser = get_parser("jbd")
    >>> parser.requests()[0].hex(" ")
    'dd a5 03 00 ff fd 77'
"""

from __future__ import annotations

from edgelink.bms.ant import AntParser
from edgelink.bms.base import BmsParser, Decoded, DeviceMatch, FrameBuffer, FrameError
from edgelink.bms.daly import DalyParser
from edgelink.bms.jbd import JbdParser
from edgelink.bms.reading import MAX_CELLS, MAX_TEMPERATURES, BmsReading
from edgelink.bms.victron import VictronParser
from edgelink.bms.victron_ble import decode_instant_readout

__all__ = [
    "MAX_CELLS",
    "MAX_TEMPERATURES",
    "PARSERS",
    "AntParser",
    "BmsParser",
    "BmsReading",
    "DalyParser",
    "Decoded",
    "DeviceMatch",
    "FrameBuffer",
    "FrameError",
    "JbdParser",
    "VictronParser",
    "decode_instant_readout",
    "get_parser",
    "identify",
]

#: The parsers by config name.
PARSERS: dict[str, type[BmsParser]] = {
    "ant": AntParser,
    "daly": DalyParser,
    "jbd": JbdParser,
    "victron": VictronParser,
}


def get_parser(name: str, *, max_buffer: int = 4096) -> BmsParser:
    """Return a new parser for ``name`` (``ant``, ``daly``, ``jbd``, ``victron``).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    cls = PARSERS.get(name)
    if cls is None:
        raise ValueError(f"unknown BMS parser {name!r}; known: {', '.join(sorted(PARSERS))}")
    return cls(max_buffer=max_buffer)


def identify(
    name: str | None,
    service_uuids: list[str] | None = None,
    manufacturer_ids: list[int] | None = None,
) -> list[str]:
    """Return the parsers whose `DeviceMatch` fits an advertisement (for a device browser)."""
    return [
        key
        for key, cls in sorted(PARSERS.items())
        if cls.match.matches(name, service_uuids or (), manufacturer_ids or ())
    ]
