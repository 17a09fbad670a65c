"""Tests of the clocks."""

from __future__ import annotations

import asyncio

import pytest

from edgelink.clock import Clock, SystemClock
from edgelink.testing import ManualClock


async def test_manual_clock_wakes_sleepers_in_deadline_order() -> None:
    """Test that advancing fires sleepers in deadline order and no earlier."""
    clock = ManualClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, delay: float) -> None:
        await clock.sleep(delay)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, d)) for n, d in (("b", 2.0), ("a", 1.0), ("c", 5.0))]
    await clock.wait_for_sleepers(3)
    assert clock.pending() == [1.0, 2.0, 5.0]
    await clock.advance(0.5)
    assert woke == []
    await clock.advance(1.6)
    assert woke == [("a", 1.0), ("b", 2.0)]
    assert clock.monotonic() == pytest.approx(2.1)
    await clock.advance(10)
    assert woke[-1] == ("c", 5.0)
    await asyncio.gather(*tasks)


async def test_cancelled_sleep_leaves_no_timer() -> None:
    """Test that cancelling a sleeper removes its timer."""
    clock = ManualClock()
    task = asyncio.create_task(clock.sleep(3))
    await clock.wait_for_sleepers(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending() == []


async def test_call_later_and_cancel() -> None:
    """Test that call_later fires once at its time and a cancelled timer never fires."""
    clock = ManualClock(start=100.0, wall_start=1000.0)
    fired: list[float] = []
    clock.call_later(1.0, lambda: fired.append(clock.monotonic()))
    handle = clock.call_later(2.0, lambda: fired.append(-1))
    handle.cancel()
    await clock.advance(5)
    assert fired == [101.0]
    assert clock.time() == 1005.0


async def test_advance_to_next_and_wait_for_timer() -> None:
    """Test that tests can find a timer by its delay and jump exactly to it."""
    clock = ManualClock()
    task = asyncio.create_task(clock.sleep(0.25))
    assert await clock.wait_for_timer(lambda d: d > 0.2) == 0.25
    assert await clock.advance_to_next() == 0.25
    await task
    with pytest.raises(ValueError, match="backwards"):
        await clock.advance(-1)


async def test_system_clock_is_a_clock() -> None:
    """Test that the real clock satisfies the protocol and really waits."""
    clock = SystemClock()
    assert isinstance(clock, Clock)
    assert isinstance(ManualClock(), Clock)
    fired = asyncio.Event()
    clock.call_later(0.01, fired.set)
    t0 = clock.monotonic()
    await clock.sleep(0.02)
    assert clock.monotonic() - t0 >= 0.015
    assert fired.is_set()


async def test_advancing_by_a_pending_delay_fires_its_timer() -> None:
    """Test that advancing by what pending() reports fires the timer, float rounding or not."""
    # 763.77... + 0.765... is 764.5398260538324; pending() says 0.765207077 (9 decimals),
    # and 763.77... + 0.765207077 is 764.5398260536141: 2e-10 s short of the deadline.
    clock = ManualClock(start=763.7746189766141)
    fired: list[float] = []
    clock.call_later(0.7652070772182651, lambda: fired.append(clock.monotonic()))
    (delay,) = clock.pending()
    assert delay == 0.765207077
    await clock.advance(delay)
    assert fired == [764.5398260538324]
    assert clock.pending() == []
    assert clock.monotonic() == 764.5398260538324  # never moved back to the target
    clock.call_later(0.7652070772182651, lambda: fired.append(clock.monotonic()))
    assert await clock.advance_to_next() == 0.765207077
    assert len(fired) == 2
