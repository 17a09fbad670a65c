"""Polling: one task per poll group, failed reads classified, poison quarantine.

A poll read that crashes (`Action.POISON`) or times out ``poison_after`` times
in a row is quarantined, no longer read, while the rest of the connection keeps
flowing; `release_quarantine` brings it back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import Any

from edgelink.errors import (
    Action,
    ConfigError,
    classify,
)
from edgelink.events import EventType
from edgelink.state import ConnectionState, Reason
from edgelink.supervisor.flapping import SupervisorFlapping
from edgelink.supervisor.policy import (
    Lost,
    describe,
)
from edgelink.supervisor.specs import PollSpec

logger = logging.getLogger("edgelink.supervisor")

S = ConnectionState


class SupervisorPolling(SupervisorFlapping):
    """The poll groups of a link (a part of `edgelink.supervisor.Supervisor`)."""

    __slots__ = ()

    @property
    def quarantined(self) -> dict[str, dict[str, Any]]:
        """The quarantined poll tags: tag -> reason, cause, error, since, strikes (a copy)."""
        return {tag: dict(entry) for tag, entry in self._quarantine.items()}

    async def _run_poll(self, group: PollSpec) -> None:
        s = self.settings
        next_at = self._clock.monotonic()
        while True:
            if self.adapter.has_read_many:
                if not await self._poll_batch(group):
                    return
                next_at = await self._next_poll_round(next_at, group.interval)
                continue
            for tag in group.tags:
                if tag in self._quarantine:
                    continue
                try:
                    value = await self._call(
                        "poll", s.request_timeout, functools.partial(self.adapter.read, tag)
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - classified by _poll_failed
                    if self._poll_failed((tag,), exc):
                        continue
                    return
                self._strikes.pop(tag, None)
                self._handle_data(tag, value, "good", None)
            next_at = await self._next_poll_round(next_at, group.interval)

    async def _next_poll_round(self, next_at: float, interval: float) -> float:
        # Fixed-rate schedule: a slow read delays the next round, it does not
        # shift every later one; missed rounds are skipped, not bunched.
        next_at += interval
        now = self._clock.monotonic()
        if next_at < now:
            next_at = now
        await self._clock.sleep(next_at - now)
        return next_at

    async def _poll_batch(self, group: PollSpec) -> bool:
        """Poll one group with the driver's batched read; return False once the link is lost.

        A tag the device refused is reported bad with an ``error`` event and
        the others keep their values; an error that breaks the link ends the
        poller like a failed read (the link's data is then marked stale).
        """
        s = self.settings
        tags = group.tags
        if self._quarantine:
            tags = tuple(tag for tag in tags if tag not in self._quarantine)
            if not tags:
                return True
        try:
            results = await self._call(
                "poll", s.request_timeout, functools.partial(self.adapter.read_many, tags)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            return self._poll_failed(tags, exc)
        good: list[tuple[str, Any]] = []
        strikes = self._strikes
        for tag in tags:
            if tag not in results:
                continue
            value = results[tag]
            if isinstance(value, BaseException):
                if good:
                    # In tag order: what came before the failure goes first.
                    self._handle_good(good)
                    good = []
                if not self._poll_failed((tag,), value, per_tag=True):
                    return False
                continue
            if strikes:
                strikes.pop(tag, None)
            good.append((tag, value))
        if good:
            self._handle_good(good)
        return True

    def _poll_failed(
        self, tags: Sequence[str], exc: BaseException, *, per_tag: bool = False
    ) -> bool:
        """Classify a failed poll read of ``tags``; return True if polling goes on (link kept).

        With ``per_tag`` the error belongs to one tag of a batch, so a bad tag
        (`ConfigError`) costs that tag its value, not the connection its state.
        A crash (`Action.POISON`) keeps the link and counts a strike against
        the tags; a timeout counts one too, and drops the link. Once the link
        is lost its data is marked stale, not bad (`_link_down`).
        """
        verdict = classify(exc)
        action = verdict.action
        if action is Action.REFUSED or (per_tag and isinstance(exc, ConfigError)):
            # The device said no for this tag: report it bad, keep the link.
            for tag in tags:
                self._read_refused(tag, exc)
            return True
        if action is Action.POISON:
            # A bug in the read or its decoding: a reconnect cannot fix it, so
            # the link and the other tags carry on.
            self._strike(tags, exc)
            return True
        if action is Action.SLEEP:
            self._lose(Lost(Reason.DEVICE_SLEEP, exc, sleep=True))
        elif action is Action.TIMEOUT:
            self._strike(tags, exc)
            self._handle_tx_drop()
        else:
            self._lose(Lost(verdict.reason, exc, permanent=action is Action.PERMANENT))
        return False

    def _strike(self, tags: Sequence[str], exc: BaseException) -> None:
        """Count one crash or timeout against each of ``tags``; quarantine at ``poison_after``."""
        crash = classify(exc).action is Action.POISON
        text = describe(exc)
        if crash:
            # The link stays, so the tags' values are bad now (once per good->bad).
            for tag in tags:
                self._handle_data(tag, None, "bad", None, text)
            self._emit(
                EventType.ERROR,
                reason=Reason.READ_CRASHED,
                tag=tags[0],
                tags=list(tags),
                error=text,
            )
        limit = self.settings.poison_after
        if limit is None:
            return
        newly: list[str] = []
        for tag in tags:
            count = self._strikes.get(tag, 0) + 1
            if count < limit:
                self._strikes[tag] = count
                continue
            self._strikes.pop(tag, None)
            self._quarantine[tag] = {
                "tag": tag,
                "reason": Reason.POISON,
                "cause": "crash" if crash else "timeout",
                "error": text,
                "since": self._clock.time(),
                "strikes": count,
            }
            newly.append(tag)
        if not newly:
            return
        # Once per quarantine, with the traceback a developer needs to fix the
        # driver: the tag is no longer read, so this cannot repeat.
        logger.warning(
            "%s: poll read of %s quarantined after %d consecutive %s: %s",
            self.connection_id,
            ", ".join(newly),
            limit,
            "crashes" if crash else "timeouts",
            text,
            exc_info=exc if crash else None,
        )
        self._emit(
            EventType.POLL_QUARANTINED,
            reason=Reason.POISON,
            cause="crash" if crash else "timeout",
            tags=newly,
            strikes=limit,
            error=text,
        )

    def release_quarantine(self, tag: str | None = None) -> list[str]:
        """Read quarantined tags again (all of them, or ``tag``); return those released.

        The next poll round reads them; a tag that crashes again is
        quarantined again after ``poison_after`` strikes.

        Raises:
            KeyError: if ``tag`` is given and not quarantined.
        """
        if tag is None:
            released = list(self._quarantine)
        elif tag in self._quarantine:
            released = [tag]
        else:
            raise KeyError(f"tag {tag!r} of {self.connection_id!r} is not quarantined")
        for name in released:
            del self._quarantine[name]
            self._strikes.pop(name, None)
        if released:
            self._emit(EventType.QUARANTINE_RELEASED, tags=released)
        return released

    def _read_refused(self, tag: str, exc: BaseException) -> None:
        """A read of ``tag`` failed, the link stays: report it bad and say why, once."""
        error = describe(exc)
        if self._handle_data(tag, None, "bad", None, error):
            self._emit(EventType.ERROR, reason=Reason.READ_FAILED, tag=tag, error=error)
