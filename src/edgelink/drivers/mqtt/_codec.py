"""The mqtt driver's codec: payloads to values and back, topic names and filters checked.

Pure functions, no I/O: what a payload decodes to (its JSON value, else the
UTF-8 text, else the bytes), what a value is published as, why a topic or
filter is not valid, and the wire size of a PUBLISH for the traffic counters.
"""

from __future__ import annotations

import json
from typing import Any

from edgelink.errors import DeviceError

__all__ = [
    "decode_payload",
    "encode_payload",
    "filter_error",
    "match_filter",
    "publish_size",
    "topic_error",
]


#: One encoder for all payloads (``json.dumps`` with options builds one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_payload(value: Any) -> bytes:
    """Encode a value for publishing: bytes as they are, str as UTF-8, anything else as JSON.

    Raises:
        DeviceError: if the value has no JSON form (NaN, an object JSON cannot encode).
    """
    kind = type(value)
    if kind is float:
        if value - value == 0.0:  # finite (NaN and the infinities have no JSON form)
            return repr(value).encode()  # what json.dumps writes for a float
    elif kind is int:
        return str(value).encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    try:
        return _ENCODER.encode(value).encode()
    except (TypeError, ValueError) as exc:
        raise DeviceError(f"cannot encode {type(value).__name__} value as JSON: {exc}") from exc


def decode_payload(payload: bytes | bytearray) -> Any:
    """Decode a received payload: its JSON value if it parses, else the UTF-8 text, else bytes."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return payload
    try:
        return json.loads(text)
    except ValueError:
        return text


def filter_error(topic: Any) -> str | None:
    """Why ``topic`` is not a valid MQTT topic filter, or None if it is."""
    if not isinstance(topic, str) or not topic:
        return "must be a non-empty string"
    if "\x00" in topic:
        return "must not contain NUL"
    if len(topic.encode()) > 65535:
        return "is longer than 65535 bytes"
    levels = topic.split("/")
    if topic.startswith("$share/"):
        if len(levels) < 3 or not levels[1] or "+" in levels[1] or "#" in levels[1]:
            return "a shared subscription is $share/<group>/<filter>"
        levels = levels[2:]
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def topic_error(topic: Any) -> str | None:
    """Why ``topic`` is not a valid MQTT topic name (no wildcards), or None."""
    if not isinstance(topic, str) or not topic:
        return "must be a non-empty string"
    if "+" in topic or "#" in topic:
        return "must not contain the wildcards '+' or '#'"
    if "\x00" in topic:
        return "must not contain NUL"
    return None


def match_filter(topic_filter: str) -> str:
    """The part of a filter that topics match (a shared subscription's filter)."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter


def publish_size(topic_len: int, payload_len: int, qos: int) -> int:
    """Wire size of a PUBLISH packet (MQTT 3.1.1; v5 adds its properties length)."""
    remaining = 2 + topic_len + payload_len + (2 if qos else 0)
    header = 2 if remaining < 128 else 3 if remaining < 16384 else 4 if remaining < 2097152 else 5
    return header + remaining
