"""Flap dampening: hold a link that keeps going up and down. Pure, no I/O.

Route-flap dampening as routers do it: every time a link that was up goes
down it earns a fixed ``penalty``; the penalty decays exponentially with a
``half_life``. When it reaches the ``suppress_limit`` the link is *suppressed*
(flagged ``flapping``): its reconnect is held down until the penalty has
decayed below the ``reuse_limit``. The penalty never exceeds a ceiling chosen
so that no hold-down lasts longer than ``max_hold_down``. A link that flaps
once in a while never gets near the suppress limit; one that flaps in a loop
is held for longer each time it comes back and drops again at once.

`Dampening` is the policy (a frozen value, shared); `FlapDamper` is the state
of one link. Time is passed in as ``now`` (a monotonic clock reading), so the
caller decides which clock and tests need none.

Example:
    >>> policy = Dampening(penalty=1000, half_life=60, suppress_limit=2500, reuse_limit=1000)
    >>> damper = FlapDamper(policy)
    >>> [damper.record_flap(now) for now in (0.0, 1.0, 2.0)]
    [False, False, True]
    >>> round(damper.hold_down(2.0))
    94
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Dampening", "FlapDamper"]


@dataclass(frozen=True, slots=True)
class Dampening:
    """A flap dampening policy.

    Args:
        penalty: Added on every flap (a link that was up went down), > 0.
        half_life: Seconds for the penalty to halve, > 0.
        suppress_limit: A penalty at or above this suppresses the link.
        reuse_limit: A suppressed link is released once its penalty decays below this.
        max_hold_down: The longest a link is ever held down, s.

    Raises:
        ValueError: for limits that cannot work (reuse not below suppress, ...).
    """

    penalty: float = 1000.0
    half_life: float = 120.0
    suppress_limit: float = 2500.0
    reuse_limit: float = 1000.0
    max_hold_down: float = 600.0

    def __post_init__(self) -> None:
        if self.penalty <= 0:
            raise ValueError(f"penalty must be > 0, got {self.penalty}")
        if self.half_life <= 0:
            raise ValueError(f"half_life must be > 0, got {self.half_life}")
        if not 0 < self.reuse_limit < self.suppress_limit:
            raise ValueError(
                f"need 0 < reuse_limit ({self.reuse_limit}) < "
                f"suppress_limit ({self.suppress_limit})"
            )
        if self.max_hold_down <= 0:
            raise ValueError(f"max_hold_down must be > 0, got {self.max_hold_down}")

    @property
    def ceiling(self) -> float:
        """The highest penalty: one that decays to the reuse limit in ``max_hold_down``.

        Never below the suppress limit, so a link can always be suppressed.
        """
        # Capping the exponent keeps a silly max_hold_down from overflowing.
        exponent = min(self.max_hold_down / self.half_life, 1000.0)
        return max(self.reuse_limit * math.pow(2.0, exponent), self.suppress_limit)

    def decayed(self, penalty: float, elapsed: float) -> float:
        """Return ``penalty`` after ``elapsed`` seconds of decay."""
        if elapsed <= 0:
            return penalty
        return penalty * math.pow(0.5, elapsed / self.half_life)


class FlapDamper:
    """The flap state of one link under a `Dampening` policy.

    Attributes:
        flaps: Flaps recorded since the last `reset`.
        suppressed_since: The ``now`` at which the current suppression began, or None.
    """

    __slots__ = ("_penalty", "_updated", "flaps", "policy", "suppressed_since")

    def __init__(self, policy: Dampening) -> None:
        self.policy = policy
        self._penalty = 0.0
        self._updated = 0.0
        self.flaps = 0
        self.suppressed_since: float | None = None

    def __repr__(self) -> str:
        return (
            f"<FlapDamper flaps={self.flaps} penalty={self._penalty:.0f} "
            f"suppressed={self.suppressed_since is not None}>"
        )

    def penalty(self, now: float) -> float:
        """Return the penalty at ``now``."""
        return self.policy.decayed(self._penalty, now - self._updated)

    def record_flap(self, now: float) -> bool:
        """Add one flap's penalty at ``now``; return True if the link is suppressed now."""
        p = self.policy
        self._penalty = min(self.penalty(now) + p.penalty, p.ceiling)
        self._updated = now
        self.flaps += 1
        if self.suppressed_since is None and self._penalty >= p.suppress_limit:
            self.suppressed_since = now
        return self.is_suppressed(now)

    def is_suppressed(self, now: float) -> bool:
        """Return True while the link is held down; the release happens here, at ``now``."""
        # The tolerance absorbs float rounding: a hold-down waited out exactly
        # must release, not leave a nanosecond to wait.
        reuse = self.policy.reuse_limit * (1.0 + 1e-9)
        if self.suppressed_since is not None and self.penalty(now) < reuse:
            self.suppressed_since = None
        return self.suppressed_since is not None

    def hold_down(self, now: float) -> float:
        """Return the seconds until a suppressed link may reconnect (0.0 if not suppressed)."""
        if not self.is_suppressed(now):
            return 0.0
        p = self.policy
        # penalty * 0.5**(t/half_life) = reuse  =>  t = half_life * log2(penalty/reuse).
        wait = p.half_life * math.log2(self.penalty(now) / p.reuse_limit)
        return min(max(wait, 0.0), p.max_hold_down)

    def reset(self) -> None:
        """Forget every flap (an admin restarted or resumed the link)."""
        self._penalty = 0.0
        self.flaps = 0
        self.suppressed_since = None
