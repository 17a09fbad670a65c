"""cancel_and_wait and ChildTasks: cancellation is never eaten, crashes are never silent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edgelink._tasks import ChildTasks, cancel_and_wait


async def forever() -> None:
    await asyncio.Event().wait()


async def stubborn(release: asyncio.Event) -> None:
    """Ignore cancellation until ``release`` is set (a driver bug)."""
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue


async def test_cancels_and_waits() -> None:
    """Test that the task is cancelled, awaited, and its cancellation not raised."""
    task = asyncio.get_running_loop().create_task(forever())
    await asyncio.sleep(0)
    assert await cancel_and_wait(task) is True
    assert task.cancelled()


async def test_task_ignoring_cancel_gives_up_after_timeout() -> None:
    """Test that a task that ignores cancellation is waited for ``timeout`` only."""
    release = asyncio.Event()
    task = asyncio.get_running_loop().create_task(stubborn(release))
    await asyncio.sleep(0)
    assert await cancel_and_wait(task, timeout=0.02) is False
    assert not task.done()
    release.set()
    await task


async def test_caller_cancelled_while_waiting_is_raised() -> None:
    """Test that a cancellation of the caller while it waits reaches the caller."""
    release = asyncio.Event()
    inner = asyncio.get_running_loop().create_task(stubborn(release))
    await asyncio.sleep(0)
    outer = asyncio.get_running_loop().create_task(cancel_and_wait(inner))
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert outer.cancelled() and not inner.done()
    release.set()
    await inner


async def test_timeout_around_the_caller_fires() -> None:
    """Test that a stop budget (asyncio.timeout) around a cancel_and_wait is honoured."""
    release = asyncio.Event()
    inner = asyncio.get_running_loop().create_task(stubborn(release))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await cancel_and_wait(inner)
    release.set()
    await inner


async def test_task_already_done() -> None:
    """Test that a finished task is not waited for and gives True."""
    task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    await task
    assert await cancel_and_wait(task) is True
    cancelled = asyncio.get_running_loop().create_task(forever())
    cancelled.cancel()
    await asyncio.wait([cancelled])
    assert await cancel_and_wait(cancelled) is True


async def test_task_that_raises() -> None:
    """Test that what the task raised (other than its cancellation) reaches the caller."""

    async def fails_on_cancel() -> None:
        try:
            await forever()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.get_running_loop().create_task(fails_on_cancel())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)

    async def failed() -> None:
        raise ValueError("earlier")

    done = asyncio.get_running_loop().create_task(failed())
    await asyncio.wait([done])
    with pytest.raises(ValueError, match="earlier"):
        await cancel_and_wait(done)


class Owner:
    def __init__(self) -> None:
        self.crashes: list[tuple[str, BaseException]] = []

    def child_crashed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        self.crashes.append((task.get_name(), exc))


async def test_child_crash_is_reported_and_siblings_keep_running() -> None:
    """Test that a crashed child is reported to the owner and its sibling keeps running."""
    owner = Owner()
    children = ChildTasks(owner)

    async def crash() -> None:
        raise ValueError("boom")

    sibling = children.spawn(forever(), name="x.sibling")
    crasher = children.spawn(crash(), name="x.crash")
    await asyncio.sleep(0.01)
    assert crasher.done()
    assert [(name, str(exc)) for name, exc in owner.crashes] == [("x.crash", "boom")]
    assert not sibling.done() and list(children) == [sibling] and len(children) == 1
    assert "x.sibling" in repr(children)
    await children.aclose()
    assert sibling.cancelled() and len(children) == 0
    assert len(owner.crashes) == 1  # a cancelled child is no crash


async def test_child_failing_at_close_is_reported() -> None:
    """Test that a child that raises while being closed is reported, not silenced."""
    owner = Owner()
    children = ChildTasks(owner)

    async def fails_on_cancel() -> None:
        try:
            await forever()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    bad = children.spawn(fails_on_cancel(), name="x.bad")
    await asyncio.sleep(0)
    await children.aclose()
    assert bad.done()
    assert [str(exc) for _, exc in owner.crashes] == ["cleanup failed"]


async def test_children_close_raises_when_the_caller_is_cancelled() -> None:
    """Test that ChildTasks.aclose lets a cancellation of its caller through."""
    release = asyncio.Event()
    children = ChildTasks(Owner())
    child = children.spawn(stubborn(release), name="x.stubborn")
    await asyncio.sleep(0)
    closing = asyncio.get_running_loop().create_task(children.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert list(children) == [child]  # still owned until it ends
    release.set()
    await children.aclose()
    assert len(children) == 0
