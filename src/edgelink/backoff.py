"""Reconnect delay policy: exponential backoff with jitter. Pure, no I/O.

Example:
    >>> b = Backoff(initial=0.1, multiplier=2.0, max=10.0, jitter=0.0)
    >>> [b.delay(n) for n in (1, 2, 3)]
    [0.1, 0.2, 0.4]
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

__all__ = ["Backoff", "JitterMode"]

#: One random source for every policy that is not given its own: a Mersenne
#: Twister state is 2.5 KB, too much to carry per connection in a fleet of
#: ten thousand (its methods are safe to call from several threads).
_SHARED_RNG = random.Random()


def _shared_rng() -> random.Random:
    return _SHARED_RNG


class JitterMode(enum.StrEnum):
    """How jitter is applied to a delay."""

    #: delay * (1 ± jitter), uniformly: keeps the exponential shape.
    PROPORTIONAL = "proportional"
    #: uniform in [0, delay]: spreads a herd widest ("full jitter").
    FULL = "full"


@dataclass(frozen=True, slots=True)
class Backoff:
    """An exponential backoff policy.

    ``delay(attempt)`` for attempt 1, 2, 3, ... is ``initial * multiplier**(attempt-1)``
    capped at ``max``, then jittered. ``max_attempts=None`` means never give up.

    Args:
        initial: The first delay in seconds (>= 0).
        multiplier: Growth per attempt (>= 1).
        max: The cap in seconds (>= initial).
        jitter: Relative spread for proportional jitter, 0..1.
        max_attempts: Attempts before giving up, or None for forever.
        mode: Proportional or full jitter.
        rng: The random source, injectable for exact tests (default: one shared by all).
    """

    initial: float = 0.1
    multiplier: float = 2.0
    max: float = 10.0
    jitter: float = 0.2
    max_attempts: int | None = 10
    mode: JitterMode = JitterMode.PROPORTIONAL
    rng: random.Random = field(default_factory=_shared_rng, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial < 0:
            raise ValueError(f"initial must be >= 0, got {self.initial}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if self.max < self.initial:
            raise ValueError(f"max ({self.max}) must be >= initial ({self.initial})")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within 0..1, got {self.jitter}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 or None, got {self.max_attempts}")

    def base_delay(self, attempt: int) -> float:
        """Return the delay before ``attempt`` (1-based) without jitter."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        # Cap the exponent so huge attempt counts never overflow a float.
        exp = min(attempt - 1, 1024)
        try:
            raw = self.initial * self.multiplier**exp
        except OverflowError:
            raw = self.max
        return min(raw, self.max)

    def delay(self, attempt: int) -> float:
        """Return the jittered delay before ``attempt`` (1-based), never negative."""
        base = self.base_delay(attempt)
        if self.mode is JitterMode.FULL:
            return self.rng.uniform(0.0, base)
        if self.jitter == 0:
            return base
        return max(0.0, base * (1.0 + self.rng.uniform(-self.jitter, self.jitter)))

    def exhausted(self, attempts: int) -> bool:
        """Return True once ``attempts`` failed attempts reach ``max_attempts``."""
        return self.max_attempts is not None and attempts >= self.max_attempts
