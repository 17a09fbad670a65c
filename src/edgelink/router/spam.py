"""Spam protection: a sliding window over the datapoints of one connection."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

#: One logger for the whole router (its records keep the name they always had).
logger = logging.getLogger("edgelink.router.engine")

#: ``on_spam(connection_id, info)``: a connection exceeded its budget (called once per trip).
SpamCallback = Callable[[str, dict[str, Any]], None]


class SpamGuard:
    """A sliding window over the last ``budget`` datapoints of one connection."""

    __slots__ = (
        "budget",
        "limit",
        "monotonic",
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
        # Made on the first datapoint: an empty deque is 600 bytes and one more
        # object for the garbage collector, per connection, also for the many
        # that never report data (health-checked links).
        self.stamps: deque[float] | None = None
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
            stamps = self.stamps = deque(maxlen=self.budget)
        if len(stamps) == self.budget and now - stamps[0] < self.window:
            self.tripped = True
            elapsed = now - stamps[0]
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
            return False
        stamps.append(now)
        return True
