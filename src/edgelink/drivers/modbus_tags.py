"""Modbus tags: parsing, value codecs and read coalescing. Pure: no I/O, no pymodbus.

A tag names one value in one of the four Modbus tables, with the 0-based
address as it goes on the wire, and optionally how the registers encode it::

    hr:100                  holding register 100, uint16
    ir:7:int16*0.1          input register 7, signed, times 0.1
    hr:200:float32          holding registers 200-201, a float, big-endian words
    hr:200:float32:cdab     the same, low word first (word swapped)
    coil:3   di:12          a coil, a discrete input (bool)
    40001   30010:int32     Modicon references: 40001 is hr:0, 30010 is ir:9

Grammar: ``<table>:<address>[:<type>[:<order>]][*<scale>]`` or
``<modicon>[:<type>[:<order>]][*<scale>]``.

- tables: ``hr`` (holding registers, read/write), ``ir`` (input registers,
  read-only), ``coil`` (read/write bits), ``di`` (discrete inputs, read-only).
- addresses: 0..65535, decimal or ``0x`` hex; a multi-register value must fit.
- Modicon references, 5 digits (``40001``..``49999``) or 6 (``400001``..
  ``465536``): the first digit picks the table (``0`` coil, ``1`` di, ``3``
  ir, ``4`` hr), the rest is the 1-based register number.
- types: ``int16``, ``uint16`` (the default for registers), ``int32``,
  ``uint32``, ``float32``, ``float64``, ``bool`` (the only type of coils and
  discrete inputs; on a register it means "not zero").
- orders, as the bytes of the value appear on the wire with ``a`` the most
  significant: ``abcd`` (big-endian, the Modbus default), ``cdab`` (words
  swapped: low word first), ``badc`` (bytes swapped in each word), ``dcba``
  (little-endian); ``be`` and ``le`` are aliases of ``abcd`` and ``dcba``.
  For 64-bit values ``cdab`` reverses all four words.
- scale: a read value is multiplied by it (a write divided by it and, for
  integer types, rounded).

`parse_tag` turns a tag into a `ModbusTag` once; `plan_reads` groups many
tags into as few requests as the device limits allow (125 registers, 2000
bits per request).
"""

from __future__ import annotations

import decimal
import enum
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from edgelink.errors import ConfigError, DeviceError

__all__ = [
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "MAX_WRITE_REGISTERS",
    "DataType",
    "ModbusTag",
    "ReadBlock",
    "Table",
    "WordOrder",
    "parse_tag",
    "plan_reads",
]

#: Most registers one read request may ask for (Modbus application protocol, FC 3/4).
MAX_READ_REGISTERS: Final = 125
#: Most bits one read request may ask for (FC 1/2).
MAX_READ_BITS: Final = 2000
#: Most registers one write request may carry (FC 16).
MAX_WRITE_REGISTERS: Final = 123

_EXAMPLES: Final = "e.g. 'hr:100', 'ir:7:int16*0.1', 'hr:200:float32:cdab', 'coil:3' or '40001'"


class Table(enum.StrEnum):
    """The four Modbus data tables."""

    HOLDING = "hr"
    INPUT = "ir"
    COIL = "coil"
    DISCRETE = "di"

    @property
    def is_bits(self) -> bool:
        """True for the one-bit tables (coils, discrete inputs)."""
        return self in (Table.COIL, Table.DISCRETE)

    @property
    def is_writable(self) -> bool:
        """True for the tables a client may write (holding registers, coils)."""
        return self in (Table.HOLDING, Table.COIL)


class DataType(enum.StrEnum):
    """How the registers of a tag encode its value."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"


class WordOrder(enum.StrEnum):
    """The order of a value's bytes on the wire, ``a`` being the most significant."""

    ABCD = "abcd"
    CDAB = "cdab"
    BADC = "badc"
    DCBA = "dcba"

    @property
    def word_swap(self) -> bool:
        """True if the registers come low word first."""
        return self in (WordOrder.CDAB, WordOrder.DCBA)

    @property
    def byte_swap(self) -> bool:
        """True if the two bytes of each register are swapped."""
        return self in (WordOrder.BADC, WordOrder.DCBA)


_TABLE_NAMES: Final = frozenset(t.value for t in Table)
_ORDER_ALIASES: Final = {"be": WordOrder.ABCD, "le": WordOrder.DCBA}

#: struct format and register count of each register type.
_STRUCT: Final[dict[DataType, tuple[str, int]]] = {
    DataType.INT16: ("h", 1),
    DataType.UINT16: ("H", 1),
    DataType.INT32: ("i", 2),
    DataType.UINT32: ("I", 2),
    DataType.FLOAT32: ("f", 2),
    DataType.FLOAT64: ("d", 4),
    DataType.BOOL: ("H", 1),
}

#: The first digit of a Modicon reference and the table it names.
_MODICON: Final = {"0": Table.COIL, "1": Table.DISCRETE, "3": Table.INPUT, "4": Table.HOLDING}

_INT_RANGES: Final[dict[DataType, tuple[int, int]]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}


def _bad(tag: str, reason: str) -> ConfigError:
    return ConfigError(f"bad Modbus tag {tag!r}: {reason}; expected {_EXAMPLES}", path="tag")


@dataclass(frozen=True, slots=True)
class ModbusTag:
    """One parsed tag: where its value lives and how it is encoded.

    Build it with `parse_tag`. ``count`` is the number of registers (or bits)
    the value occupies, starting at ``address``.

    Example:
        >>> tag = parse_tag("hr:10:int32*0.5")
        >>> tag.table, tag.address, tag.count, tag.decode([0xFFFF, 0xFFFE])
        (<Table.HOLDING: 'hr'>, 10, 2, -1.0)
    """

    text: str
    table: Table
    address: int
    dtype: DataType
    order: WordOrder = WordOrder.ABCD
    scale: float | None = None
    count: int = field(init=False)
    _digits: int | None = field(init=False, repr=False, compare=False)
    #: ``decoder(raw, offset)``: the value from ``raw[offset:offset + count]``, built once.
    decoder: Callable[[Sequence[Any], int], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        count = 1 if self.table.is_bits else _STRUCT[self.dtype][1]
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "_digits", _scale_digits(self.scale, self.dtype))
        object.__setattr__(self, "decoder", self._make_decoder())

    def _make_decoder(self) -> Callable[[Sequence[Any], int], Any]:
        # Polling decodes every tag every interval: each tag gets the shortest
        # function for its type, chosen once here.
        if self.table.is_bits:
            return _read_bit
        if self.dtype is DataType.BOOL:
            return _read_nonzero
        base: Callable[[Sequence[Any], int], int | float]
        if self.dtype is DataType.UINT16 and not self.order.byte_swap:
            base = _read_uint16
        elif self.dtype is DataType.INT16 and not self.order.byte_swap:
            base = _read_int16
        else:
            base = _struct_reader(self.dtype, self.order)
        scale, digits = self.scale, self._digits
        if scale is None:
            return base
        if digits is not None:
            # An integer times 0.1 is meant as tenths: 3 * 0.1 reads 0.3, not
            # 0.30000000000000004.
            return lambda raw, i: round(base(raw, i) * scale, digits)
        return lambda raw, i: base(raw, i) * scale

    @property
    def end(self) -> int:
        """One past the last address the value occupies."""
        return self.address + self.count

    def decode(self, raw: Sequence[int] | Sequence[bool]) -> Any:
        """Turn the ``count`` registers (or the one bit) read for this tag into its value.

        Registers are 16-bit unsigned integers as pymodbus returns them.
        """
        return self.decoder(raw, 0)

    def encode(self, value: Any) -> list[int]:
        """Turn a value into the registers to write for this tag.

        Raises:
            TypeError: if ``value`` is not a number (or a bool for ``bool``).
            ValueError: if it does not fit the tag's type, naming the tag.
        """
        if self.table.is_bits:
            raise TypeError(f"{self.text}: bits are written with encode_bit()")
        if self.dtype is DataType.BOOL:
            return [1 if self.encode_bit(value) else 0]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                f"{self.text}: a {self.dtype} value must be a number, got {type(value).__name__}"
            )
        number: float = value / self.scale if self.scale is not None else value
        fmt, _count = _STRUCT[self.dtype]
        if self.dtype in _INT_RANGES:
            if not math.isfinite(number):
                raise ValueError(f"{self.text}: {value!r} is not a finite number")
            integer = round(number)
            low, high = _INT_RANGES[self.dtype]
            if not low <= integer <= high:
                raise ValueError(
                    f"{self.text}: {value!r} is out of range for {self.dtype} "
                    f"({low}..{high} after scale)"
                )
            data = struct.pack(">" + fmt, integer)
        else:
            try:
                data = struct.pack(">" + fmt, number)
            except OverflowError as exc:
                raise ValueError(f"{self.text}: {value!r} does not fit a {self.dtype}") from exc
        if self.order.byte_swap:
            data = _swap_bytes(data)
        words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
        if self.order.word_swap:
            words.reverse()
        return words

    def encode_bit(self, value: Any) -> bool:
        """Turn a value into the bit to write (a coil, or a ``bool`` register).

        Raises:
            TypeError: unless ``value`` is a bool or the integer 0 or 1.
        """
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise TypeError(f"{self.text}: a bit must be true/false (or 0/1), got {value!r}")


def _read_bit(raw: Sequence[Any], i: int) -> bool:
    return bool(raw[i])


def _read_nonzero(raw: Sequence[Any], i: int) -> bool:
    return bool(raw[i] != 0)


def _read_uint16(raw: Sequence[Any], i: int) -> int:
    return int(raw[i])


def _read_int16(raw: Sequence[Any], i: int) -> int:
    word = int(raw[i])
    return word - 0x10000 if word & 0x8000 else word


_PACK_WORDS: Final = {n: struct.Struct(">" + "H" * n).pack for n in (1, 2, 4)}


def _struct_reader(dtype: DataType, order: WordOrder) -> Callable[[Sequence[Any], int], Any]:
    fmt, count = _STRUCT[dtype]
    unpack = struct.Struct(">" + fmt).unpack
    pack = _PACK_WORDS[count]
    word_swap, byte_swap = order.word_swap, order.byte_swap

    def read(raw: Sequence[Any], i: int) -> Any:
        words = raw[i : i + count]
        data = pack(*(reversed(words) if word_swap else words))
        return unpack(_swap_bytes(data) if byte_swap else data)[0]

    if dtype not in (DataType.FLOAT32, DataType.FLOAT64):
        return read

    def read_finite(raw: Sequence[Any], i: int) -> Any:
        value = read(raw, i)
        # NaN and infinities are what devices send for a failed sensor, and
        # JSON has no spelling for them: the value cannot be decoded.
        if not math.isfinite(value):
            raise ValueError(f"the registers hold {value}, not a finite number")
        return value

    return read_finite


def _scale_digits(scale: float | None, dtype: DataType) -> int | None:
    """Decimal places of a scaled integer reading (``*0.01`` -> 2), or None to keep all."""
    if scale is None or dtype not in _INT_RANGES:
        return None
    exponent = decimal.Decimal(repr(scale)).as_tuple().exponent
    if not isinstance(exponent, int):
        return None
    digits = max(0, -exponent)
    return digits if digits <= 12 else None


def _swap_bytes(data: bytes) -> bytes:
    out = bytearray(data)
    out[0::2], out[1::2] = data[1::2], data[0::2]
    return bytes(out)


def _address(text: str, tag: str) -> int:
    digits, base = (text[2:], 16) if text.startswith("0x") else (text, 10)
    valid = "0123456789abcdef"[:base]
    if not digits or any(ch not in valid for ch in digits):
        raise _bad(tag, f"address {text!r} is not a number")
    return int(digits, base)


def _modicon(ref: str, tag: str) -> tuple[Table, int]:
    if not ref.isdigit() or len(ref) not in (5, 6):
        raise _bad(tag, f"{ref!r} is neither '<table>:<address>' nor a Modicon reference")
    table = _MODICON.get(ref[0])
    if table is None:
        raise _bad(tag, f"Modicon reference {ref!r} must start with 0, 1, 3 or 4")
    number = int(ref[1:])
    top = 9999 if len(ref) == 5 else 65536
    if not 1 <= number <= top:
        raise _bad(tag, f"Modicon reference {ref!r} is out of range (register 1..{top})")
    return table, number - 1


def parse_tag(tag: str) -> ModbusTag:
    """Parse a tag (see the module docstring for the syntax).

    Raises:
        ConfigError: naming the tag and what is wrong with it (``path="tag"``).
    """
    if not isinstance(tag, str) or not tag:
        raise _bad(str(tag), "a tag must be a non-empty string")
    body, star, scale_text = tag.partition("*")
    scale: float | None = None
    if star:
        try:
            scale = float(scale_text)
        except ValueError:
            raise _bad(tag, f"scale {scale_text!r} is not a number") from None
        if not math.isfinite(scale) or scale == 0:
            raise _bad(tag, "scale must be a finite, non-zero number")
    parts = body.strip().lower().split(":")
    if parts[0] in _TABLE_NAMES:
        if len(parts) < 2 or not parts[1]:
            raise _bad(tag, f"'{parts[0]}:' needs an address")
        table = Table(parts[0])
        address = _address(parts[1], tag)
        rest = parts[2:]
    else:
        table, address = _modicon(parts[0], tag)
        rest = parts[1:]
    if len(rest) > 2:
        raise _bad(tag, "too many ':' parts")
    dtype = DataType.BOOL if table.is_bits else DataType.UINT16
    if rest:
        try:
            dtype = DataType(rest[0])
        except ValueError:
            names = ", ".join(t.value for t in DataType)
            raise _bad(tag, f"unknown type {rest[0]!r} (known: {names})") from None
    order = WordOrder.ABCD
    if len(rest) == 2:
        order_text = rest[1]
        if order_text in _ORDER_ALIASES:
            order = _ORDER_ALIASES[order_text]
        else:
            try:
                order = WordOrder(order_text)
            except ValueError:
                names = ", ".join([*(o.value for o in WordOrder), *_ORDER_ALIASES])
                raise _bad(tag, f"unknown word order {order_text!r} (known: {names})") from None
    if table.is_bits:
        if dtype is not DataType.BOOL:
            raise _bad(tag, f"{table.value} holds bits: its only type is bool, not {dtype}")
        if len(rest) == 2:
            raise _bad(tag, "a bit has no word order")
        if scale is not None:
            raise _bad(tag, "a bit cannot be scaled")
    elif dtype is DataType.BOOL and scale is not None:
        raise _bad(tag, "a bool cannot be scaled")
    parsed = ModbusTag(tag, table, address, dtype, order, scale)
    if parsed.end > 65536:
        raise _bad(tag, f"address {address} (+{parsed.count}) is outside 0..65535")
    return parsed


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``.

    ``tags`` are the tags whose values lie inside it.
    """

    table: Table
    start: int
    count: int
    tags: tuple[ModbusTag, ...]

    def values(self, raw: Sequence[int] | Sequence[bool]) -> dict[str, Any]:
        """Decode every tag of the block from the block's registers (or bits).

        A tag whose registers cannot be decoded (a float register pair that
        holds NaN or an infinity, a register outside 0..65535) maps to a
        `DeviceError` saying why, so it alone is reported bad.
        """
        start = self.start
        values: dict[str, Any] = {}
        for t in self.tags:
            try:
                values[t.text] = t.decoder(raw, t.address - start)
            except (ValueError, struct.error) as exc:
                values[t.text] = DeviceError(f"{t.text}: cannot decode: {exc}")
        return values


def plan_reads(
    tags: Iterable[ModbusTag],
    *,
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
    max_gap: int = 0,
) -> list[ReadBlock]:
    """Group tags into as few read requests as the limits allow.

    Tags of one table whose addresses touch or overlap (or are at most
    ``max_gap`` apart) share a request while it stays within ``max_registers``
    (``max_bits`` for coils and discrete inputs). A gap is read and thrown
    away, so keep ``max_gap`` at 0 for a device with holes in its map (it
    would refuse the whole block). Blocks come out by table, then address; a
    tag given twice is read once.
    """
    by_table: dict[Table, dict[str, ModbusTag]] = {}
    for tag in tags:
        by_table.setdefault(tag.table, {}).setdefault(tag.text, tag)
    blocks: list[ReadBlock] = []
    for table in Table:
        members = by_table.get(table)
        if not members:
            continue
        limit = max_bits if table.is_bits else max_registers
        ordered = sorted(members.values(), key=lambda t: (t.address, -t.count))
        start = ordered[0].address
        end = ordered[0].end
        current: list[ModbusTag] = [ordered[0]]
        for tag in ordered[1:]:
            new_end = max(end, tag.end)
            if tag.address <= end + max_gap and new_end - start <= limit:
                end = new_end
                current.append(tag)
                continue
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
            start, end, current = tag.address, tag.end, [tag]
        blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return blocks
