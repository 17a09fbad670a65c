"""The injectable clock: every wait in edgelink goes through one.

`SystemClock` is the real one. `edgelink.testing.ManualClock` is the one tests
advance, so backoff, cooldown and watchdog tests finish in milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "TimerHandle"]


@runtime_checkable
class TimerHandle(Protocol):
    """What `Clock.call_later` returns: something that can be cancelled."""

    def cancel(self) -> None:
        """Cancel the timer; a no-op if it already fired."""


@runtime_checkable
class Clock(Protocol):
    """Time as edgelink sees it.

    ``time()`` is wall-clock seconds (for timestamps people read), ``monotonic()``
    measures intervals, ``sleep`` and ``call_later`` wait on monotonic time.
    ``call_later`` callbacks run on the event loop thread.
    """

    def time(self) -> float:
        """Return wall-clock seconds since the epoch."""

    def monotonic(self) -> float:
        """Return monotonic seconds."""

    async def sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Call ``callback()`` on the running loop after ``delay`` seconds."""


class SystemClock:
    """The real clock: `time.time`, `time.monotonic` and asyncio's timers."""

    def time(self) -> float:
        """Return wall-clock seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Return the event loop's monotonic time (the same base as its timers)."""
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    async def sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds on the running loop."""
        await asyncio.sleep(max(0.0, delay))

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule ``callback`` on the running loop."""
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)

    def __repr__(self) -> str:
        return "<SystemClock>"
