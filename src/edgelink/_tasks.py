"""Task ownership: cancel a task without eating our own cancellation; own child tasks.

Pure asyncio, no edgelink imports: every layer may use it.

- `cancel_and_wait` is the one way to end a task we started. The habit it
  replaces, ``task.cancel(); with suppress(CancelledError): await task``,
  also swallows a cancellation aimed at the *caller* (a stop budget running
  out, a person pressing Ctrl-C), so the caller keeps going as if nothing
  had happened.
- `ChildTasks` owns the tasks a component runs beside its main task. Unlike
  `asyncio.TaskGroup` a crashed child does not cancel its siblings: the
  owner is told (`CrashListener.child_crashed`) and decides (the Supervisor
  restarts the child with a backoff). Nothing is silenced: a crash is
  always reported to the owner, also while the children are being closed.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Collection, Coroutine, Iterator
from typing import Any, Protocol

__all__ = ["ChildTasks", "CrashListener", "cancel_and_wait"]

_NO_CONTEXT = contextvars.Context()


async def cancel_and_wait(task: asyncio.Future[Any], *, timeout: float | None = None) -> bool:
    """Cancel ``task`` and wait until it has ended.

    The task's own cancellation is expected and not raised. A cancellation of
    the caller while it waits is raised (the caller does not wait for the task
    then: it was cancelled already and ends on its own).

    Args:
        task: The task (or future) to end. One that is done already is not waited for.
        timeout: Give up waiting after this many seconds (a task that ignores
            cancellation); None waits as long as it takes.

    Returns:
        True if the task has ended; False if it still runs after ``timeout``.

    Raises:
        asyncio.CancelledError: the caller itself was cancelled while waiting.
        BaseException: what the task raised, other than its cancellation (as
            ``await task`` would).
    """
    if not task.done():
        task.cancel()
        await _wait_ended((task,), timeout)
        if not task.done():
            return False
    if not task.cancelled():
        exc = task.exception()
        if exc is not None:
            raise exc
    return True


async def _wait_ended(tasks: Collection[asyncio.Future[Any]], timeout: float | None) -> None:
    """Wait for ``tasks`` to end; raise CancelledError only if the caller was cancelled."""
    current = asyncio.current_task()
    before = current.cancelling() if current is not None else 0
    # asyncio.wait never raises the tasks' outcome, so a CancelledError coming
    # out of it can only be aimed at us.
    await asyncio.wait(tasks, timeout=timeout)
    if current is not None and current.cancelling() > before:
        # Cancelled after the wait was over but before we resumed.
        raise asyncio.CancelledError


class CrashListener(Protocol):
    """The owner of a `ChildTasks`: told when a child ended with an exception."""

    def child_crashed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        """Handle the crash of ``task`` (called on the loop, after the task ended)."""


class ChildTasks:
    """The tasks one owner runs beside its main task; a crash is reported, never spread.

    Kept small on purpose (one per connection): a set of tasks and one done
    callback, no per-task objects of its own.

    Example:
        children = ChildTasks(owner)
        children.spawn(run_health(), name="edgelink[plc_1].health")
        ...
        await children.aclose()
    """

    __slots__ = ("_done", "_owner", "_tasks")

    def __init__(self, owner: CrashListener) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        # One bound method for every child, not one per spawn.
        self._done = self._child_done

    def start(self, coro: Coroutine[Any, Any, Any], *, name: str) -> None:
        """Start ``coro`` as a child task named ``name``; this owner keeps it (see `spawn`)."""
        self._own(asyncio.get_running_loop().create_task(coro, name=name))

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start ``coro`` as a child task named ``name``, own it, and return it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._own(task)
        return task

    def _own(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        # The callback needs no context variables: the empty context spares
        # a context copy per child.
        task.add_done_callback(self._done, context=_NO_CONTEXT)

    def _child_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._owner.child_crashed(task, exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    async def aclose(self) -> None:
        """Cancel every child and wait until all have ended.

        A child that raised while being cancelled is still reported to the
        owner. The group can be used again afterwards.

        Raises:
            asyncio.CancelledError: the caller was cancelled while waiting (the
                children are cancelled and stay owned until they end).
        """
        tasks = [task for task in self._tasks if not task.done()]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        await _wait_ended(tasks, None)

    def __repr__(self) -> str:
        return f"<ChildTasks {sorted(t.get_name() for t in self._tasks)}>"
