"""The bridge's topic encoding: every source id and tag gets a valid, reversible MQTT topic.

A datapoint ``source.tag`` goes to ``{base}/{source}/{tag}`` where the dots of
the tag become levels (``plc_1`` + ``MAIN.temperature`` ->
``smarthome/plc_1/MAIN/temperature``). Ordinary ids and tags keep exactly that
topic. What MQTT forbids, or what would make a topic ambiguous, is escaped
inside each level as ``%XX`` (the UTF-8 bytes, upper-case hex):

- ``%`` itself (the escape character), ``/`` inside a tag segment or an id
  (it would add a level), ``#`` and ``+`` (wildcards, refused in a topic name),
  NUL and the other control characters U+0001..U+001F, U+007F..U+009F
  (brokers refuse them or drop the client), lone surrogates (not UTF-8) and
  the non-characters U+FFFE, U+FFFF;
- a ``$`` at the start of a level (``$``-topics are the broker's);
- a level that is exactly ``set`` (``.../set`` is the bridge's back-path), as
  ``%73et``;
- an empty level (an empty id, a tag like ``a..b`` or ``.x``) is the lone ``%``.

Decoding reverses this exactly (`decode_address`), so the ``/set`` back-path
finds the device tag a topic was made from. The JSON-pointer tag
``/status#/power/ac`` of source ``sim`` goes to ``smarthome/sim/%2Fstatus%23%2Fpower%2Fac``.

MQTT limits a whole topic to 65,535 UTF-8 bytes and sets no limit per level.
A topic over that limit cannot be shortened reversibly (cutting loses the
tag, hashing cannot be decoded, splitting would change the levels
subscribers filter on), so `encode_topic` refuses it with `TopicError` and the
bridge dead-letters that datapoint with the reason.
"""

from __future__ import annotations

import functools
import re

__all__ = [
    "MAX_TOPIC_BYTES",
    "TopicError",
    "decode_address",
    "decode_level",
    "encode_group_topic",
    "encode_level",
    "encode_topic",
]

#: The longest topic MQTT allows, in UTF-8 bytes.
MAX_TOPIC_BYTES = 65535

_ALWAYS = frozenset("%/#+\ufffe\uffff")
#: Any character `encode_level` escapes (the fast path skips levels without one).
_ANY_UNSAFE = re.compile("[%/#+\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
#: The level the bridge's ``/set`` back-path ends with; a tag level of that name is escaped.
_RESERVED = "set"


class TopicError(ValueError):
    """A datapoint has no valid MQTT topic (only: longer than `MAX_TOPIC_BYTES`)."""


def _escape(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def _unsafe(ch: str) -> bool:
    cp = ord(ch)
    return ch in _ALWAYS or cp <= 0x1F or 0x7F <= cp <= 0x9F or 0xD800 <= cp <= 0xDFFF


def encode_level(text: str) -> str:
    """Return ``text`` as one valid, unambiguous topic level (reversed by `decode_level`)."""
    if not text:
        return "%"
    if text == _RESERVED:
        return "%73et"
    if text[0] != "$" and _ANY_UNSAFE.search(text) is None:
        return text
    out = [_escape(ch) if _unsafe(ch) else ch for ch in text]
    if text[0] == "$":
        out[0] = "%24"
    return "".join(out)


def decode_level(level: str) -> str:
    """Reverse `encode_level`.

    Raises:
        ValueError: if ``level`` is not something `encode_level` makes
            (a ``%`` not followed by two hex digits, or bytes that are not UTF-8).
    """
    if level == "%":
        return ""
    if "%" not in level:
        return level
    raw = bytearray()
    i = 0
    while i < len(level):
        ch = level[i]
        if ch == "%":
            pair = level[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in "0123456789ABCDEFabcdef" for c in pair):
                raise ValueError(f"bad escape at {i} in topic level {level!r}")
            raw.append(int(pair, 16))
            i += 3
        else:
            raw += ch.encode("utf-8", "surrogatepass")
            i += 1
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ValueError(f"topic level {level!r} escapes bytes that are not UTF-8") from exc


@functools.lru_cache(maxsize=4096)
def encode_topic(base: str, source: str, tag: str) -> str:
    """Return the topic of datapoint ``source.tag`` under ``base``.

    Raises:
        TopicError: if the topic would be longer than `MAX_TOPIC_BYTES`.
    """
    levels = [encode_level(source), *(encode_level(part) for part in tag.split("."))]
    return _checked(f"{base}/{'/'.join(levels)}")


def _checked(topic: str) -> str:
    size = len(topic) if topic.isascii() else len(topic.encode())
    if size > MAX_TOPIC_BYTES:
        raise TopicError(f"topic is {size} bytes long, MQTT allows {MAX_TOPIC_BYTES}")
    return topic


@functools.lru_cache(maxsize=4096)
def encode_group_topic(base: str, source: str) -> str:
    """Return the topic of connection ``source``'s group messages: ``{base}/{source}``.

    A connection id that is exactly ``status`` is escaped as ``%73tatus``, so
    its groups never overwrite the bridge's own ``{base}/status``.

    Raises:
        TopicError: if the topic would be longer than `MAX_TOPIC_BYTES`.
    """
    level = encode_level(source)
    if level == "status":
        level = "%73tatus"
    return _checked(f"{base}/{level}")


def decode_address(levels: list[str]) -> tuple[str, str]:
    """Return ``(source, tag)`` from the levels after the base topic (reverses `encode_topic`).

    Raises:
        ValueError: for fewer than two levels or a level with a bad escape.
    """
    if len(levels) < 2:
        raise ValueError("a datapoint topic has a source level and at least one tag level")
    return decode_level(levels[0]), ".".join(decode_level(level) for level in levels[1:])
