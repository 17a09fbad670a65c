"""Datapoints as strict JSON for the wire (the live stream, the MQTT bridge).

Most values have a JSON form. Those that have none are not an error of the
gateway but of one datapoint: an integer over Python's 4,300-digit limit of
int-to-text conversion, NaN or an infinity (not JSON, and JavaScript's
``JSON.parse`` refuses them), an object that is not text, a number, a
boolean, null, a list or an object. Such a datapoint goes out as ``"value":
null, "quality": "bad", "error": reason``; the first one of each address is
logged once (one WARNING line, no traceback) and every one is counted.

Bytes, dates, times, decimals, UUIDs, paths and enum members are sent as
their text, as before.

Example:
    >>> encoder = WireEncoder("stream")
    >>> encoder.encode({"value": float("nan"), "quality": "good"}, "plc.t")
    '{"value": null, "quality": "bad", "error": "NaN or infinity is not valid JSON"}'
"""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import json.encoder
import logging
import pathlib
import uuid
from typing import Any, Final

__all__ = ["WireEncoder"]

logger = logging.getLogger(__name__)

#: Addresses remembered as already reported; past this, bad values are only counted.
REPORTED_LIMIT: Final = 10_000

_AS_TEXT: Final = (
    bytes,
    bytearray,
    datetime.date,
    datetime.time,
    decimal.Decimal,
    uuid.UUID,
    pathlib.PurePath,
    enum.Enum,
)


#: A text as a JSON string, exactly as `json.dumps` writes it (ASCII, escaped).
_text = json.encoder.encode_basestring_ascii
#: Integers this large or larger take the slow path (int-to-text has a digit limit).
_BIG: Final = 10**300
#: Qualities as JSON strings.
_QUALITIES: Final = {q: _text(q) for q in ("good", "stale", "bad", "uncertain")}


def _scalar(value: Any) -> str | None:
    """Return the JSON of a plain scalar as `json.dumps` writes it, or None for anything else."""
    kind = type(value)
    if kind is float:
        return repr(value) if value - value == 0.0 else None  # NaN and infinities: the slow path
    if kind is int:
        return int.__repr__(value) if -_BIG < value < _BIG else None
    if kind is str:
        return _text(value)
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    return None


def _default(obj: Any) -> str:
    if isinstance(obj, _AS_TEXT):
        return str(obj)
    raise TypeError(f"a {type(obj).__name__} has no JSON form")


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, default=_default, allow_nan=False)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, RecursionError):
        return "value nested too deeply for JSON"
    if "integer string conversion" in text:
        return "integer too long for JSON (over 4300 digits)"
    if "not JSON compliant" in text:
        return "NaN or infinity is not valid JSON"
    return text[:200]


class WireEncoder:
    """Encodes datapoint messages for one channel; what cannot be encoded goes out as bad.

    Args:
        channel: Names the channel in the log line (``stream``, ``bridge``).

    Attributes:
        bad: Messages sent with ``quality: bad`` because their value had no JSON form.
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.bad = 0
        self._reported: set[str] = set()

    def encode_point(self, value: Any, ts: Any, quality: str, address: str) -> str:
        """Return ``{"value", "ts", "quality"}`` as JSON, as `encode` would, faster for scalars.

        The hot path of the bridge: a number, text, boolean or null with a
        numeric ``ts`` is written without building a dict; anything else goes
        through `encode` (same text either way).
        """
        v = _scalar(value)
        t = _scalar(ts) if type(ts) is float or type(ts) is int else None
        q = _QUALITIES.get(quality)
        if v is None or t is None or q is None:
            return self.encode({"value": value, "ts": ts, "quality": quality}, address)
        return f'{{"value": {v}, "ts": {t}, "quality": {q}}}'

    def encode(self, body: dict[str, Any], address: str) -> str:
        """Return ``body`` as JSON; if its ``value`` has no JSON form, as a bad datapoint."""
        try:
            return _dumps(body)
        except (ValueError, TypeError, RecursionError) as exc:
            reason = _reason(exc)
        self.bad += 1
        reported = self._reported
        if address not in reported and len(reported) < REPORTED_LIMIT:
            reported.add(address)
            logger.warning(
                "%s: %s sent as quality bad: %s (reported once per address)",
                self.channel,
                address,
                reason,
            )
        bad = {**body, "value": None, "quality": "bad", "error": reason}
        try:
            return _dumps(bad)
        except (ValueError, TypeError, RecursionError):
            # Not the value then, but what came with it (a NaN timestamp...).
            return _dumps({k: bad[k] for k in bad if isinstance(bad[k], str)} | {"value": None})
