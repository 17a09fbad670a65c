"""Modbus tag parsing, value codecs and read coalescing (pure)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgelink import ConfigError
from edgelink.drivers.modbus_tags import (
    DataType,
    ModbusTag,
    ReadBlock,
    Table,
    WordOrder,
    parse_tag,
    plan_reads,
)


@pytest.mark.parametrize(
    ("text", "table", "address", "dtype", "order", "scale", "count"),
    [
        ("hr:9", Table.HOLDING, 9, DataType.UINT16, WordOrder.ABCD, None, 1),
        ("ir:7:int16*0.1", Table.INPUT, 7, DataType.INT16, WordOrder.ABCD, 0.1, 1),
        ("hr:200:float32:cdab", Table.HOLDING, 200, DataType.FLOAT32, WordOrder.CDAB, None, 2),
        ("HR:0x10:uint32:LE", Table.HOLDING, 16, DataType.UINT32, WordOrder.DCBA, None, 2),
        ("hr:3:float64:be", Table.HOLDING, 3, DataType.FLOAT64, WordOrder.ABCD, None, 4),
        ("hr:4:int32:badc*-2", Table.HOLDING, 4, DataType.INT32, WordOrder.BADC, -2.0, 2),
        ("hr:5:bool", Table.HOLDING, 5, DataType.BOOL, WordOrder.ABCD, None, 1),
        ("coil:3", Table.COIL, 3, DataType.BOOL, WordOrder.ABCD, None, 1),
        ("coil:3:bool", Table.COIL, 3, DataType.BOOL, WordOrder.ABCD, None, 1),
        ("di:65535", Table.DISCRETE, 65535, DataType.BOOL, WordOrder.ABCD, None, 1),
        ("40001", Table.HOLDING, 0, DataType.UINT16, WordOrder.ABCD, None, 1),
        ("49999", Table.HOLDING, 9998, DataType.UINT16, WordOrder.ABCD, None, 1),
        ("400001", Table.HOLDING, 0, DataType.UINT16, WordOrder.ABCD, None, 1),
        ("465536", Table.HOLDING, 65535, DataType.UINT16, WordOrder.ABCD, None, 1),
        ("30010:int32*0.01", Table.INPUT, 9, DataType.INT32, WordOrder.ABCD, 0.01, 2),
        ("00001", Table.COIL, 0, DataType.BOOL, WordOrder.ABCD, None, 1),
        ("10001", Table.DISCRETE, 0, DataType.BOOL, WordOrder.ABCD, None, 1),
    ],
)
def test_parse_tag(
    text: str,
    table: Table,
    address: int,
    dtype: DataType,
    order: WordOrder,
    scale: float | None,
    count: int,
) -> None:
    """Test that every tag form parses to its table, 0-based address, type, order and scale."""
    tag = parse_tag(text)
    assert (tag.table, tag.address, tag.dtype, tag.order, tag.scale, tag.count) == (
        table,
        address,
        dtype,
        order,
        scale,
        count,
    )
    assert tag.text == text


def test_modicon_and_wire_forms_are_the_same_register() -> None:
    """Test that 40001 is hr:0 and 30010 is ir:9."""
    assert parse_tag("40001").address == parse_tag("hr:0").address == 0
    assert parse_tag("30010").table is parse_tag("ir:9").table
    assert parse_tag("30010").address == 9


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "non-empty"),
        ("hr", "needs an address"),
        ("hr:", "needs an address"),
        ("hr:x", "not a number"),
        ("hr:-1", "not a number"),
        ("hr:1.5", "not a number"),
        ("hr:0x", "not a number"),
        ("hr:65536", "outside"),
        ("hr:65535:int32", "outside"),
        ("hr:65533:float64", "outside"),
        ("40000", "out of range"),
        ("465537", "out of range"),
        ("50001", "must start with 0, 1, 3 or 4"),
        ("4001", "neither"),
        ("temperature", "neither"),
        ("hr:1:int8", "unknown type"),
        ("hr:1:int32:abdc", "unknown word order"),
        ("hr:1:int32:abcd:x", "too many"),
        ("coil:1:int16", "only type is bool"),
        ("di:1:bool:abcd", "no word order"),
        ("coil:1*2", "cannot be scaled"),
        ("hr:1:bool*2", "cannot be scaled"),
        ("hr:1*0", "non-zero"),
        ("hr:1*inf", "finite"),
        ("hr:1*x", "not a number"),
    ],
)
def test_bad_tags_are_config_errors_naming_the_tag(text: str, reason: str) -> None:
    """Test that a bad tag is a ConfigError that names the tag and says why."""
    with pytest.raises(ConfigError) as info:
        parse_tag(text)
    assert reason in info.value.message
    assert repr(text) in info.value.message
    assert info.value.path == "tag"


PI = 3.140625  # exact in float32
RAW32 = struct.pack(">f", PI)  # b"\x40\x49\x00\x00": a b c d


@pytest.mark.parametrize(
    ("order", "wire"),
    [
        ("abcd", RAW32),
        ("cdab", RAW32[2:] + RAW32[:2]),
        ("badc", bytes([RAW32[1], RAW32[0], RAW32[3], RAW32[2]])),
        ("dcba", RAW32[::-1]),
    ],
)
def test_float32_word_and_byte_orders(order: str, wire: bytes) -> None:
    """Test that each word order reads the bytes of the value in the documented sequence."""
    words = [int.from_bytes(wire[i : i + 2], "big") for i in (0, 2)]
    tag = parse_tag(f"hr:0:float32:{order}")
    assert tag.decode(words) == PI
    assert tag.encode(PI) == words


@pytest.mark.parametrize(
    ("text", "words", "value"),
    [
        ("hr:0", [0xFFFF], 65535),
        ("hr:0:int16", [0xFFFF], -1),
        ("hr:0:int16:badc", [0xFEFF], -2),
        ("hr:0:int32", [0xFFFF, 0xFFFE], -2),
        ("hr:0:uint32", [0x0001, 0x0000], 65536),
        ("hr:0:uint32:cdab", [0x0000, 0x0001], 65536),
        ("hr:0:float64", [0x3FF8, 0, 0, 0], 1.5),
        ("hr:0:float64:cdab", [0, 0, 0, 0x3FF8], 1.5),
        ("hr:0:float64:dcba", [0, 0, 0, 0xF83F], 1.5),
        ("hr:0:bool", [7], True),
        ("hr:0:bool", [0], False),
        ("ir:0:int16*0.1", [0xFF9C], -10.0),
        ("ir:0*10", [12], 120.0),
    ],
)
def test_decode_and_encode(text: str, words: list[int], value: object) -> None:
    """Test that registers decode to the value and the value encodes back to the registers."""
    tag = parse_tag(text)
    assert tag.decode(words) == value
    if tag.dtype is DataType.BOOL:
        assert tag.encode(value) == [1 if value else 0]
    else:
        assert tag.encode(value) == words


def test_scaled_integer_write_rounds() -> None:
    """Test that a scaled write is divided by the scale and rounded for integer types."""
    assert parse_tag("hr:0:int16*0.1").encode(21.46) == [215]
    assert parse_tag("hr:0:int16*0.1").encode(-0.04) == [0]


@pytest.mark.parametrize(
    ("text", "value", "error"),
    [
        ("hr:0", 65536, ValueError),
        ("hr:0", -1, ValueError),
        ("hr:0:int16", 40000, ValueError),
        ("hr:0:int16*0.1", 4000, ValueError),
        ("hr:0:uint32", 2**32, ValueError),
        ("hr:0:int32", math.nan, ValueError),
        ("hr:0:float32", 1e39, ValueError),
        ("hr:0", "5", TypeError),
        ("hr:0", True, TypeError),
        ("hr:0:bool", 2, TypeError),
        ("coil:0", "on", TypeError),
    ],
)
def test_values_that_do_not_fit_are_refused(text: str, value: object, error: type) -> None:
    """Test that a value outside the tag's type is refused with an error naming the tag."""
    tag = parse_tag(text)
    encode = tag.encode_bit if tag.table.is_bits else tag.encode
    with pytest.raises(error, match=text.replace("*", r"\*")):
        encode(value)


@given(
    st.sampled_from(["int16", "uint16", "int32", "uint32", "float32", "float64"]),
    st.sampled_from(["abcd", "cdab", "badc", "dcba"]),
    st.data(),
)
def test_encode_decode_round_trip(dtype: str, order: str, data: st.DataObject) -> None:
    """Test that every type and order decodes what it encoded."""
    tag = parse_tag(f"hr:0:{dtype}:{order}")
    if dtype == "float32":
        value: float = data.draw(st.floats(width=32, allow_nan=False, allow_infinity=False))
    elif dtype == "float64":
        value = data.draw(st.floats(allow_nan=False, allow_infinity=False))
    else:
        bits = int(dtype.removeprefix("u").removeprefix("int"))
        low, high = (
            (0, 2**bits - 1) if dtype.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        )
        value = data.draw(st.integers(low, high))
    words = tag.encode(value)
    assert len(words) == tag.count and all(0 <= w <= 0xFFFF for w in words)
    assert tag.decode(words) == value


def tags(*texts: str) -> list[ModbusTag]:
    return [parse_tag(t) for t in texts]


def spans(blocks: list[ReadBlock]) -> list[tuple[str, int, int]]:
    return [(str(b.table), b.start, b.count) for b in blocks]


def test_plan_coalesces_contiguous_and_overlapping_registers() -> None:
    """Test that touching and overlapping tags of one table share a request."""
    blocks = plan_reads(tags("hr:3", "hr:0:float32", "hr:2", "hr:1", "hr:10", "ir:0", "ir:1:int32"))
    assert spans(blocks) == [("hr", 0, 4), ("hr", 10, 1), ("ir", 0, 3)]
    assert [t.text for t in blocks[0].tags] == ["hr:0:float32", "hr:1", "hr:2", "hr:3"]


def test_plan_respects_the_register_and_bit_limits() -> None:
    """Test that 300 contiguous registers take 3 requests and 2500 coils take 2."""
    regs = plan_reads([parse_tag(f"hr:{i}") for i in range(300)])
    assert spans(regs) == [("hr", 0, 125), ("hr", 125, 125), ("hr", 250, 50)]
    bits = plan_reads([parse_tag(f"coil:{i}") for i in range(2500)])
    assert spans(bits) == [("coil", 0, 2000), ("coil", 2000, 500)]
    # A two-register value never straddles two requests.
    split = plan_reads([parse_tag(f"hr:{2 * i}:float32") for i in range(63)])
    assert spans(split) == [("hr", 0, 124), ("hr", 124, 2)]


def test_plan_gap_and_duplicates() -> None:
    """Test that gaps split requests unless max_gap allows them and duplicates are read once."""
    assert spans(plan_reads(tags("hr:0", "hr:2"))) == [("hr", 0, 1), ("hr", 2, 1)]
    assert spans(plan_reads(tags("hr:0", "hr:2"), max_gap=1)) == [("hr", 0, 3)]
    block = plan_reads(tags("hr:5", "hr:5", "40006"))[0]
    assert (block.start, block.count, len(block.tags)) == (5, 1, 2)


def test_block_values_decode_each_tag() -> None:
    """Test that a block's registers are split back into each tag's value."""
    block = plan_reads(tags("hr:0:int16", "hr:1:uint32", "hr:3*0.5"))[0]
    assert block.values([0xFFFF, 0, 7, 9]) == {"hr:0:int16": -1, "hr:1:uint32": 7, "hr:3*0.5": 4.5}


@pytest.mark.parametrize(
    ("text", "raw", "value"),
    [
        ("ir:0*0.1", 3, 0.3),
        ("ir:0:int16*0.01", 0xFFF9, -0.07),
        ("ir:0:uint32*0.001", [18, 54919], 1234.567),
        ("ir:0*1e-20", 5, 5e-20),
    ],
)
def test_scaled_integers_read_as_decimals(text: str, raw: int | list[int], value: float) -> None:
    """Test that an integer times a decimal scale reads as that decimal, without float noise."""
    words = raw if isinstance(raw, list) else [raw]
    assert parse_tag(text).decode(words) == value
