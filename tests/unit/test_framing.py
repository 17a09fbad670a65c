"""Framing of byte streams into messages: lines and length-prefixed frames (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from edgelink import ConfigError
from edgelink.drivers.framing import FrameError, Framing


@pytest.mark.parametrize(
    ("framing", "payload", "wire"),
    [
        (Framing(), b"PING", b"PING\n"),
        (Framing(), b"PING\n", b"PING\n"),
        (Framing(delimiter=b"\r\n"), b"a=1", b"a=1\r\n"),
        (Framing("length"), b"PING", b"\x00\x04PING"),
        (Framing("length", length_prefix="u16le"), b"PING", b"\x04\x00PING"),
        (Framing("length", length_prefix="u8"), b"", b"\x00"),
        (Framing("length", length_prefix="u32be"), b"ab", b"\x00\x00\x00\x02ab"),
        (Framing("length", length_prefix="u32le"), b"ab", b"\x02\x00\x00\x00ab"),
    ],
)
def test_encode_and_decode_round_trip(framing: Framing, payload: bytes, wire: bytes) -> None:
    """Test that a payload is framed as documented and decodes back, even byte by byte."""
    assert framing.encode(payload) == wire
    expected = payload.removesuffix(framing.delimiter) if framing.kind == "line" else payload
    assert framing.decoder().feed(wire) == [expected]
    decoder = framing.decoder()
    got: list[bytes] = []
    for i in range(len(wire)):
        got += decoder.feed(wire[i : i + 1])
    assert got == [expected] and decoder.pending == 0


def test_lines_split_and_keep_the_rest() -> None:
    """Test that several lines in one read split, CR is dropped and a partial line waits."""
    decoder = Framing().decoder()
    assert decoder.feed(b"a\r\nb\nc") == [b"a", b"b"]
    assert decoder.pending == 1
    assert decoder.feed(b"d\n") == [b"cd"]


def test_multibyte_delimiter_split_across_reads() -> None:
    """Test that a delimiter split between two reads still ends the line."""
    decoder = Framing(delimiter=b"\r\n").decoder()
    assert decoder.feed(b"x=1\r") == []
    assert decoder.feed(b"\ny") == [b"x=1"]


@pytest.mark.parametrize(
    ("framing", "data", "match"),
    [
        (Framing(max_frame=4), b"12345\n", "exceeds max_frame"),
        (Framing(max_frame=4), b"1234567", "without"),
        (Framing("length", max_frame=10), b"\x00\x0bhello world", "announces 11"),
    ],
)
def test_overlong_is_a_frame_error(framing: Framing, data: bytes, match: str) -> None:
    """Test that overlong lines and frames, or a prefix announcing one, are frame errors."""
    with pytest.raises(FrameError, match=match):
        framing.decoder().feed(data)


@pytest.mark.parametrize(
    ("framing", "payload"),
    [
        (Framing(), b"a\nb"),
        (Framing(max_frame=2), b"abc"),
        (Framing("length", max_frame=2), b"abc"),
    ],
)
def test_unframeable_payload(framing: Framing, payload: bytes) -> None:
    """Test that a payload holding the delimiter or over max_frame cannot be encoded."""
    with pytest.raises(FrameError):
        framing.encode(payload)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, Framing()),
        (
            {"framing": "length", "length_prefix": "u8"},
            Framing("length", length_prefix="u8", max_frame=255),
        ),
        ({"delimiter": ";", "max_frame": 10}, Framing(delimiter=b";", max_frame=10)),
    ],
)
def test_from_config(config: dict[str, Any], expected: Framing) -> None:
    """Test that framing config keys map to a Framing, with max_frame capped by the prefix."""
    assert Framing.from_config(config) == expected


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"framing": "slip"}, "config.framing"),
        ({"delimiter": ""}, "config.delimiter"),
        ({"delimiter": 10}, "config.delimiter"),
        ({"framing": "length", "length_prefix": "u64"}, "config.length_prefix"),
        ({"max_frame": True}, "config.max_frame"),
        ({"framing": "length", "length_prefix": "u8", "max_frame": 256}, "config.max_frame"),
    ],
)
def test_bad_config_names_the_key(config: dict[str, Any], path: str) -> None:
    """Test that a bad framing config is a ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        Framing.from_config(config, connection_id="rs")
    assert info.value.path == path
