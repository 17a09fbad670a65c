"""Quarantine: strikes against routes and sources, the gate that drops a source's data."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from edgelink.router.spam import SpamGuard
from edgelink.router.table import Route, RouteTable

#: One logger for the whole router (its records keep the name they always had).
logger = logging.getLogger("edgelink.router.engine")

#: ``on_quarantine(event_type, info)``: a route or source was quarantined or let out again
#: (``route_quarantined``, ``source_quarantined``, ``quarantine_lifted``).
QuarantineCallback = Callable[[str, dict[str, Any]], None]

#: Sources whose strikes are tracked at once; past this the tally starts over.
STRIKE_SOURCES_LIMIT: Final = 10_000


class Strikes:
    """The times of the last ``count`` strikes against a route or source."""

    __slots__ = ("stamps",)

    def __init__(self, count: int) -> None:
        self.stamps: deque[float] = deque(maxlen=count)

    def hit(self, now: float, window: float) -> bool:
        """Count a strike; True if ``count`` of them fell within ``window`` seconds."""
        stamps = self.stamps
        stamps.append(now)
        return len(stamps) == stamps.maxlen and now - stamps[0] <= window


class Gate:
    """A quarantined source's place among the spam guards: admits nothing, counts the drops.

    Routing checks the guards anyway, so a quarantine costs the hot path nothing.
    """

    __slots__ = ("info", "inner")

    def __init__(self, info: dict[str, Any], inner: SpamGuard | None) -> None:
        self.info = info
        #: The source's spam guard, back in place when the quarantine is lifted.
        self.inner = inner

    def admit(self) -> bool:
        """Admit nothing; count the drop."""
        self.info["dropped"] += 1
        return False


class Quarantine:
    """The Router's quarantine of routes and sources (a part of `Router`)."""

    # Set by Router.__init__; declared here for the type checker only (no class
    # attributes: the hot path reads them off the instance).
    _table: RouteTable
    _guards: dict[str, SpamGuard | Gate]
    _quarantined: dict[str, dict[str, Any]]
    _source_strikes: dict[str, Strikes]
    _time: Callable[[], float]
    _monotonic: Callable[[], float]
    quarantine_after: int
    quarantine_window: float
    quarantine_dropped: int
    on_quarantine: QuarantineCallback | None

    def _set_guard(self, source_id: str, guard: SpamGuard | None) -> None:
        """Install a spam guard (or none), behind the source's quarantine gate if it has one."""
        quarantine = self._quarantined.get(source_id)
        if quarantine is not None:
            self._guards[source_id] = Gate(quarantine, guard)
        elif guard is None:
            self._guards.pop(source_id, None)
        else:
            self._guards[source_id] = guard

    def _spam_guard(self, source_id: str) -> SpamGuard | None:
        guard = self._guards.get(source_id)
        return guard.inner if isinstance(guard, Gate) else guard

    def _strike_route(self, route: Route, text: str, now: float) -> None:
        if route.quarantine is not None:
            return
        if route.strikes is None:
            route.strikes = Strikes(self.quarantine_after)
        if not route.strikes.hit(now, self.quarantine_window):
            return
        route.quarantine = {"reason": "poison", "since": self._time(), "error": text}
        # Out of the matching indexes: a new table (plans start over), one assignment.
        table = self._table
        new = RouteTable(list(table.routes), table.source)
        new.warned = table.warned
        self._table = new
        logger.warning(
            "route %s quarantined (reason poison: %d failures within %g s, last: %s); "
            "POST /api/routes/%s/enable lets it run again",
            route.id,
            self.quarantine_after,
            self.quarantine_window,
            text,
            route.id,
        )
        self._announce("route_quarantined", route_id=route.id, **route.quarantine)

    def _strike_source(self, source: str, text: str, now: float) -> None:
        if source in self._quarantined:
            return
        tally = self._source_strikes
        strikes = tally.get(source)
        if strikes is None:
            if len(tally) >= STRIKE_SOURCES_LIMIT:
                tally.clear()
            strikes = tally[source] = Strikes(self.quarantine_after)
        if not strikes.hit(now, self.quarantine_window):
            return
        del tally[source]
        info: dict[str, Any] = {"reason": "poison", "since": self._time(), "error": text}
        self._quarantined[source] = {**info, "dropped": 0}
        self._set_guard(source, self._spam_guard(source))
        logger.warning(
            "source %s quarantined (reason poison: %d crashes or values over a cap within %g s, "
            "last: %s); its datapoints are dropped until an admin enables it",
            source,
            self.quarantine_after,
            self.quarantine_window,
            text,
        )
        self._announce("source_quarantined", source_id=source, **info)

    def _announce(self, event_type: str, **info: Any) -> None:
        if self.on_quarantine is not None:
            try:
                self.on_quarantine(event_type, info)
            except Exception:
                logger.exception("quarantine callback failed")

    def enable_route(self, route_id: str) -> dict[str, Any]:
        """Let a quarantined route run again (an admin's call); its strikes start over.

        Returns:
            The route's counters (`route_stats`).

        Raises:
            KeyError: for a route id not in the current table.
        """
        table = self._table
        route = table.by_id.get(route_id)
        if route is None:
            raise KeyError(f"unknown route {route_id!r}")
        route.strikes = None
        if route.quarantine is not None:
            previous = route.quarantine
            route.quarantine = None
            new = RouteTable(list(table.routes), table.source)
            new.warned = table.warned
            self._table = new
            logger.info("route %s enabled again after its quarantine", route_id)
            self._announce("quarantine_lifted", route_id=route_id, was=previous)
        return route.stats()

    def enable_source(self, source_id: str) -> dict[str, Any] | None:
        """Let a quarantined source's datapoints be routed again (an admin's call).

        Returns:
            What its quarantine was (with ``dropped``), or None if it was not quarantined.
        """
        self._source_strikes.pop(source_id, None)
        previous = self._quarantined.pop(source_id, None)
        if previous is not None:
            self._set_guard(source_id, self._spam_guard(source_id))
            logger.info("source %s enabled again after its quarantine", source_id)
            self._announce("quarantine_lifted", source_id=source_id, was=previous)
        return previous

    @property
    def quarantined_sources(self) -> dict[str, dict[str, Any]]:
        """The quarantined sources: id -> ``{"reason", "since", "error", "dropped"}``."""
        return {k: dict(v) for k, v in self._quarantined.items()}

    def quarantined_routes(self) -> list[str]:
        """The ids of the quarantined routes, in table order."""
        return [r.id for r in self._table.routes if r.quarantine is not None]
