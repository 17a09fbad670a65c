"""Coarse request deadlines: one loop timer per tick, not one per request.

``asyncio.timeout()`` builds a ``Timeout`` object, pushes a ``TimerHandle`` on
the loop's heap and cancels it again on every use: about 4-6 µs on this
project's machines, more than all the rest of `execute_with_retry` and a
tenth of a request to a device on loopback; the cancelled handles also stay on
the heap until their time comes, which at 10,000 health checks every few
seconds keeps the garbage collector busy. Request timeouts are seconds long
and need no microsecond precision, so `DeadlineWheel` rounds each deadline up
to the next tick (50 ms by default) and keeps one bucket per tick; one loop
timer per non-empty tick expires the bucket, cancelling the tasks still inside
it. Ending a deadline removes it from its bucket in O(1). This is the hashed
timer wheel of Netty and the Linux kernel, shrunk to what asyncio needs.

Semantics match ``asyncio.timeout``: the task inside an expired deadline is
cancelled, and that cancellation becomes `TimeoutError` unless someone else
cancelled the task as well. A deadline fires at most one tick late, never early.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

__all__ = ["Deadline", "DeadlineWheel"]


class Deadline:
    """One armed deadline; made by `DeadlineWheel.arm`, ended by `DeadlineWheel.disarm`."""

    __slots__ = ("_bucket", "_cancelling", "_task", "_uncancelled", "expired")

    def __init__(self, task: asyncio.Task[object], bucket: set[Deadline]) -> None:
        self._task = task
        self._cancelling = task.cancelling()
        self._bucket: set[Deadline] | None = bucket
        self._uncancelled = False
        #: True once the deadline passed while armed (its task was cancelled).
        self.expired = False

    def _expire(self) -> None:
        self._bucket = None
        if not self._task.done():
            self.expired = True
            self._task.cancel()


class _Block:
    """``with wheel.timeout(d):``, a plain context manager over arm/disarm.

    Not async: entering and leaving need no await, and ``async with`` would
    cost two coroutine objects more per use.
    """

    __slots__ = ("_deadline", "_delay", "_wheel")

    def __init__(self, wheel: DeadlineWheel, delay: float | None) -> None:
        self._wheel = wheel
        self._delay = delay
        self._deadline: Deadline | None = None

    def __enter__(self) -> _Block:
        if self._delay is not None:
            self._deadline = self._wheel.arm(self._delay)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        deadline = self._deadline
        if deadline is not None and DeadlineWheel.disarm(
            deadline, cancelled=exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc


class DeadlineWheel:
    """Deadlines for many short awaits on one event loop.

    Example:
        wheel = DeadlineWheel()
        with wheel.timeout(5.0):
            answer = await connection.request(b"PING")

        deadline = wheel.arm(5.0)          # the same, without a block
        try:
            answer = await connection.request(b"PING")
        except asyncio.CancelledError:
            if not wheel.disarm(deadline, cancelled=True):
                raise
            raise TimeoutError from None
        finally:
            wheel.disarm(deadline)

    Args:
        tick: The deadline resolution in seconds: a deadline fires up to one
            tick after it is due, never before.
    """

    def __init__(self, tick: float = 0.05) -> None:
        if tick <= 0:
            raise ValueError("tick must be positive")
        self.tick = tick
        self._buckets: dict[int, set[Deadline]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def timeout(self, delay: float | None) -> _Block:
        """Return a context manager that times out after ``delay`` seconds.

        Use it with plain ``with`` inside a coroutine running in a task;
        ``None`` means no deadline. The block raises `TimeoutError` when the
        deadline passed inside it.
        """
        return _Block(self, delay)

    def arm(self, delay: float) -> Deadline:
        """Start a deadline of ``delay`` seconds for the current task.

        Raises:
            RuntimeError: outside a task.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("DeadlineWheel.arm() must be called inside a task")
        if loop is not self._loop:
            # Buckets of another (closed) loop will never fire: start afresh.
            self._loop = loop
            self._buckets = {}
        index = math.ceil((loop.time() + max(0.0, delay)) / self.tick)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = set()
            loop.call_at(index * self.tick, self._fire, index)
        deadline = Deadline(task, bucket)
        bucket.add(deadline)
        return deadline

    @staticmethod
    def disarm(deadline: Deadline, *, cancelled: bool = False) -> bool:
        """End a deadline; idempotent.

        Args:
            deadline: What `arm` returned.
            cancelled: True when called while handling the task's CancelledError.

        Returns:
            True when ``cancelled`` and that cancellation came from this deadline
            alone: the caller should raise `TimeoutError` instead.
        """
        bucket = deadline._bucket
        if bucket is not None:
            bucket.discard(deadline)
            deadline._bucket = None
        if not deadline.expired or deadline._uncancelled:
            return False
        # Like asyncio.timeout: undo our own cancel once; it is a timeout only
        # if no one else asked to cancel the task meanwhile.
        deadline._uncancelled = True
        return deadline._task.uncancel() <= deadline._cancelling and cancelled

    def __len__(self) -> int:
        """Return the number of deadlines armed."""
        return sum(len(b) for b in self._buckets.values())

    def _fire(self, index: int) -> None:
        for deadline in self._buckets.pop(index, ()):
            deadline._expire()
