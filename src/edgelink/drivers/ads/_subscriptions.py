"""The ads driver's notifications: kept in a ledger, added on every link, confirmed by a value.

Notifications are kept in a `SubscriptionLedger` and replayed on every new
link. The PLC sends a notification's current value right after it is added
(TwinCAT does for on-change notifications; a cyclic one delivers within its
cycle), so the first value confirms the entry; one that brings none within
``notification_timeout`` makes the health ``degraded`` and is deleted and
added again with the ledger's doubling delay. The ledger lives on the event
loop (it is not thread-safe and its timers run on the supervisor's clock):
link up and down, values from adslib's notification thread and run-time
`subscribe` calls are handed to the loop
(`edgelink.connection.SyncConnection.call_on_loop`), and the blocking ADS
requests of a replay run in a worker thread, one replay after the other per
connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pyads import constants as ads_constants
from pyads import pyads_ex
from pyads.structs import NotificationAttrib

from edgelink._validation import format_path, validate_model
from edgelink.drivers._subscriptions import Subscription, SubscriptionLedger
from edgelink.drivers.ads._codec import Symbol, decode
from edgelink.drivers.ads._io import AdsLink, notification_sample
from edgelink.drivers.configs import AdsNotification, notification_times_error
from edgelink.errors import ConfigError, ConnectError, DeviceError, PermanentError, ProtocolError

__all__ = ["AdsNotifications", "NotificationSpec", "notification_spec", "refusal_text"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class NotificationSpec:
    """How the PLC is asked to push one symbol: on change or cyclic, and how often."""

    tag: str
    mode: Literal["change", "cycle"] = "change"
    cycle_time: float = 0.1
    max_delay: float = 0.0

    def options(self) -> dict[str, Any]:
        """The ledger entry's options (`from_entry` turns them back into a spec)."""
        return {"mode": self.mode, "cycle_time": self.cycle_time, "max_delay": self.max_delay}

    @classmethod
    def from_entry(cls, entry: Subscription) -> NotificationSpec:
        return cls(entry.key, **entry.options)


def notification_spec(item: AdsNotification) -> NotificationSpec:
    """The spec of a validated notification config item."""
    return NotificationSpec(item.tag, item.mode, item.cycle_time, item.max_delay)


def refusal_text(exc: DeviceError | PermanentError) -> str:
    """What the PLC said when it refused a notification: ``symbol not found (1808)``."""
    cause = exc.cause
    if isinstance(cause, pyads_ex.ADSError):
        return str(cause).removeprefix("ADSError: ").rstrip(". ")
    return exc.message or type(exc).__name__


class AdsNotifications(AdsLink):
    """An ADS link whose notifications survive reconnects: the ledger and its two threads.

    The ledger side runs on the event loop; the ADS requests of a replay or
    delete run in the link's worker (`AdsLink._enqueue`), and values come on
    adslib's notification thread.
    """

    notification_timeout: float

    def _setup_notifications(self, specs: Sequence[NotificationSpec]) -> None:
        """Create the ledger (used on the loop only) and record the configured notifications."""
        #: Live notification handles of this link, by tag (under ``_lock``).
        self._active: dict[str, tuple[int, int | None]] = {}
        self._ledger = SubscriptionLedger(
            self._replay,
            confirm_within=self.notification_timeout,
            clock=lambda: self.clock,
            on_degraded=self.report_degraded,
            name=self.connection_id,
        )
        for spec in specs:
            self._ledger.add(spec.tag, expect_data=True, **spec.options())
        #: The link the ledger is up for (0: down).
        self._ledger_link = 0

    @property
    def subscriptions(self) -> SubscriptionLedger:
        """The notification ledger: what is subscribed and whether its first value came.

        Read it on the event loop thread: it is not thread-safe.
        """
        return self._ledger

    def subscribe(
        self,
        tag: str,
        *,
        mode: Literal["change", "cycle"] = "change",
        cycle_time: float = 0.1,
        max_delay: float = 0.0,
    ) -> None:
        """Have the PLC push ``tag`` (an ADS device notification); values arrive as data.

        The notification is recorded in the ledger, added at once on a live
        link and again after every reconnect. This returns without waiting for
        the PLC: the first value confirms the notification; one that brings
        none within ``notification_timeout``, or that the PLC refuses (a symbol
        it lacks), turns the health ``degraded`` and is added again with a
        doubling delay until it delivers. A symbol the PLC lacks is also
        reported as a datapoint of quality ``bad`` at every attempt; the link
        stays. Calling it again for the same tag with other options replaces
        the notification. Thread-safe.

        Raises:
            ConfigError: for a bad mode or time.
        """
        path = ("config", "notifications", len(self._ledger))
        item = validate_model(
            AdsNotification,
            {"tag": tag, "mode": mode, "cycle_time": cycle_time, "max_delay": max_delay},
            prefix=path,
            connection_id=self.connection_id,
        )
        why = notification_times_error(item, self.notification_timeout)
        if why is not None:
            raise ConfigError(why, path=format_path(path), connection_id=self.connection_id)
        spec = notification_spec(item)
        self._on_ledger(
            functools.partial(self._ledger.add, tag, expect_data=True, **spec.options())
        )

    def unsubscribe(self, tag: str) -> None:
        """Stop the notification for ``tag`` and forget it (no replay). Thread-safe.

        This returns at once: once the event loop took it (at once when called
        there) no further value of ``tag`` is reported, and the notification
        is deleted on the PLC a moment later.
        """
        self._on_ledger(functools.partial(self._forget, tag))

    def _on_ledger(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` where the ledger lives: on the owner's loop, inline while there is none."""
        if self.call_on_loop(fn):
            return
        if not self._ledger.is_link_up:
            # Without a loop the ledger never went up: this only records.
            fn()

    def _link_up(self, link: int) -> None:
        if link != self._live_link():
            return  # that link ended before the loop got here
        self._ledger_link = link
        self._ledger.link_up()

    def _link_down(self, link: int) -> None:
        if link != self._ledger_link:
            return
        self._ledger_link = 0
        self._ledger.link_down()

    def _confirm(self, link: int, tag: str) -> None:
        if link == self._ledger_link:
            self._ledger.data_received(tag)

    def _refused(self, link: int, tag: str, error: str) -> None:
        if link == self._ledger_link:
            self._ledger.acknowledged(tag, ok=False, error=error)

    def _replay(self, entries: Sequence[Subscription]) -> None:
        """(Re-)add ledger entries on the current link; the ADS requests run in a worker."""
        link = self._ledger_link
        if link:
            specs = [NotificationSpec.from_entry(entry) for entry in entries]
            self._enqueue(functools.partial(self._replay_now, link, specs))

    def _forget(self, tag: str) -> None:
        if self._ledger.remove(tag) is not None and self._ledger_link:
            self._enqueue(functools.partial(self._delete_now, self._ledger_link, tag))

    def _replay_now(self, link: int, specs: Sequence[NotificationSpec]) -> None:
        for spec in specs:
            with self._lock:
                if link != self._live_link():
                    return  # that link is gone; the next one replays everything
                try:
                    # A retry replaces the notification that brought nothing.
                    self._unsubscribe_now(spec.tag)
                    self._subscribe_now(spec, link)
                except (DeviceError, PermanentError) as exc:
                    refusal = refusal_text(exc)
                except (ConnectError, ProtocolError) as exc:
                    # The link broke: it is marked broken, its link-down is
                    # queued, and the next link replays everything.
                    logger.debug("%s: replay stopped: %s", self.connection_id, exc)
                    return
                else:
                    continue
            # Not a link failure: say so on the data path and in the ledger, go on.
            logger.debug("%s: cannot subscribe to %s: %s", self.connection_id, spec.tag, refusal)
            self.report_data(spec.tag, None, quality="bad")
            self.call_on_loop(self._refused, link, spec.tag, refusal)

    def _delete_now(self, link: int, tag: str) -> None:
        with self._lock:
            if link == self._live_link():
                with contextlib.suppress(ConnectError, ProtocolError, PermanentError):
                    self._unsubscribe_now(tag)

    def _subscribe_now(self, spec: NotificationSpec, link: int) -> None:
        symbol = self._symbol(spec.tag)
        attrib = NotificationAttrib(
            symbol.size,
            ads_constants.ADSTRANS_SERVERONCHA
            if spec.mode == "change"
            else ads_constants.ADSTRANS_SERVERCYCLE,
            # pyads takes milliseconds here.
            max_delay=spec.max_delay * 1000,
            cycle_time=spec.cycle_time * 1000,
        )
        callback = self._make_callback(symbol, link)
        handles = self._call(
            f"subscribe {spec.tag}",
            pyads_ex.adsSyncAddDeviceNotificationReqEx,
            (ads_constants.ADSIGRP_SYM_VALBYHND, symbol.handle),
            attrib,
            callback,
            symbol=symbol,
        )
        self._active[spec.tag] = (int(handles[0]), None)

    def _unsubscribe_now(self, tag: str) -> None:
        handles = self._active.pop(tag, None)
        if handles is None:
            return
        try:
            self._call(
                f"unsubscribe {tag}",
                pyads_ex.adsSyncDelDeviceNotificationReqEx,
                *handles,
            )
        except DeviceError:
            logger.debug("%s: notification for %s already gone", self.connection_id, tag)
        finally:
            pyads_ex.callback_store.pop((self._adr, handles[0]), None)

    def _make_callback(self, symbol: Symbol, link: int) -> Callable[[Any, Any], None]:
        tag = symbol.name
        ledger = self._ledger

        def on_notification(notification: Any, _data: Any) -> None:
            # Runs on adslib's notification thread: decode, hand over, never raise.
            try:
                raw, ts = notification_sample(notification)
            except Exception:
                logger.exception("%s: bad notification for %s", self.connection_id, tag)
                return
            self.update_stats(packets_received=1, bytes_received=len(raw))
            # Dict lookups, safe from this thread. Unsubscribed: its delete is
            # on the way. Awaiting: the loop put it there before it queued the
            # replay that brought this value.
            if tag not in ledger:
                return
            try:
                value = decode(symbol, raw)
            except (ValueError, TypeError) as exc:
                # Bytes the symbol's type cannot hold (a STRING outside
                # Windows-1252): the value is bad, said once, the link is fine.
                why = f"cannot decode {raw[:32]!r} as {symbol.type_name}: {exc}"
                self.report_data(tag, None, quality="bad", ts=ts, reason=why)
            else:
                self.report_data(tag, value, ts=ts)
            if tag in ledger.awaiting_data:
                self.call_on_loop(self._confirm, link, tag)

        return on_notification
