"""`DataPoint`: one value at one address, as the router and the data space see it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = ["DataPoint"]


class DataPoint(NamedTuple):
    """One value at one address: immutable, cheap to build, safe to share between targets.

    Attributes:
        address: ``<endpoint>.<tag>``, e.g. ``plc_1.MAIN.temperature``.
        value: The value as reported (a target gets the route's transformed value).
        ts: Wall-clock seconds when it was measured (or reported).
        quality: ``"good"``, ``"bad"``, ``"uncertain"``... as the source says.
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
            "source": self.source,
            "metadata": dict(self.metadata) if self.metadata else None,
            "path": list(self.path),
        }
