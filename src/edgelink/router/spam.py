"""Spam protection: a sliding window over the datapoints of one connection."""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable
from typing import Any

#: One logger for the whole router (its records keep the name they always had).
logger = logging.getLogger("edgelink.router.engine")

#: ``on_spam(connection_id, info)``: a connection exceeded its budget (called once per trip).
SpamCallback = Callable[[str, dict[str, Any]], None]


class SpamGuard:
    """A sliding window over the datapoints of one connection in the last ``window`` s.

    The window is the arrival times of the datapoints still in it, as C
    doubles (8 bytes each) from ``next`` on: older ones are skipped as time
    passes and cut off once they are half the array. So a link costs what it
    sends in one window, at most ``budget`` slots and their spare room: 80
    bytes at 10 datapoints/s, where a ring of the last ``budget`` times grew
    to 4 KB per link at the default 500/s over its first minute.
    """

    __slots__ = (
        "budget",
        "limit",
        "monotonic",
        "next",
        "on_exceeded",
        "source",
        "stamps",
        "tripped",
        "window",
    )

    def __init__(
        self,
        source: str,
        max_pps: float,
        monotonic: Callable[[], float],
        on_exceeded: SpamCallback | None,
    ) -> None:
        self.source = source
        self.limit = max_pps
        # max_pps datapoints in any one second; below 1/s: one per 1/max_pps seconds.
        if max_pps >= 1:
            self.budget, self.window = int(max_pps), 1.0
        else:
            self.budget, self.window = 1, 1.0 / max_pps
        # Made on the first datapoint: most links of a health-checked fleet
        # never report data.
        self.stamps: array[float] | None = None
        #: Where the window starts in ``stamps`` (before it: arrivals out of the window).
        self.next = 0
        self.monotonic = monotonic
        self.on_exceeded = on_exceeded
        self.tripped = False

    def admit(self) -> bool:
        """Count a datapoint; False once the source went over its budget (trips once)."""
        if self.tripped:
            return False
        now = self.monotonic()
        stamps = self.stamps
        if stamps is None:
            stamps = self.stamps = array("d")
        # Out of the window: arrivals ``window`` s ago or earlier.
        cutoff = now - self.window
        first = self.next
        n = len(stamps)
        while first < n and stamps[first] <= cutoff:
            first += 1
        if n - first >= self.budget:
            self.next = first
            self._trip(now - stamps[first])
            return False
        if first and first * 2 >= n:
            # Amortized O(1): the array is moved once half of it is out.
            del stamps[:first]
            first = 0
        stamps.append(now)
        self.next = first
        return True

    def reset(self) -> None:
        """Lift a trip and forget the window (a person said the source is fine)."""
        self.tripped = False
        self.stamps = None
        self.next = 0

    def _trip(self, elapsed: float) -> None:
        self.tripped = True
        info = {
            "limit_pps": self.limit,
            "count": self.budget + 1,
            "seconds": round(elapsed, 6),
            "window": self.window,
        }
        logger.debug("%s: spam protection tripped (%s)", self.source, info)
        if self.on_exceeded is not None:
            try:
                self.on_exceeded(self.source, info)
            except Exception:
                logger.exception("%s: spam callback failed", self.source)
