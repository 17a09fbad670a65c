"""Tests of the flap dampening policy: pure, time passed in."""

from __future__ import annotations

import math

import pytest

from edgelink.dampening import Dampening, FlapDamper
from edgelink.settings import ConnectionSettings

#: The documented defaults: penalty 1000, half-life 120 s, suppress 2500, reuse 1000, max 600 s.
DEFAULT = Dampening()


def hold_after(flap_times: list[float], at: float, policy: Dampening = DEFAULT) -> float:
    damper = FlapDamper(policy)
    for t in flap_times:
        damper.record_flap(t)
    return damper.hold_down(at)


@pytest.mark.parametrize(
    ("flaps", "suppressed"),
    [
        ([0.0], False),
        ([0.0, 1.0], False),
        ([0.0, 1.0, 2.0], True),  # three in quick succession
        ([0.0, 60.0, 120.0], False),  # one a minute: 1000, 1707, 2207
        ([0.0, 60.0, 120.0, 180.0], True),  # ...the fourth one a minute later: 2561
        ([0.0, 75.0, 150.0, 225.0], False),  # 2340
        ([0.0, 75.0, 150.0, 225.0, 300.0], True),  # five in 300 s: 2516
        ([0.0, 120.0, 240.0, 360.0, 480.0, 600.0], False),  # one per half-life tends to 2000
    ],
)
def test_when_a_link_counts_as_flapping(flaps: list[float], suppressed: bool) -> None:
    """Test that the defaults suppress quick or sustained flapping and tolerate occasional losses."""
    damper = FlapDamper(DEFAULT)
    results = [damper.record_flap(t) for t in flaps]
    assert results[-1] is suppressed
    assert not any(results[:-1])
    assert damper.flaps == len(flaps)
    assert (damper.suppressed_since == flaps[-1]) is suppressed


@pytest.mark.parametrize(
    ("flaps", "at", "expected"),
    [
        ([0.0, 0.0, 0.0], 0.0, 120 * math.log2(3.0)),  # penalty 3000 decays to 1000
        ([0.0, 0.0, 0.0], 60.0, 120 * math.log2(3.0) - 60),  # the hold-down runs with time
        ([0.0, 0.0, 0.0], 120 * math.log2(3.0), 0.0),  # waited out exactly: released
        ([0.0, 0.0, 0.0], 1e6, 0.0),
        ([0.0, 0.0], 0.0, 0.0),  # never suppressed
        ([0.0] * 50, 0.0, 600.0),  # capped by max_hold_down, however many flaps
    ],
)
def test_hold_down(flaps: list[float], at: float, expected: float) -> None:
    """Test that the hold-down is the time for the penalty to decay to the reuse limit, capped."""
    assert hold_after(flaps, at) == pytest.approx(expected, abs=1e-6)


def test_penalty_decays_with_half_life_and_is_capped() -> None:
    """Test exponential decay by the half-life and the ceiling of max_hold_down."""
    damper = FlapDamper(DEFAULT)
    damper.record_flap(10.0)
    assert damper.penalty(10.0) == 1000.0
    assert damper.penalty(130.0) == pytest.approx(500.0)
    assert damper.penalty(250.0) == pytest.approx(250.0)
    assert damper.penalty(5.0) == 1000.0  # a clock reading from before the flap: no growth
    for _ in range(100):
        damper.record_flap(10.0)
    assert damper.penalty(10.0) == pytest.approx(DEFAULT.ceiling)
    assert DEFAULT.ceiling == pytest.approx(1000.0 * 2**5)


def test_suppression_lasts_until_reuse_then_a_new_flap_adds_up() -> None:
    """Test that a released link is not suppressed again until the penalty passes the limit."""
    damper = FlapDamper(DEFAULT)
    for t in (0.0, 0.0, 0.0):
        damper.record_flap(t)
    release = damper.hold_down(0.0)
    assert damper.is_suppressed(release - 1)
    assert not damper.is_suppressed(release)
    assert damper.suppressed_since is None
    # Back at the reuse limit (1000): one more flap (2000) is tolerated, the next is not.
    assert damper.record_flap(release) is False
    assert damper.record_flap(release + 1) is True
    assert damper.hold_down(release + 1) > 0


def test_reset_forgets_everything() -> None:
    """Test that reset clears penalty, flap count and suppression."""
    damper = FlapDamper(DEFAULT)
    for t in (0.0, 0.0, 0.0):
        damper.record_flap(t)
    damper.reset()
    assert damper.penalty(0.0) == 0.0 and damper.flaps == 0
    assert not damper.is_suppressed(0.0) and damper.hold_down(0.0) == 0.0
    assert "flaps=0" in repr(damper)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"penalty": 0}, "penalty"),
        ({"half_life": 0}, "half_life"),
        ({"reuse_limit": 3000}, "reuse_limit"),
        ({"reuse_limit": 0}, "reuse_limit"),
        ({"max_hold_down": -1}, "max_hold_down"),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, float], message: str) -> None:
    """Test that a policy that cannot work raises ValueError naming the field."""
    with pytest.raises(ValueError, match=message):
        Dampening(**kwargs)


def test_settings_build_the_policy() -> None:
    """Test that the flap_* settings make the policy, can turn it off and are validated."""
    assert ConnectionSettings().dampening() == DEFAULT
    assert ConnectionSettings(flap_dampening=False).dampening() is None
    custom = ConnectionSettings(flap_half_life=30, flap_max_hold_down=60).dampening()
    assert custom is not None and custom.half_life == 30 and custom.max_hold_down == 60
    with pytest.raises(ValueError, match="flap_reuse_limit"):
        ConnectionSettings(flap_reuse_limit=2500)
