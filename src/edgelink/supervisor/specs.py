"""What a supervisor is given: poll groups, vital-sign watches, the shapes of its listeners."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edgelink.supervisor.policy import WaitKind

__all__ = [
    "DataSink",
    "HealthCheck",
    "LinkDownListener",
    "LinkObserver",
    "LinkObservers",
    "PollSpec",
    "WakeableLink",
    "WatchRule",
]


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


class WakeableLink(Protocol):
    """A supervised link as an observer sees it."""

    @property
    def connection_id(self) -> str:
        """The connection's id."""

    def wake(self) -> bool:
        """Cut the wait before the next attempt short; return False if none was running."""


class LinkObserver(Protocol):
    """Told where one supervisor's reconnect stands (fleet recovery; failover later).

    Called on the event loop, synchronously, from the supervisor's main task;
    an observer must not block or raise.
    """

    def on_wait(self, link: WakeableLink, kind: WaitKind, delay: float) -> None:
        """The link waits ``delay`` seconds (of ``kind``) before its next attempt."""

    def on_wait_end(self, link: WakeableLink) -> None:
        """That wait is over (elapsed, cut short, or cancelled)."""

    def on_link_up(self, link: WakeableLink, failed_attempts: int) -> None:
        """The link is connected after ``failed_attempts`` failed attempts (0: first try)."""

    def on_link_down(self, link: WakeableLink, reason: str) -> None:
        """The link that was up is gone (lost, stopped, suspended), for ``reason``."""


class LinkObservers:
    """Several `LinkObserver` as one (fleet recovery and failover of one link), in order."""

    __slots__ = ("observers",)

    def __init__(self, *observers: LinkObserver) -> None:
        self.observers = observers

    def on_wait(self, link: WakeableLink, kind: WaitKind, delay: float) -> None:
        """Tell each observer."""
        for observer in self.observers:
            observer.on_wait(link, kind, delay)

    def on_wait_end(self, link: WakeableLink) -> None:
        """Tell each observer."""
        for observer in self.observers:
            observer.on_wait_end(link)

    def on_link_up(self, link: WakeableLink, failed_attempts: int) -> None:
        """Tell each observer."""
        for observer in self.observers:
            observer.on_link_up(link, failed_attempts)

    def on_link_down(self, link: WakeableLink, reason: str) -> None:
        """Tell each observer."""
        for observer in self.observers:
            observer.on_link_down(link, reason)


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
