"""Event-loop lag: how late the loop runs a callback it was asked to run on time.

One timer per manager, re-armed every ``interval``: the lag of a tick is how
much later than scheduled it ran. A blocking callback, a slow transform or a
garbage-collector pause shows up here as lag, and every health check, request
deadline and datapoint in the process waits for it. The figures are kept in
fixed memory: a histogram since start (cumulative buckets, as Prometheus wants
them) and a ring of the last ``window`` samples for percentiles.

A tick costs one ``call_at`` and a few arithmetic operations: 4 ticks a second
by default, nothing next to a fleet's health checks.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from typing import Any

__all__ = ["LAG_BUCKETS", "LoopLagMonitor"]

#: Upper bounds of the histogram buckets, seconds (the last one is +Inf).
LAG_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopLagMonitor:
    """Samples the running loop's lag and reports stalls.

    Args:
        interval: Seconds between samples.
        threshold: A sample at or above this many seconds is a stall: counted
            and passed to ``on_stall``.
        window: Samples kept for the percentiles (``window * interval`` seconds).
        on_stall: Called with the lag of each stall, on the loop; it must be
            cheap (the manager rate-limits the event it emits from here).
    """

    __slots__ = (
        "_buckets",
        "_handle",
        "_loop",
        "_next",
        "_on_stall",
        "_ring",
        "_ring_pos",
        "count",
        "interval",
        "last_stall_at",
        "max_lag",
        "stalls",
        "sum",
        "threshold",
        "window",
    )

    def __init__(
        self,
        *,
        interval: float = 0.25,
        threshold: float = 0.1,
        window: int = 240,
        on_stall: Callable[[float], None] | None = None,
    ) -> None:
        if interval <= 0 or threshold <= 0 or window < 1:
            raise ValueError("interval, threshold and window must be positive")
        self.interval = interval
        self.threshold = threshold
        self.window = window
        self._on_stall = on_stall
        self._ring: list[float] = []
        self._ring_pos = 0
        self._buckets = [0] * (len(LAG_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0
        self.max_lag = 0.0
        self.stalls = 0
        self.last_stall_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0

    @property
    def running(self) -> bool:
        """Whether the sampler is armed."""
        return self._handle is not None

    def start(self) -> None:
        """Arm the sampler on the running loop (idempotent)."""
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._next = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._next, self._tick)

    def stop(self) -> None:
        """Disarm the sampler; the figures stay readable."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        self.record(now - self._next, now)
        # Re-arm from now, not from the missed slot: a long stall is one
        # sample, not a burst of catch-up ticks.
        self._next = now + self.interval
        self._handle = loop.call_at(self._next, self._tick)

    def record(self, lag: float, now: float | None = None) -> None:
        """Take one sample of ``lag`` seconds (the timer does this; tests may too)."""
        lag = max(lag, 0.0)
        self.count += 1
        self.sum += lag
        self._buckets[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
        self.max_lag = max(self.max_lag, lag)
        if len(self._ring) < self.window:
            self._ring.append(lag)
        else:
            self._ring[self._ring_pos] = lag
            self._ring_pos = (self._ring_pos + 1) % self.window
        if lag >= self.threshold:
            self.stalls += 1
            self.last_stall_at = now
            if self._on_stall is not None:
                self._on_stall(lag)

    def buckets(self) -> list[tuple[float, int]]:
        """Cumulative ``(upper bound, count)`` pairs, the last bound ``inf``."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*LAG_BUCKETS, float("inf")), self._buckets, strict=True):
            total += n
            out.append((bound, total))
        return out

    def snapshot(self) -> dict[str, Any]:
        """Recent percentiles (the ring) and totals since start, in milliseconds."""
        recent = sorted(self._ring)

        def pct(p: float) -> float | None:
            if not recent:
                return None
            return round(recent[min(len(recent) - 1, int(p / 100 * len(recent)))] * 1000, 2)

        return {
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "recent_max_ms": round(recent[-1] * 1000, 2) if recent else None,
            "max_ms": round(self.max_lag * 1000, 2),
            "samples": self.count,
            "stalls": self.stalls,
            "threshold_ms": round(self.threshold * 1000, 1),
        }

    def __repr__(self) -> str:
        snap = self.snapshot()
        return (
            f"<LoopLagMonitor p99={snap['p99_ms']}ms max={snap['max_ms']}ms "
            f"stalls={self.stalls} {'running' if self.running else 'stopped'}>"
        )
