"""What a supervisor is given: poll groups, vital-sign watches, the data sink's shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["DataSink", "HealthCheck", "LinkDownListener", "PollSpec", "WatchRule"]


class DataSink(Protocol):
    """``sink(connection_id, tag, value, quality, ts, reason)``: where reported data goes."""

    def __call__(
        self,
        connection_id: str,
        tag: str,
        value: Any,
        quality: str,
        ts: float,
        reason: str | None = None,
    ) -> None:
        """Take one datapoint; ``reason`` says why it is not good, if the source said."""


#: ``on_link_down(connection_id, reason)``: the link of a connection that was up is gone.
LinkDownListener = Callable[[str, str], None]
HealthCheck = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class PollSpec:
    """One poll group: read ``tags`` every ``interval`` seconds while connected."""

    tags: tuple[str, ...]
    interval: float


@dataclass(frozen=True, slots=True)
class WatchRule:
    """A vital-sign watch on one tag (the power monitor seed)."""

    tag: str
    below: float | None = None
    above: float | None = None
    warning_after: int = 1
    critical_after: int = 3
    health_check: bool = False

    def is_bad(self, value: Any) -> bool:
        """Return True if ``value`` is outside the watched range."""
        if isinstance(value, str):
            # Text protocols report numbers as text: "0.0" is a reading too.
            try:
                value = float(value)
            except ValueError:
                return False
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.below is not None and value < self.below:
            return True
        return self.above is not None and value > self.above
