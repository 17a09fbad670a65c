"""Coarse request deadlines: one loop timer per tick, not one per request.

``asyncio.timeout()`` builds a ``Timeout`` object, pushes a ``TimerHandle`` on
the loop's heap and cancels it again on every use: about 6.5 µs on this
project's machines, more than all the rest of `execute_with_retry` and as much
as a tenth of a request to a device on loopback. Request timeouts are seconds
long and need no microsecond precision, so `DeadlineWheel` rounds each deadline
up to the next tick (50 ms by default) and keeps one bucket per tick; one loop
timer per non-empty tick expires the bucket, cancelling the tasks still inside
it. Leaving the block removes the entry from its bucket in O(1). This is the
hashed timer wheel of Netty and the Linux kernel, shrunk to what asyncio needs.

Semantics match ``asyncio.timeout``: the task inside an expired block is
cancelled, and the cancellation turns into `TimeoutError` at the block's end
unless someone else cancelled the task as well. A deadline fires at most one
tick late, never early.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

__all__ = ["DeadlineWheel"]


class _Deadline:
    """One ``async with wheel.timeout(d)`` block."""

    __slots__ = ("_bucket", "_cancelling", "_delay", "_task", "_wheel", "expired")

    def __init__(self, wheel: DeadlineWheel, delay: float) -> None:
        self._wheel = wheel
        self._delay = delay
        self._task: asyncio.Task[object] | None = None
        self._bucket: set[_Deadline] | None = None
        self._cancelling = 0
        self.expired = False

    async def __aenter__(self) -> _Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("DeadlineWheel.timeout() must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._bucket = self._wheel._enter(self, self._delay)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        bucket = self._bucket
        if bucket is not None:
            bucket.discard(self)
            self._bucket = None
        task = self._task
        # Like asyncio.timeout: uncancel() always undoes our own cancel, and it
        # becomes TimeoutError only if no one else asked to cancel the task.
        if (
            self.expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def _expire(self) -> None:
        self._bucket = None
        task = self._task
        if task is not None and not task.done():
            self.expired = True
            task.cancel()


class DeadlineWheel:
    """Deadlines for many short awaits on one event loop.

    Example:
        wheel = DeadlineWheel()
        async with wheel.timeout(5.0):
            answer = await connection.request(b"PING")

    Args:
        tick: The deadline resolution in seconds: a deadline fires up to one
            tick after it is due, never before.
    """

    def __init__(self, tick: float = 0.05) -> None:
        if tick <= 0:
            raise ValueError("tick must be positive")
        self.tick = tick
        self._buckets: dict[int, set[_Deadline]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def timeout(self, delay: float | None) -> _Deadline | _NoDeadline:
        """Return an async context manager that times out after ``delay`` seconds.

        ``None`` means no deadline. Raises `TimeoutError` at the end of the
        block when the deadline passed inside it.
        """
        if delay is None:
            return _NO_DEADLINE
        return _Deadline(self, delay)

    def __len__(self) -> int:
        """Return the number of deadlines pending."""
        return sum(len(b) for b in self._buckets.values())

    def _enter(self, entry: _Deadline, delay: float) -> set[_Deadline]:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        index = math.ceil((loop.time() + max(0.0, delay)) / self.tick)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = set()
            loop.call_at(index * self.tick, self._fire, index)
        bucket.add(entry)
        return bucket

    def _fire(self, index: int) -> None:
        for entry in self._buckets.pop(index, ()):
            entry._expire()


class _NoDeadline:
    """``timeout(None)``: a block without a deadline."""

    __slots__ = ()

    async def __aenter__(self) -> _NoDeadline:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass


_NO_DEADLINE = _NoDeadline()
