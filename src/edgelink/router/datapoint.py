"""`DataPoint`: one value at one address, as the router and the data space see it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

__all__ = ["QUALITY_REASON", "QUALITY_SINCE", "STALE", "DataPoint", "quality_detail"]

#: The quality of a last value whose source stopped delivering (link lost,
#: data watchdog, connection stopped): the value is kept, it is just old.
STALE: Final = "stale"
#: Metadata key: why a datapoint is not ``good`` (``"data_timeout"``, a decode error...).
QUALITY_REASON: Final = "quality_reason"
#: Metadata key: wall-clock seconds since when it is not ``good``.
QUALITY_SINCE: Final = "quality_since"


def quality_detail(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``{"reason", "since"}`` of a datapoint that is not good, from its metadata.

    Payloads (the bridge, the stream, the API) add these keys next to
    ``quality`` only when the source gave them, so a good datapoint keeps
    its shape.
    """
    if not metadata or QUALITY_REASON not in metadata:
        return {}
    return {"reason": metadata[QUALITY_REASON], "since": metadata.get(QUALITY_SINCE)}


class DataPoint(NamedTuple):
    """One value at one address: immutable, cheap to build, safe to share between targets.

    Attributes:
        address: ``<endpoint>.<tag>``, e.g. ``plc_1.MAIN.temperature``.
        value: The value as reported (a target gets the route's transformed value).
        ts: Wall-clock seconds when it was measured (or reported).
        quality: ``"good"``, ``"bad"``, ``"uncertain"``... as the source says, or
            ``"stale"`` once the source stopped delivering (`DataSpace.mark_stale`).
        source: The endpoint that produced it (a connection id, a virtual endpoint).
        metadata: Whatever the source passed along, or None.
        path: The ids of the routes this datapoint has passed, oldest first.
        hops: How many routes it has passed (the loop guard's hop count).

    Example:
        >>> dp = DataPoint("plc_1.MAIN.temp", 21.5, 1.7e9, "good", "plc_1", None)
        >>> dp.tag
        'MAIN.temp'
    """

    address: str
    value: Any
    ts: float
    quality: str
    source: str
    metadata: Mapping[str, Any] | None = None
    path: tuple[str, ...] = ()
    hops: int = 0

    @property
    def tag(self) -> str:
        """The address without its source endpoint (the whole address if it has none)."""
        source = self.source
        address = self.address
        if address.startswith(source) and address[len(source) : len(source) + 1] == ".":
            return address[len(source) + 1 :]
        return address

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (the bridge's and the API's shape)."""
        return {
            "address": self.address,
            "value": self.value,
            "ts": self.ts,
            "quality": self.quality,
            **quality_detail(self.metadata),
            "source": self.source,
            "metadata": dict(self.metadata) if self.metadata else None,
            "path": list(self.path),
        }
