"""A clock that only moves when a test advances it.

Example:
    clock = ManualClock()
    manager = ConnectionManager(clock=clock)
    ...
    await clock.wait_for_sleepers()   # the supervisor is waiting out a backoff delay
    assert clock.pending() == [0.1]
    await clock.advance(0.1)          # and now it is not
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ManualClock"]

#: A timer this close past the target of `ManualClock.advance` is due: `pending`
#: rounds delays to 9 decimals, and advancing by a rounded delay must fire it.
_DUE_SLACK = 1e-9


@dataclass(order=True, slots=True)
class _Timer:
    deadline: float
    seq: int
    callback: Callable[[], None] | None = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = None


class ManualClock:
    """A `edgelink.clock.Clock` whose time is moved by `advance`.

    ``sleep`` and ``call_later`` park until the test advances time past their
    deadline. Timers fire in deadline order; after each one the event loop is
    given a few turns so that woken tasks can run and schedule the next timer.

    Args:
        start: The initial monotonic time.
        wall_start: The wall-clock time that ``monotonic() == start`` maps to.
    """

    def __init__(self, start: float = 0.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._changed: asyncio.Event | None = None

    def time(self) -> float:
        """Return the manual wall-clock time."""
        return self._now + self._wall_offset

    def monotonic(self) -> float:
        """Return the manual monotonic time."""
        return self._now

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        """Call ``callback()`` once time has been advanced by ``delay``."""
        timer = _Timer(self._now + max(0.0, delay), next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        self._notify()
        return timer

    async def sleep(self, delay: float) -> None:
        """Wait until time has been advanced by ``delay``."""
        if delay <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self.call_later(delay, wake)
        try:
            await fut
        finally:
            timer.cancel()

    def pending(self) -> list[float]:
        """Return the remaining delays of the live timers, soonest first."""
        # Rounded: 0.30000000000000004 s left is 0.3 s to a person and a test.
        return sorted(round(t.deadline - self._now, 9) for t in self._timers if not t.cancelled)

    def _live(self) -> int:
        return sum(1 for t in self._timers if not t.cancelled)

    async def wait_for_sleepers(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait (in real time) until at least ``count`` timers are pending.

        Raises:
            TimeoutError: if they do not appear within ``timeout`` real seconds.
        """
        if self._changed is None:
            self._changed = asyncio.Event()
        async with asyncio.timeout(timeout):
            while self._live() < count:
                self._changed.clear()
                await self._changed.wait()

    async def wait_for_timer(
        self, predicate: Callable[[float], bool], timeout: float = 5.0
    ) -> float:
        """Wait (in real time) until a pending timer's remaining delay satisfies ``predicate``.

        Returns:
            That delay.
        """
        if self._changed is None:
            self._changed = asyncio.Event()
        async with asyncio.timeout(timeout):
            while True:
                for delay in self.pending():
                    if predicate(delay):
                        return delay
                self._changed.clear()
                await self._changed.wait()

    @staticmethod
    async def settle(turns: int = 20) -> None:
        """Give the event loop ``turns`` turns so woken tasks can run."""
        for _ in range(turns):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing due timers in order."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        target = self._now + seconds
        while self._timers and self._timers[0].deadline <= target + _DUE_SLACK:
            timer = heapq.heappop(self._timers)
            if timer.cancelled or timer.callback is None:
                continue
            self._now = max(self._now, timer.deadline)
            callback, timer.callback = timer.callback, None
            callback()
            await self.settle()
        # A timer fired within the slack may have moved time a hair past the target.
        self._now = max(self._now, target)
        await self.settle()

    async def advance_to_next(self) -> float:
        """Advance exactly to the soonest pending timer and fire it; return the step taken."""
        live = self.pending()
        if not live:
            return 0.0
        step = live[0]
        await self.advance(step)
        return step

    def __repr__(self) -> str:
        return f"<ManualClock t={self._now:.3f} timers={self._live()}>"
