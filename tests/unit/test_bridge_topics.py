"""The bridge's topic encoding: valid MQTT topics for any source id and tag, reversibly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgelink.bridge.topics import (
    MAX_TOPIC_BYTES,
    TopicError,
    decode_address,
    decode_level,
    encode_level,
    encode_topic,
)

#: Everything MQTT forbids in a topic name, or that would change its levels or meaning.
ILLEGAL = ["#", "+", "/", "\x00", "\x01", "\x1f", "\x7f", "\x80", "\x9f", "\ud800", "\ufffe"]


def assert_valid(topic: str, base: str = "smarthome") -> None:
    """What a broker needs of a topic name, and what the bridge's levels need."""
    assert topic.startswith(base + "/")
    assert len(topic.encode()) <= MAX_TOPIC_BYTES  # also: it is valid UTF-8
    assert "#" not in topic and "+" not in topic
    for ch in topic:
        cp = ord(ch)
        assert cp > 0x1F and not 0x7F <= cp <= 0x9F and cp not in (0xFFFE, 0xFFFF), repr(topic)
    levels = topic[len(base) + 1 :].split("/")
    assert all(levels), f"empty level in {topic!r}"
    assert not any(level.startswith("$") for level in levels)
    assert "set" not in levels[1:]


@pytest.mark.parametrize(
    ("source", "tag", "topic"),
    [
        ("plc_1", "MAIN.temperature", "smarthome/plc_1/MAIN/temperature"),
        ("inv", "hr:0", "smarthome/inv/hr:0"),
        ("calc", "inv_kw", "smarthome/calc/inv_kw"),
        ("a.b", "x", "smarthome/a.b/x"),
        ("dev", "Zählerstand.°C", "smarthome/dev/Zählerstand/°C"),
        ("dev", "a b-c=d", "smarthome/dev/a b-c=d"),
    ],
)
def test_ordinary_ids_and_tags_keep_their_topics(source: str, tag: str, topic: str) -> None:
    """Test that what was a valid topic before stays exactly that topic."""
    assert encode_topic("smarthome", source, tag) == topic
    assert decode_address(topic.split("/")[1:]) == (source, tag)


def test_reported_json_pointer_tag_gets_a_valid_topic() -> None:
    """Test the reported tag ``/status#/power/ac`` (an http JSON pointer)."""
    topic = encode_topic("smarthome", "sim", "/status#/power/ac")
    assert topic == "smarthome/sim/%2Fstatus%23%2Fpower%2Fac"
    assert_valid(topic)
    assert decode_address(topic.split("/")[1:]) == ("sim", "/status#/power/ac")


@pytest.mark.parametrize("ch", ILLEGAL)
def test_every_illegal_character_is_escaped_and_comes_back(ch: str) -> None:
    """Test each forbidden character alone, at the start, inside and at the end of a level."""
    for text in (ch, f"{ch}x", f"x{ch}y", f"x{ch}"):
        for source, tag in ((text, "t"), ("s", text), ("s", f"a.{text}.b")):
            topic = encode_topic("smarthome", source, tag)
            assert_valid(topic)
            assert decode_address(topic.split("/")[1:]) == (source, tag)


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("", "%"),
        ("$SYS", "%24SYS"),
        ("a$", "a$"),
        ("set", "%73et"),
        ("settings", "settings"),
        ("100%", "100%25"),
        ("%25", "%2525"),
    ],
)
def test_special_levels(text: str, level: str) -> None:
    """Test empty levels, a leading $, the reserved ``set`` and the escape character itself."""
    assert encode_level(text) == level
    assert decode_level(level) == text


def test_empty_source_and_tag_levels_are_kept() -> None:
    """Test ids and tags with empty parts (``a..b``, a leading dot)."""
    topic = encode_topic("smarthome", "", ".a..b.")
    assert topic == "smarthome/%/%/a/%/b/%"
    assert decode_address(topic.split("/")[1:]) == ("", ".a..b.")


def test_a_tag_named_set_is_not_a_set_command() -> None:
    """Test that a datapoint never lands on the bridge's own ``/set`` back-path."""
    assert encode_topic("smarthome", "dev", "mode.set") == "smarthome/dev/mode/%73et"


def test_an_over_long_topic_is_refused_with_the_reason() -> None:
    """Test a topic over MQTT's 65,535 bytes: a clear error, never a broken topic."""
    long_tag = "x" * MAX_TOPIC_BYTES
    with pytest.raises(TopicError, match="MQTT allows 65535"):
        encode_topic("smarthome", "dev", long_tag)
    # A long level within the limit is fine (MQTT limits topics, not levels).
    assert_valid(encode_topic("smarthome", "dev", "y" * 60000))


@pytest.mark.parametrize("level", ["%2", "%ZZ", "a%", "%FF", "%C3"])
def test_decoding_a_bad_escape_says_where(level: str) -> None:
    """Test that a hand-made ``/set`` topic with a broken escape is a clear error."""
    with pytest.raises(ValueError, match="topic level"):
        decode_level(level)


@given(source=st.text(max_size=40), tag=st.text(max_size=80))
def test_round_trip_of_any_source_and_tag(source: str, tag: str) -> None:
    """Property: every (source, tag) gets a valid topic that decodes back to it."""
    topic = encode_topic("smarthome", source, tag)
    assert_valid(topic)
    assert decode_address(topic[len("smarthome/") :].split("/")) == (source, tag)


@given(text=st.text())
def test_round_trip_of_any_level(text: str) -> None:
    """Property: one level never contains a separator and always decodes back."""
    level = encode_level(text)
    assert level and "/" not in level
    assert decode_level(level) == text
