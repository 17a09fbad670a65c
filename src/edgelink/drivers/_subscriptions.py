"""The subscription ledger: what a driver subscribed, replayed after every reconnect, and checked.

Drivers whose device pushes data (MQTT topic filters, ADS device
notifications) subscribe on the link. A new link knows none of that, so
every subscription is kept in a `SubscriptionLedger` and replayed when the link
comes up (`SubscriptionLedger.link_up`). A replay is not trusted blindly: each
entry waits for its first confirmation, which the driver reports as it sees
it: the peer's acknowledgement (`acknowledged`, e.g. an MQTT SUBACK) or, for
an entry that ``expect_data``, its first datum (`data_received`, e.g. the first
message or notification). An entry not confirmed within ``confirm_within``
seconds, or refused by the peer, is *failed*: the ledger says the link is
degraded (its ``on_degraded`` callback, which drivers wire to
`edgelink.connection.Connection.report_degraded`) and replays it again after
a doubling delay (capped at ``retry_max``) until it is confirmed.

An entry's life::

    idle ──link_up / add on a live link──▶ pending ──confirmed──▶ confirmed
                                              │
                  refused, or not confirmed   ▼   replayed again after
                  within confirm_within      failed ◀──┐ confirm_within · 2^n
                                              └────────┘ (degraded meanwhile)

``link_down`` sends every entry back to idle and clears the degraded
reason: a link that is down speaks for itself through its state.

All timers run on the injected clock (`edgelink.testing.ManualClock` in
tests). Not thread-safe: use it on the event loop thread, where drivers'
callbacks run.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgelink.clock import Clock, SystemClock, TimerHandle

__all__ = ["Replay", "Subscription", "SubscriptionLedger", "SubscriptionState"]

logger = logging.getLogger(__name__)

#: ``replay(entries)``: (re-)subscribe these entries on the current link. It
#: must not block; the driver reports the answers later.
Replay = Callable[[Sequence["Subscription"]], None]

#: How many entries a degraded reason names before it says "and N more".
_NAMED_IN_REASON = 3


class SubscriptionState(enum.StrEnum):
    """Where one subscription is on the current link."""

    IDLE = "idle"
    PENDING = "pending"
    CONFIRMED = "confirmed"
    FAILED = "failed"


@dataclass(slots=True, eq=False)
class Subscription:
    """One ledger entry.

    Attributes:
        key: What was subscribed: a topic filter, a symbol name.
        options: Driver-specific options (QoS, cycle time, ...), replayed as they are.
        expect_data: Only a datum confirms this entry, an acknowledgement does not.
        state: Where it is on the current link.
        replays: Times it was (re-)subscribed on the current link.
        replayed_at: Monotonic time of the last replay.
        confirmed_at: Monotonic time it was confirmed on the current link.
        error: Why it failed, while it is failed.
    """

    key: str
    options: dict[str, Any] = field(default_factory=dict)
    expect_data: bool = False
    state: SubscriptionState = SubscriptionState.IDLE
    replays: int = 0
    replayed_at: float | None = None
    confirmed_at: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the entry as a JSON-friendly dict."""
        return {
            "key": self.key,
            "options": dict(self.options),
            "expect_data": self.expect_data,
            "state": str(self.state),
            "replays": self.replays,
            "error": self.error,
        }


class SubscriptionLedger:
    """Keeps a driver's subscriptions, replays them on every new link and checks they took.

    Example:
        ledger = SubscriptionLedger(self._subscribe_on_link, on_degraded=self.report_degraded,
                                    clock=lambda: self.clock, confirm_within=10.0)
        ledger.add("plant/+/power", qos=1)
        ...                                   # the link is up:
        ledger.link_up()                      # calls _subscribe_on_link([entry, ...])
        ledger.acknowledged("plant/+/power")  # the broker's SUBACK granted it

    Args:
        replay: Subscribes entries on the current link (see `Replay`).
        confirm_within: Seconds a replayed entry may wait for its confirmation.
        retry_max: Cap of the doubling delay between replays of a failed entry.
        clock: The clock, or a function returning it (a driver's clock is known
            only once the supervisor attached it); the system clock by default.
        on_degraded: Called with a reason when an entry fails and with None
            when every entry is confirmed again (or the link went down).
        name: Names the ledger in log records (the connection id).

    Raises:
        ValueError: if ``confirm_within`` or ``retry_max`` is not positive.
    """

    def __init__(
        self,
        replay: Replay,
        *,
        confirm_within: float = 10.0,
        retry_max: float = 300.0,
        clock: Clock | Callable[[], Clock] | None = None,
        on_degraded: Callable[[str | None], None] | None = None,
        name: str = "",
    ) -> None:
        if not confirm_within > 0:
            raise ValueError(f"confirm_within must be > 0 seconds, got {confirm_within!r}")
        if not retry_max > 0:
            raise ValueError(f"retry_max must be > 0 seconds, got {retry_max!r}")
        self._replay = replay
        self.confirm_within = float(confirm_within)
        self.retry_max = float(max(retry_max, confirm_within))
        self._clock_source = clock
        self._on_degraded = on_degraded
        self.name = name
        self._entries: dict[str, Subscription] = {}
        # Entries that only a datum confirms and that have not seen one: the
        # driver's message path checks this (usually empty) dict per message.
        self._awaiting: dict[str, Subscription] = {}
        self._up = False
        self._timer: TimerHandle | None = None
        self._degraded: str | None = None

    @property
    def clock(self) -> Clock:
        """The clock deadlines run on."""
        source = self._clock_source
        if source is None:
            self._clock_source = source = SystemClock()
        if isinstance(source, Clock):
            return source
        return source()

    @property
    def is_link_up(self) -> bool:
        """True between `link_up` and `link_down`."""
        return self._up

    @property
    def awaiting_data(self) -> dict[str, Subscription]:
        """Entries on the live link that wait for their first datum, by key (do not modify)."""
        return self._awaiting

    @property
    def degraded_reason(self) -> str | None:
        """Why the ledger says the link is degraded, or None."""
        return self._degraded

    def is_confirmed(self) -> bool:
        """Return True if the link is up and every entry is confirmed."""
        return self._up and all(
            e.state is SubscriptionState.CONFIRMED for e in self._entries.values()
        )

    def get(self, key: str) -> Subscription | None:
        """Return the entry for ``key``, or None."""
        return self._entries.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Subscription]:
        return iter(list(self._entries.values()))

    def keys(self) -> list[str]:
        """Return the subscribed keys in the order they were added."""
        return list(self._entries)

    def as_list(self) -> list[dict[str, Any]]:
        """Return every entry as a dict (for status pages and tests)."""
        return [e.as_dict() for e in self._entries.values()]

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for e in self._entries.values():
            counts[e.state] = counts.get(e.state, 0) + 1
        text = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        link = "up" if self._up else "down"
        return f"<SubscriptionLedger {self.name} link={link} {text or 'empty'}>"

    def add(self, key: str, *, expect_data: bool = False, **options: Any) -> Subscription:
        """Record a subscription; on a live link it is subscribed at once.

        Adding a key again replaces its options (and replays it if they changed).

        Raises:
            ValueError: for an empty key.
        """
        if not key:
            raise ValueError("a subscription key must not be empty")
        entry = self._entries.get(key)
        if entry is None:
            entry = Subscription(key, dict(options), expect_data)
            self._entries[key] = entry
        elif entry.options == options and entry.expect_data == expect_data:
            return entry
        else:
            entry.options = dict(options)
            entry.expect_data = expect_data
        if self._up:
            self._start([entry])
        return entry

    def remove(self, key: str) -> Subscription | None:
        """Forget a subscription (the driver unsubscribes it on the link itself)."""
        entry = self._entries.pop(key, None)
        self._awaiting.pop(key, None)
        if entry is not None:
            entry.state = SubscriptionState.IDLE
            self._update_degraded()
            self._arm()
        return entry

    def link_up(self) -> None:
        """The link is (again) up: replay every entry and start checking them."""
        self._up = True
        entries = list(self._entries.values())
        for entry in entries:
            entry.replays = 0
            entry.error = None
            entry.confirmed_at = None
        self._start(entries)

    def link_down(self) -> None:
        """The link is gone: entries go idle, timers stop, the degraded reason clears."""
        self._up = False
        self._cancel_timer()
        self._awaiting.clear()
        for entry in self._entries.values():
            entry.state = SubscriptionState.IDLE
            entry.replayed_at = None
        self._update_degraded()

    def acknowledged(self, key: str, ok: bool = True, error: str | None = None) -> None:
        """The peer answered the subscription of ``key``: granted (``ok``) or refused.

        A granted entry is confirmed unless it ``expect_data``; a refused one
        fails now (degraded) and is replayed after its delay.
        """
        entry = self._entries.get(key)
        if entry is None or not self._up:
            return
        if ok:
            if not entry.expect_data:
                self._confirm(entry)
            return
        entry.state = SubscriptionState.FAILED
        entry.error = f"refused: {error}" if error else "refused"
        self._awaiting.pop(key, None)
        self._update_degraded()
        self._arm()

    def data_received(self, key: str) -> None:
        """A datum arrived for ``key``: the entry is confirmed."""
        entry = self._entries.get(key)
        if entry is not None and self._up and entry.state is not SubscriptionState.CONFIRMED:
            self._confirm(entry)

    def _confirm(self, entry: Subscription) -> None:
        was_failed = entry.state is SubscriptionState.FAILED
        entry.state = SubscriptionState.CONFIRMED
        entry.confirmed_at = self.clock.monotonic()
        entry.error = None
        self._awaiting.pop(entry.key, None)
        if was_failed:
            logger.info(
                "%s: subscription %r confirmed after %d replays",
                self.name,
                entry.key,
                entry.replays,
            )
        self._update_degraded()
        self._arm()

    def _start(self, entries: Sequence[Subscription]) -> None:
        now = self.clock.monotonic()
        for entry in entries:
            entry.state = SubscriptionState.PENDING
            entry.replays += 1
            entry.replayed_at = now
            if entry.expect_data:
                self._awaiting[entry.key] = entry
            else:
                self._awaiting.pop(entry.key, None)
        self._update_degraded()
        self._call_replay(entries)
        self._arm()

    def _call_replay(self, entries: Sequence[Subscription]) -> None:
        if not entries:
            return
        try:
            self._replay(list(entries))
        except Exception:
            # The entries stay unconfirmed, so their deadline replays them again.
            logger.exception("%s: replaying %d subscriptions failed", self.name, len(entries))

    def _delay(self, entry: Subscription) -> float:
        """How long after its last replay an unconfirmed entry is replayed again."""
        factor = float(2 ** max(entry.replays - 1, 0))
        return min(self.confirm_within * factor, self.retry_max)

    def _arm(self) -> None:
        self._cancel_timer()
        if not self._up:
            return
        deadlines = [
            e.replayed_at + self._delay(e)
            for e in self._entries.values()
            if e.state in (SubscriptionState.PENDING, SubscriptionState.FAILED)
            and e.replayed_at is not None
        ]
        if deadlines:
            clock = self.clock
            self._timer = clock.call_later(
                max(0.0, min(deadlines) - clock.monotonic()), self._on_deadline
            )

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _on_deadline(self) -> None:
        self._timer = None
        if not self._up:
            return
        now = self.clock.monotonic()
        due: list[Subscription] = []
        for entry in self._entries.values():
            if entry.state not in (SubscriptionState.PENDING, SubscriptionState.FAILED):
                continue
            if entry.replayed_at is None or now < entry.replayed_at + self._delay(entry):
                continue
            if entry.state is SubscriptionState.PENDING:
                entry.state = SubscriptionState.FAILED
                what = "data" if entry.expect_data else "confirmation"
                entry.error = f"no {what} within {self._delay(entry):g} s"
            due.append(entry)
        if not due:
            self._arm()
            return
        for entry in due:
            entry.replays += 1
            entry.replayed_at = now
            if entry.expect_data:
                # A refusal took it off the list; the datum this replay brings
                # must still find it, or the entry could never be confirmed.
                self._awaiting[entry.key] = entry
        self._update_degraded()
        logger.debug("%s: replaying %d unconfirmed subscriptions", self.name, len(due))
        self._call_replay(due)
        self._arm()

    def _update_degraded(self) -> None:
        failed = [e for e in self._entries.values() if e.state is SubscriptionState.FAILED]
        reason: str | None = None
        if failed and self._up:
            named = ", ".join(f"{e.key!r} ({e.error})" for e in failed[:_NAMED_IN_REASON])
            more = len(failed) - _NAMED_IN_REASON
            noun = "subscription" if len(failed) == 1 else "subscriptions"
            reason = f"{len(failed)} {noun} unconfirmed: {named}"
            if more > 0:
                reason += f" and {more} more"
        if reason == self._degraded:
            return
        was = self._degraded
        self._degraded = reason
        if reason is not None and was is None:
            logger.warning("%s: %s", self.name, reason)
        elif reason is None and was is not None and self._up:
            logger.info("%s: every subscription confirmed", self.name)
        if self._on_degraded is not None:
            self._on_degraded(reason)
