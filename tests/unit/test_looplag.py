"""Tests of the event-loop lag sampler."""

from __future__ import annotations

import asyncio
import time

import pytest

from edgelink.looplag import LAG_BUCKETS, LoopLagMonitor


def test_recorded_samples_give_percentiles_histogram_and_stalls() -> None:
    """Test that samples land in the right buckets, percentiles and stall count."""
    stalls: list[float] = []
    mon = LoopLagMonitor(threshold=0.1, window=100, on_stall=stalls.append)
    for _ in range(98):
        mon.record(0.002)
    mon.record(0.3)
    mon.record(0.6)
    snap = mon.snapshot()
    assert snap["p50_ms"] == 2.0
    assert snap["p99_ms"] == 600.0
    assert snap["max_ms"] == 600.0
    assert snap["samples"] == 100
    assert snap["stalls"] == 2
    assert stalls == [0.3, 0.6]
    cumulative = dict(mon.buckets())
    assert cumulative[0.005] == 98
    assert cumulative[0.25] == 98
    assert cumulative[0.5] == 99
    assert cumulative[float("inf")] == 100
    assert len(mon.buckets()) == len(LAG_BUCKETS) + 1
    assert mon.sum == pytest.approx(98 * 0.002 + 0.9)


def test_ring_is_bounded_and_forgets_old_samples() -> None:
    """Test that the percentile ring keeps only the last ``window`` samples."""
    mon = LoopLagMonitor(window=10)
    mon.record(5.0)
    for _ in range(10):
        mon.record(0.001)
    assert len(mon._ring) == 10
    snap = mon.snapshot()
    assert snap["recent_max_ms"] == 1.0
    assert snap["max_ms"] == 5000.0  # the all-time maximum stays
    assert snap["samples"] == 11


def test_negative_lag_counts_as_zero() -> None:
    """Test that a timer that fires early never reports negative lag."""
    mon = LoopLagMonitor()
    mon.record(-0.001)
    assert mon.snapshot()["max_ms"] == 0.0


@pytest.mark.parametrize("kwargs", [{"interval": 0}, {"threshold": -1}, {"window": 0}])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    """Test that non-positive settings raise ValueError."""
    with pytest.raises(ValueError, match="positive"):
        LoopLagMonitor(**kwargs)  # type: ignore[arg-type]


async def test_a_blocked_loop_shows_as_one_stall() -> None:
    """Test that blocking the loop for 150 ms is measured as one stall of about that size."""
    stalls: list[float] = []
    mon = LoopLagMonitor(interval=0.01, threshold=0.1, on_stall=stalls.append)
    mon.start()
    assert mon.running
    await asyncio.sleep(0.05)
    time.sleep(0.15)  # a blocking callback on the loop
    await asyncio.sleep(0.05)
    mon.stop()
    assert not mon.running
    assert len(stalls) == 1
    assert 0.1 <= stalls[0] < 0.5
    assert mon.snapshot()["samples"] >= 5
    count = mon.count
    await asyncio.sleep(0.03)
    assert mon.count == count  # stopped means no more samples
