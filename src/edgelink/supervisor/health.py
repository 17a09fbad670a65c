"""Health: the periodic check, the driver's degraded word, the data watchdog, vital signs.

A check that fails ``health_check_failures`` times in a row loses the link
(`edgelink.supervisor.policy.after_health_failure` says why); fewer make it
``degraded``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from edgelink.errors import (
    classify,
)
from edgelink.events import EventType
from edgelink.state import ConnectionState, Health, Reason
from edgelink.supervisor.base import SupervisorBase
from edgelink.supervisor.policy import (
    Lost,
    after_health_error,
    after_health_failure,
    describe,
)
from edgelink.supervisor.specs import WatchRule

logger = logging.getLogger("edgelink.supervisor")

S = ConnectionState


class SupervisorHealth(SupervisorBase):
    """The health checks of a link (a part of `edgelink.supervisor.Supervisor`)."""

    __slots__ = ()

    def on_degraded(self, reason: str | None) -> None:
        """The driver says its link works but not fully (None: whole again). Thread-safe."""
        self._on_loop(self._handle_degraded, reason)

    def _handle_degraded(self, reason: str | None) -> None:
        # Only a connected link has a health to refine; a failing check
        # (unhealthy) outranks the driver's word, a link already lost keeps its
        # health until the main task handles the loss, and the next check or
        # link re-evaluates anyway.
        lost = self._lost
        if (
            self._sm.state is not S.CONNECTED
            or self._health is Health.UNHEALTHY
            or (lost is not None and lost.done())
        ):
            return
        self._set_health(self._passing_health())

    def _passing_health(self) -> Health:
        """The health of a link whose checks pass: degraded if slow or the driver says so."""
        s = self.settings
        latency = self._health_latency
        slow = (
            s.health_degraded_latency is not None
            and latency is not None
            and latency > s.health_degraded_latency
        )
        if (
            slow
            or self._health_failures
            or self.connection.degraded_reason is not None
            or self._flapping_since is not None
        ):
            return Health.DEGRADED
        return Health.HEALTHY

    def kick_health_check(self) -> None:
        """Run the next health check now instead of at its interval."""
        if self._health_kick is not None and not self._health_kick.done():
            self._health_kick.set_result(None)

    def _arm_data_watchdog(self, timeout: float) -> None:
        last = self._last_data_mono or self._clock.monotonic()
        remaining = last + timeout - self._clock.monotonic()
        self._timers.append(self._clock.call_later(remaining, self._check_data_watchdog))

    def _check_data_watchdog(self) -> None:
        timeout = self.settings.data_timeout
        if timeout is None or self._lost is None:
            return
        last = self._last_data_mono or 0.0
        if self._clock.monotonic() - last >= timeout:
            self._lose(Lost(Reason.DATA_TIMEOUT))
        else:
            self._arm_data_watchdog(timeout)

    async def _wait_health_interval(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._health_kick = fut

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        handle = self._clock.call_later(interval, wake)
        try:
            await fut
        finally:
            handle.cancel()
            self._health_kick = None

    async def _run_health(self) -> None:
        s = self.settings
        assert s.health_check_interval is not None
        while True:
            await self._wait_health_interval(s.health_check_interval)
            lost = await self.check_health()
            if lost is not None:
                self._lose(lost)
                return

    async def check_health(self) -> Lost | None:
        """Run one health check now; return why the link is lost, or None."""
        s = self.settings
        started = self._clock.monotonic()
        error: BaseException | None = None
        ok = False
        try:
            if not self.adapter.is_connected():
                return Lost(Reason.CONNECTION_LOST)
            ok = await self._call("health", s.health_check_timeout, self.adapter.health_check)
            if ok and self._extra_checks is not None:
                for check in self._extra_checks():
                    ok = bool(await self._call("health", s.health_check_timeout, check))
                    if not ok:
                        break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the check is a failed check
            lost = after_health_error(classify(exc), exc)
            if lost is not None:
                return lost
            error = exc
        latency = self._clock.monotonic() - started
        self._health_latency = latency
        if self._on_health_checked is not None:
            self._on_health_checked(self.connection_id, latency, ok)
        if ok:
            self._health_failures = 0
            self._set_health(self._passing_health())
            return None
        self._health_failures += 1
        self.connection.stats.add({"errors": 1}, self._clock.time())
        text = describe(error) if error else "health check returned False"
        self._last_error = text
        self._emit(
            EventType.HEALTH_CHECK_FAILED,
            failures=self._health_failures,
            threshold=s.health_check_failures,
            error=text,
        )
        lost = after_health_failure(
            self._health_failures,
            s.health_check_failures,
            error,
            classify(error) if error is not None else None,
            is_connected=self.adapter.is_connected,
        )
        self._set_health(Health.DEGRADED if lost is None else Health.UNHEALTHY)
        return lost

    def _check_watch(self, rule: WatchRule, value: Any) -> None:
        if not rule.is_bad(value):
            self._watch_counts[rule.tag] = 0
            return
        count = self._watch_counts.get(rule.tag, 0) + 1
        self._watch_counts[rule.tag] = count
        data = {"tag": rule.tag, "value": value, "consecutive": count}
        if count == rule.warning_after:
            self._emit(EventType.POWER_WARNING, **data)
            if rule.health_check:
                self.kick_health_check()
        if count == rule.critical_after:
            self._emit(EventType.POWER_CRITICAL, **data)
