"""Tests of the coarse request deadlines (DeadlineWheel)."""

from __future__ import annotations

import asyncio

import pytest

from edgelink._deadline import DeadlineWheel


async def test_deadline_raises_timeout_error_at_most_one_tick_late() -> None:
    """Test that an overrun block ends in TimeoutError, not early and at most a tick late."""
    wheel = DeadlineWheel(tick=0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError), wheel.timeout(0.05):
        await asyncio.sleep(10)
    elapsed = loop.time() - started
    assert 0.05 <= elapsed < 0.05 + 0.01 + 0.05  # one tick, plus scheduling slack
    assert len(wheel) == 0


async def test_block_that_finishes_in_time_returns_and_leaves_nothing_behind() -> None:
    """Test that a block finishing before its deadline is not cancelled later."""
    wheel = DeadlineWheel(tick=0.01)
    with wheel.timeout(0.05):
        await asyncio.sleep(0)
    assert len(wheel) == 0
    # The bucket's timer still fires; it must not cancel this task afterwards.
    await asyncio.sleep(0.08)


async def test_outside_cancel_stays_cancelled_error() -> None:
    """Test that a cancel from outside is not turned into TimeoutError."""
    wheel = DeadlineWheel(tick=0.01)

    async def body() -> None:
        with wheel.timeout(5):
            await asyncio.sleep(10)

    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(wheel) == 0


async def test_none_means_no_deadline() -> None:
    """Test that timeout(None) never cancels."""
    wheel = DeadlineWheel(tick=0.01)
    with wheel.timeout(None):
        await asyncio.sleep(0.03)
    assert len(wheel) == 0


async def test_many_deadlines_share_one_timer_per_tick() -> None:
    """Test that many concurrent deadlines expire together and each raises TimeoutError."""
    wheel = DeadlineWheel(tick=0.02)

    async def body() -> str:
        try:
            with wheel.timeout(0.03):
                await asyncio.sleep(10)
        except TimeoutError:
            return "timeout"
        return "done"

    results = await asyncio.gather(*(body() for _ in range(200)))
    assert results == ["timeout"] * 200
    assert len(wheel) == 0


def test_tick_must_be_positive() -> None:
    """Test that a zero tick is refused."""
    with pytest.raises(ValueError, match="tick"):
        DeadlineWheel(tick=0)


async def test_arm_and_disarm_without_a_block() -> None:
    """Test that arm/disarm turn the deadline's cancel into a timeout exactly once."""
    wheel = DeadlineWheel(tick=0.01)
    deadline = wheel.arm(0.02)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(10)
    assert deadline.expired
    assert wheel.disarm(deadline, cancelled=True) is True
    assert wheel.disarm(deadline, cancelled=True) is False  # idempotent
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0  # our cancel was undone
    await asyncio.sleep(0)  # the task is usable again


async def test_disarmed_deadline_never_fires() -> None:
    """Test that a deadline ended in time leaves the task alone when its tick comes."""
    wheel = DeadlineWheel(tick=0.01)
    deadline = wheel.arm(0.02)
    assert wheel.disarm(deadline) is False
    await asyncio.sleep(0.05)
    assert not deadline.expired
    assert len(wheel) == 0


def test_arm_outside_a_task_is_refused() -> None:
    """Test that arming without a running task raises RuntimeError."""
    with pytest.raises(RuntimeError):
        DeadlineWheel().arm(1.0)
