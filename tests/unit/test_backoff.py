"""Tests of the backoff policy."""

from __future__ import annotations

import random
from typing import TypedDict

import pytest

from edgelink.backoff import Backoff, JitterMode


class Shape(TypedDict, total=False):
    """The fields of a `Backoff` that shape its base delays."""

    initial: float
    multiplier: float
    max: float


class Policy(Shape, total=False):
    """Every numeric field of a `Backoff`."""

    jitter: float
    max_attempts: int | None


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]),
        ({"initial": 5.0, "multiplier": 1.5, "max": 60.0}, [5.0, 7.5, 11.25, 16.875]),
        ({"initial": 1.0, "multiplier": 1.0, "max": 1.0}, [1.0, 1.0, 1.0]),
        ({"initial": 0.0, "max": 1.0}, [0.0, 0.0]),
    ],
)
def test_base_delays(kwargs: Shape, expected: list[float]) -> None:
    """Test that base delays grow geometrically up to the cap."""
    b = Backoff(jitter=0.0, **kwargs)
    assert [round(b.delay(n), 6) for n in range(1, len(expected) + 1)] == expected


def test_huge_attempt_numbers_stay_capped() -> None:
    """Test that attempt 10**6 neither overflows nor exceeds the cap."""
    b = Backoff(initial=0.1, multiplier=2.0, max=10.0, jitter=0.0)
    assert b.delay(10**6) == 10.0


@pytest.mark.parametrize("attempt", [1, 3, 8, 20])
def test_proportional_jitter_bounds(attempt: int) -> None:
    """Test that proportional jitter stays within ±jitter of the base delay."""
    b = Backoff(jitter=0.2, rng=random.Random(7))
    base = b.base_delay(attempt)
    samples = [b.delay(attempt) for _ in range(2000)]
    assert min(samples) >= base * 0.8 - 1e-12
    assert max(samples) <= base * 1.2 + 1e-12
    # The spread is real: both halves of the band are used.
    assert min(samples) < base * 0.85 and max(samples) > base * 1.15


def test_full_jitter_spans_zero_to_delay() -> None:
    """Test that full jitter draws uniformly from 0..delay."""
    b = Backoff(mode=JitterMode.FULL, rng=random.Random(1))
    samples = [b.delay(5) for _ in range(4000)]
    assert 0 <= min(samples) < 0.1
    assert 1.5 < max(samples) <= 1.6
    assert 0.7 < sum(samples) / len(samples) < 0.9


def test_seeded_rng_is_repeatable() -> None:
    """Test that the same seed gives the same delays."""
    a = Backoff(rng=random.Random(3))
    b = Backoff(rng=random.Random(3))
    assert [a.delay(n) for n in range(1, 9)] == [b.delay(n) for n in range(1, 9)]


@pytest.mark.parametrize(
    ("max_attempts", "attempts", "exhausted"),
    [(10, 9, False), (10, 10, True), (1, 1, True), (None, 10**9, False)],
)
def test_exhausted(max_attempts: int | None, attempts: int, exhausted: bool) -> None:
    """Test that max_attempts=None never gives up and a number gives up exactly there."""
    assert Backoff(max_attempts=max_attempts).exhausted(attempts) is exhausted


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": -1.0},
        {"multiplier": 0.5},
        {"initial": 5.0, "max": 1.0},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"max_attempts": 0},
    ],
)
def test_invalid_policies_raise(kwargs: Policy) -> None:
    """Test that an impossible policy is refused with a ValueError."""
    with pytest.raises(ValueError, match="must be"):
        Backoff(**kwargs)


def test_attempt_is_one_based() -> None:
    """Test that attempt 0 is refused."""
    with pytest.raises(ValueError, match="1-based"):
        Backoff().delay(0)
