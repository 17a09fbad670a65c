"""The ads driver's codec: PLC symbol types, values to and from their bytes, the symbol table.

Pure functions, no I/O: a symbol's type as pyads's ctypes type (`Symbol`),
a value checked and converted for a write (`coerce`, with a message that
says which symbol, which type and why), raw notification bytes decoded
(`decode`), and the symbol table upload parsed (`parse_symbol_table`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from pyads import constants as ads_constants

from edgelink.errors import ProtocolError

__all__ = [
    "ADS_STATES",
    "FILETIME_EPOCH",
    "Symbol",
    "SymbolInfo",
    "coerce",
    "decode",
    "is_array",
    "is_string",
    "parse_symbol_table",
]

#: 1970-01-01 as a Windows FILETIME (100 ns ticks since 1601), the PLC's clock.
FILETIME_EPOCH: Final = 116_444_736_000_000_000

ADS_STATES: Final[Mapping[int, str]] = {
    getattr(ads_constants, name): name.removeprefix("ADSSTATE_")
    for name in dir(ads_constants)
    if name.startswith("ADSSTATE_")
}


@dataclasses.dataclass(frozen=True, slots=True)
class SymbolInfo:
    """One entry of a PLC's symbol table, as `AdsConnection.list_symbols` returns it.

    Attributes:
        name: The symbol name, e.g. ``MAIN.fTemperature`` or ``GVL.bAlarm``.
        type: The PLC type name: ``LREAL``, ``STRING(80)``, ``ARRAY [0..9] OF INT``, ``ST_Motor``.
        size: Bytes the value takes.
        comment: The comment the PLC program gave the symbol.
        index_group: The symbol's ADS index group (where its value lives).
        index_offset: Its index offset within that group.
    """

    name: str
    type: str
    size: int
    comment: str
    index_group: int = 0
    index_offset: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Return the entry as a plain dict (for JSON)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(slots=True)
class Symbol:
    """A symbol this connection resolved: its type (pyads's ctypes type, if any) and handle."""

    name: str
    type_name: str
    size: int
    plc_type: Any
    handle: int


def parse_symbol_table(table: bytes, connection_id: str) -> Iterator[SymbolInfo]:
    """Parse the PLC's symbol table upload entry by entry.

    Raises:
        ProtocolError: if an entry is cut off or malformed.
    """
    # Each entry: length, index group, index offset, size, data type,
    # flags (6 x uint32), name/type/comment lengths (3 x uint16), then the
    # three strings, each NUL-terminated. Entries may carry more after.
    pos = 0
    while pos + 30 <= len(table):
        entry_length, group, offset, size, _dtype, _flags = struct.unpack_from("<6I", table, pos)
        name_len, type_len, comment_len = struct.unpack_from("<3H", table, pos + 24)
        end = pos + 30 + name_len + type_len + comment_len + 2
        if entry_length < 30 or pos + entry_length > len(table) or end > len(table):
            raise ProtocolError(
                f"symbol table entry at byte {pos} is cut off or malformed",
                connection_id=connection_id,
            )
        start = pos + 30

        def text(offset: int, length: int) -> str:
            return table[offset : offset + length].decode("cp1252")

        yield SymbolInfo(
            name=text(start, name_len),
            type=text(start + name_len + 1, type_len),
            size=size,
            comment=text(start + name_len + type_len + 2, comment_len),
            index_group=group,
            index_offset=offset,
        )
        pos += entry_length


def is_string(plc_type: Any) -> bool:
    return plc_type is ads_constants.PLCTYPE_STRING or (
        isinstance(plc_type, type)
        and issubclass(plc_type, ctypes.Array)
        and plc_type._type_ is ads_constants.PLCTYPE_STRING
    )


def is_array(plc_type: Any) -> bool:
    return isinstance(plc_type, type) and issubclass(plc_type, ctypes.Array)


_INT_TYPES: Final = (
    ctypes.c_int8,
    ctypes.c_int16,
    ctypes.c_int32,
    ctypes.c_int64,
    ctypes.c_uint8,
    ctypes.c_uint16,
    ctypes.c_uint32,
    ctypes.c_uint64,
)
_SIGNED: Final = (ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64)


def decode(symbol: Symbol, raw: bytes) -> Any:
    """Decode a value's raw bytes (from a notification) by the symbol's type."""
    plc_type = symbol.plc_type
    if is_string(plc_type):
        return raw.split(b"\x00", 1)[0].decode("cp1252")
    if plc_type is None or len(raw) != ctypes.sizeof(plc_type):
        return raw
    value = plc_type.from_buffer_copy(raw)
    if isinstance(value, ctypes.Array):
        return list(value)
    return value.value


def coerce(symbol: Symbol, value: Any, connection_id: str) -> tuple[Any, Any]:
    """Check ``value`` against the symbol's type; return what pyads writes and its type."""
    plc_type = symbol.plc_type

    def bad(why: str) -> ValueError:
        return ValueError(
            f"[{connection_id}] cannot write {value!r} to {symbol.name} ({symbol.type_name}): {why}"
        )

    if is_string(plc_type):
        if not isinstance(value, str):
            raise bad("a STRING takes text")
        try:
            data = value.encode("cp1252") + b"\x00"
        except UnicodeEncodeError:
            raise bad("characters outside Windows-1252, which TwinCAT STRING holds") from None
        if len(data) > symbol.size:
            raise bad(f"{len(data) - 1} characters, the symbol holds {symbol.size - 1}")
        # The whole buffer, NUL-padded, as the PLC lays the STRING out.
        return list(data.ljust(symbol.size, b"\x00")), ctypes.c_ubyte * symbol.size
    if plc_type is None:
        if not isinstance(value, bytes | bytearray) or len(value) != symbol.size:
            raise bad(f"a {symbol.type_name} is written as exactly {symbol.size} raw bytes")
        return list(value), ctypes.c_ubyte * symbol.size
    if is_array(plc_type):
        array: Any = plc_type
        length = int(array._length_)
        if not isinstance(value, list | tuple) or len(value) != length:
            raise bad(f"an array takes a list of {length} items")
        element = Symbol(symbol.name, symbol.type_name, 0, array._type_, 0)
        return [coerce(element, v, connection_id)[0] for v in value], plc_type
    if plc_type is ctypes.c_bool:
        return _to_bool(value, bad), plc_type
    if plc_type in _INT_TYPES:
        number = _to_int(value, bad)
        bits = 8 * ctypes.sizeof(plc_type)
        low, high = (
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
            if plc_type in _SIGNED
            else (0, (1 << bits) - 1)
        )
        if not low <= number <= high:
            raise bad(f"out of range {low}..{high}")
        return number, plc_type
    if plc_type in (ctypes.c_float, ctypes.c_double):
        number_f = _to_float(value, bad)
        if plc_type is ctypes.c_float and math.isfinite(number_f) and abs(number_f) > 3.4028235e38:
            raise bad("out of the REAL range")
        return number_f, plc_type
    return value, plc_type


def _to_bool(value: Any, bad: Callable[[str], ValueError]) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise bad("a BOOL takes true/false (or 1/0)")


def _to_int(value: Any, bad: Callable[[str], ValueError]) -> int:
    if isinstance(value, bool):
        raise bad("an integer type takes a number, not a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip(), 0)
    raise bad("an integer type takes a whole number")


def _to_float(value: Any, bad: Callable[[str], ValueError]) -> float:
    if isinstance(value, bool):
        raise bad("a REAL/LREAL takes a number, not a bool")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    raise bad("a REAL/LREAL takes a number")
