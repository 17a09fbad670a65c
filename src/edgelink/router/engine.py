"""The Router: match, condition, transform, deliver; the data space; spam protection.

`Router.route_data` is synchronous and runs on the event loop. For one
datapoint it:

1. drops it if its source is a connection over its ``spam_max_pps`` budget;
2. stores it in the `DataSpace` (as a plain tuple of `DataPoint`'s fields:
   the DataPoint is made when someone reads it);
3. looks up the *plan* of its address: the matching routes (exact ``from``
   addresses by dict lookup, wildcards through a `PatternIndex`) with their
   targets already rendered and resolved. Plans are built on the first
   datapoint of an address and cached with the route table from its second,
   so after that a lookup is one dict probe whatever the number of routes;
4. per route: the loop guard, the compiled condition, the compiled transform;
5. makes one `DataPoint` for a route that passes and appends it to each
   target's outbox; virtual addresses are then routed at once, as a new
   datapoint with the route in its path.

One delivery task per target drains its outbox in batches, so a datapoint
costs an append, never a task; a slow or failing target delays only its
own outbox. A connection whose driver writes without awaiting takes what a
loop turn queued for it in one callback (`edgelink.router.outbox`).
``await router.drain()`` waits until every outbox is empty.

Everything kept per address is bounded: the data space by ``max_addresses``
(least recently updated first), plans by ``max_plans``, echoes by
``ECHO_LIMIT`` (see the router docs, "Bounds per address").

A new route table is built and compiled completely before it replaces the
old one in a single assignment; a datapoint captures the table when it
arrives and uses that one for its whole way, virtual hops included.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from edgelink._deadline import DeadlineWheel
from edgelink.clock import Clock, SystemClock
from edgelink.router.address import resolve_endpoint
from edgelink.router.dataspace import DataSpace
from edgelink.router.dispatch import ECHO_LIMIT, Dispatch, _Echo
from edgelink.router.expr import DEFAULT_LIMITS, ExprLimits
from edgelink.router.outbox import Outbox
from edgelink.router.quarantine import STRIKE_SOURCES_LIMIT, Gate, QuarantineCallback, Strikes
from edgelink.router.schema import RoutingConfig, load_routing
from edgelink.router.spam import SpamCallback, SpamGuard
from edgelink.router.table import PLAN_CACHE_LIMIT, RouteTable, RouteTableDiff, build_table
from edgelink.router.targets import ConnectionTarget, DirectWriter, SendsData, Writer

__all__ = [
    "ECHO_LIMIT",
    "PLAN_CACHE_LIMIT",
    "STRIKE_SOURCES_LIMIT",
    "QuarantineCallback",
    "RouteTableDiff",
    "Router",
    "SpamCallback",
    "check_routes",
]

logger = logging.getLogger(__name__)


def _fast_wall_clock(clock: Clock) -> Callable[[], float]:
    # SystemClock.time is a Python call around time.time: skip the wrapper.
    return time.time if type(clock) is SystemClock else clock.time


def _fast_monotonic(clock: Clock) -> Callable[[], float]:
    # SystemClock.monotonic is the loop's time, which is time.monotonic (asyncio's
    # default loop): the echo of every connection write reads it.
    return time.monotonic if type(clock) is SystemClock else clock.monotonic


class Router(Dispatch):
    """Routes datapoints to targets by a declarative route table.

    Example:
        router = manager.router
        router.load_routes("config/routing.json")
        router.add_target("webhook.alerts", Webhook())
        router.route_data("calc", "total_power", 4200.0)
        await router.drain()
        print(router.data.get("plc_1.MAIN.temperature"), router.route_stats("bms_to_plc"))

    Args:
        clock: Time for timestamps, aggregation windows, echo and spam windows.
        writer: ``await writer(connection_id, tag, value)`` writes to a
            connection; the manager gives it one built on ``execute_with_retry``.
        direct_writer: ``direct_writer(connection_id)`` gives a connection's
            non-blocking ``write(tag, value)`` while it is connected (None
            otherwise): a loop turn's writes to it then go out in one batch.
        history: Datapoints kept per address in the data space.
        max_hops: Routes one datapoint may pass in a row (the loop guard).
        echo_window: Seconds a value written to a device (or an echo target)
            is expected back; the echo carries the writing route's path.
        queue_limit: Datapoints an outbox holds before it drops its oldest.
        delivery_timeout: Longest one send (or batch) to a target may take, s.
        max_addresses: Addresses the data space keeps; a new one beyond
            it evicts the least recently updated (`DataSpace`).
        max_plans: Route plans cached (one per address that came twice);
            past it the cache starts over (counted in ``plan_cache_resets``).
        limits: The caps and cost budget of every condition and transform
            (`ExprLimits`; default `DEFAULT_LIMITS`).
        quarantine_after: Strikes (evaluations over a cap or the budget, for
            a route; crashes or values over a cap, for a source) that
            quarantine a route or a source when they fall within
            ``quarantine_window`` seconds.
        quarantine_window: See ``quarantine_after``.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        writer: Writer | None = None,
        direct_writer: DirectWriter | None = None,
        history: int = 10,
        max_hops: int = 8,
        echo_window: float = 5.0,
        queue_limit: int = 100_000,
        delivery_timeout: float | None = 60.0,
        max_addresses: int = 100_000,
        max_plans: int = PLAN_CACHE_LIMIT,
        limits: ExprLimits | None = None,
        quarantine_after: int = 5,
        quarantine_window: float = 60.0,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self._time = _fast_wall_clock(self.clock)
        self._monotonic = _fast_monotonic(self.clock)
        self._writer = writer
        self._direct_writer = direct_writer
        self.max_hops = max_hops
        self.echo_window = echo_window
        self.queue_limit = queue_limit
        self.delivery_timeout = delivery_timeout
        # Delivery deadlines on a wheel, not asyncio.timeout(): a connection
        # target has one per datapoint, and asyncio.timeout costs about 5 µs
        # (a TimerHandle pushed and cancelled) against about 1 µs here.
        self._deadlines = DeadlineWheel()
        self.data = DataSpace(history=history, max_addresses=max_addresses)
        # Shared with the data space (never rebound there): the hot path's view.
        self._rings = self.data._rings
        self._touch = self._rings.move_to_end
        self._subs = self.data._subs
        self._table = RouteTable([], None)
        self._outboxes: dict[str, Outbox] = {}
        self._retired: set[Outbox] = set()
        self._connections: set[str] = set()
        self._guards: dict[str, SpamGuard | Gate] = {}
        #: address -> recent writes: (value, path, hops, trail, expires at).
        self._echoes: OrderedDict[str, list[_Echo]] = OrderedDict()
        #: Echoes forgotten before their window ended (more than ECHO_LIMIT addresses written).
        self.echo_evicted = 0
        # An instance attribute: route_data reads it faster than a class attribute.
        self._inline_first_hop = self._INLINE_FIRST_HOP
        #: Datapoints received by route_data (and from connections).
        self.received = 0
        #: Datapoints dropped by spam protection.
        self.spam_dropped = 0
        #: Datapoints dropped while paused (the service's panic).
        self.paused_dropped = 0
        self.paused = False
        #: Route firings the loop guard prevented.
        self.loop_blocked = 0
        self.limits = DEFAULT_LIMITS
        self.quarantine_after = 5
        self.quarantine_window = 60.0
        self.max_plans = PLAN_CACHE_LIMIT
        #: Times the plan cache was full and started over.
        self.plan_cache_resets = 0
        self.configure(
            limits=limits,
            quarantine_after=quarantine_after,
            quarantine_window=quarantine_window,
            max_plans=max_plans,
        )
        #: Called when a route or source is quarantined or let out (the service events it).
        self.on_quarantine: QuarantineCallback | None = None
        #: Quarantined sources: id -> {"reason", "since", "error", "dropped"}.
        self._quarantined: dict[str, dict[str, Any]] = {}
        self._source_strikes: dict[str, Strikes] = {}
        #: Datapoints dropped because their source is quarantined.
        self.quarantine_dropped = 0

    def configure(
        self,
        *,
        limits: ExprLimits | None = None,
        quarantine_after: int | None = None,
        quarantine_window: float | None = None,
        max_addresses: int | None = None,
        max_plans: int | None = None,
    ) -> None:
        """Set the expression caps, the quarantine thresholds and the per-address bounds.

        New caps apply to the routes compiled afterwards: the next
        `load_routes` recompiles every route when they changed. A lower
        ``max_addresses`` evicts the least recently updated addresses at once.

        Raises:
            ValueError: for a threshold or bound below 1, or a window not above 0.
        """
        if max_addresses is not None:
            if max_addresses < 1:
                raise ValueError(f"max_addresses must be at least 1, got {max_addresses}")
            self.data.max_addresses = max_addresses
            while len(self.data) > max_addresses:
                self.data._evict()
        if max_plans is not None:
            if max_plans < 1:
                raise ValueError(f"max_plans must be at least 1, got {max_plans}")
            self.max_plans = max_plans
        if limits is not None:
            self.limits = limits
        if quarantine_after is not None:
            if quarantine_after < 1:
                raise ValueError(f"quarantine_after must be at least 1, got {quarantine_after}")
            self.quarantine_after = quarantine_after
        if quarantine_window is not None:
            if not quarantine_window > 0:
                raise ValueError(f"quarantine_window must be above 0, got {quarantine_window}")
            self.quarantine_window = quarantine_window

    def load_routes(self, source: str | os.PathLike[str] | Mapping[str, Any]) -> RouteTableDiff:
        """Validate and compile a ``routing.json`` (path, or dict), then swap it in atomically.

        Routes whose definition did not change keep their counters and state.

        Returns:
            What changed.

        Raises:
            RouteError: for any bad input, naming the file, JSON path, route
                id and, for an expression, the position. The old table stays.
        """
        config, file = load_routing(source)
        return self._install(config, file)

    def _install(self, config: RoutingConfig, file: str) -> RouteTableDiff:
        table, diff = build_table(self._table, config, file, self.limits, self.clock)
        # The swap: one assignment. route_data reads self._table once per datapoint.
        self._table = table
        logger.info(
            "routes loaded from %s: %d routes (%d added, %d removed, %d changed)",
            file,
            len(table.routes),
            len(diff.added),
            len(diff.removed),
            len(diff.changed),
        )
        return diff

    @property
    def routes(self) -> list[dict[str, Any]]:
        """Every route of the current table as written, in order."""
        return [r.spec.as_dict() for r in self._table.routes]

    def pause(self) -> None:
        """Stop routing: every datapoint is dropped (counted) until `resume`. Idempotent.

        The service's panic uses it; deliveries already scheduled still finish.
        """
        self.paused = True

    def resume(self) -> None:
        """Route again after `pause`."""
        self.paused = False

    def route_stats(self, route_id: str) -> dict[str, Any]:
        """Return a route's counters.

        Keys: ``matched`` (datapoints its ``from`` matched, loop-blocked ones
        aside), ``passed`` (delivered onwards), ``filtered`` (condition
        false), ``suppressed`` (held back by deadband/throttle), ``errors``
        (condition, transform or delivery failures), ``loop_blocked``,
        ``last_fired`` (wall-clock time of the last pass), ``last_error``.

        Raises:
            KeyError: for a route id not in the current table.
        """
        route = self._table.by_id.get(route_id)
        if route is None:
            raise KeyError(f"unknown route {route_id!r}")
        return route.stats()

    def routes_with_stats(self) -> list[dict[str, Any]]:
        """Every route as written, each with its counters (`route_stats`) under ``stats``."""
        return [{**r.spec.as_dict(), "stats": r.stats()} for r in self._table.routes]

    def stats(self) -> dict[str, Any]:
        """Router-wide counters and every target's queue."""
        return {
            "routes": len(self._table.routes),
            "received": self.received,
            "spam_dropped": self.spam_dropped,
            "stale_marked": self.data.stale_marked,
            "paused": self.paused,
            "paused_dropped": self.paused_dropped,
            "loop_blocked": self.loop_blocked,
            "quarantine_dropped": self.quarantine_dropped,
            "quarantined_sources": self.quarantined_sources,
            "addresses": len(self.data),
            "max_addresses": self.data.max_addresses,
            "evicted_addresses": self.data.evicted,
            "cached_plans": len(self._table.plans),
            "plan_cache_resets": self.plan_cache_resets,
            "echoes": len(self._echoes),
            "echo_evicted": self.echo_evicted,
            "targets": {ep: ob.stats() for ep, ob in sorted(self._outboxes.items())},
        }

    def target_stats(self, endpoint_id: str) -> dict[str, Any]:
        """Return one target's counters (sent, errors, dropped, pending).

        Raises:
            KeyError: for an unknown endpoint.
        """
        ob = self._outboxes.get(endpoint_id)
        if ob is None:
            raise KeyError(f"unknown target {endpoint_id!r}")
        return ob.stats()

    def match(self, address: str) -> list[str]:
        """Return the ids of the routes whose ``from`` matches ``address``, in order."""
        table = self._table
        hits = {r.id: r.index for r in table.exact.get(address, ()) if r.enabled}
        for route, _ in table.wild.match(address):
            hits.setdefault(route.id, route.index)
        return sorted(hits, key=hits.__getitem__)

    def __repr__(self) -> str:
        table = self._table
        pending = sum(len(ob.queue) for ob in self._outboxes.values())
        return (
            f"<Router routes={len(table.routes)} exact={len(table.exact)} "
            f"wildcard={len(table.wild)} targets={len(self._outboxes)} "
            f"addresses={len(self.data)} pending={pending}>"
        )

    @property
    def endpoints(self) -> dict[str, str]:
        """Every endpoint id and its kind (``connection``, ``target``, ``log``)."""
        return {ep: ob.kind for ep, ob in sorted(self._outboxes.items())}

    def set_writer(self, writer: Writer | None, direct_writer: DirectWriter | None = None) -> None:
        """Set how the router writes to connections (the manager does this)."""
        self._writer = writer
        self._direct_writer = direct_writer

    def _current_writer(self) -> Writer | None:
        return self._writer

    def _current_direct_writer(self) -> DirectWriter | None:
        return self._direct_writer

    def register_connection(
        self,
        connection_id: str,
        *,
        spam_max_pps: float | None = None,
        on_spam: SpamCallback | None = None,
    ) -> None:
        """Make a connection an endpoint: writes go through the writer, its data is limited.

        Args:
            connection_id: The connection (ids may contain dots).
            spam_max_pps: Datapoints per second it may report (sliding one-second
                window); None turns spam protection off for it.
            on_spam: Called once, ``on_spam(connection_id, info)``, when it
                goes over; its datapoints are dropped until `reset_spam`.
        """
        if connection_id not in self._connections:
            if connection_id in self._outboxes:
                logger.warning(
                    "connection %r replaces the target of the same id in the router",
                    connection_id,
                )
            self._connections.add(connection_id)
            target = ConnectionTarget(
                connection_id, self._current_writer, self._current_direct_writer
            )
            self._set_outbox(
                connection_id, Outbox(connection_id, target, "connection", self.queue_limit)
            )
        self.set_spam_limit(connection_id, spam_max_pps, on_spam)

    def unregister_connection(self, connection_id: str) -> None:
        """Forget a connection endpoint (and its spam guard)."""
        self._connections.discard(connection_id)
        self._guards.pop(connection_id, None)
        ob = self._outboxes.get(connection_id)
        if ob is not None and ob.kind == "connection":
            self._drop_outbox(connection_id)

    def set_spam_limit(
        self, source_id: str, max_pps: float | None, on_spam: SpamCallback | None = None
    ) -> None:
        """Limit the datapoints per second ``source_id`` may send; None removes the limit.

        A new limit starts with a fresh window and un-trips the guard.
        """
        guard = None
        if max_pps is not None:
            if max_pps <= 0:
                raise ValueError("max_pps must be above 0 (or None for no limit)")
            guard = SpamGuard(source_id, max_pps, self._monotonic, on_spam)
        self._set_guard(source_id, guard)

    def reset_spam(self, source_id: str) -> None:
        """Let a source that tripped spam protection send again (with a fresh window)."""
        guard = self._spam_guard(source_id)
        if guard is not None:
            guard.reset()

    def is_spam_blocked(self, source_id: str) -> bool:
        """Return True while spam protection drops ``source_id``'s datapoints."""
        guard = self._spam_guard(source_id)
        return guard is not None and guard.tripped

    def add_target(self, endpoint_id: str, target: SendsData) -> None:
        """Make ``endpoint_id`` a target: addresses under it are delivered to ``target``.

        Replacing a target lets the old one finish what it was given.

        Raises:
            ValueError: for a bad endpoint id, or one that is a connection.
            TypeError: if ``target`` has no ``send`` method.
        """
        if not callable(getattr(target, "send", None)):
            raise TypeError(f"a target needs an async send(tag, dp) method, got {target!r}")
        if (
            not endpoint_id
            or any(c in endpoint_id for c in "*+#{} ")
            or "" in endpoint_id.split(".")
        ):
            raise ValueError(f"bad endpoint id {endpoint_id!r}")
        if endpoint_id in self._connections:
            raise ValueError(f"{endpoint_id!r} is a connection; a target needs an id of its own")
        self._set_outbox(endpoint_id, Outbox(endpoint_id, target, "target", self.queue_limit))

    def remove_target(self, endpoint_id: str) -> None:
        """Remove a target; what it was given is still delivered.

        Raises:
            KeyError: for an unknown target.
        """
        ob = self._outboxes.get(endpoint_id)
        if ob is None or ob.kind == "connection":
            raise KeyError(f"unknown target {endpoint_id!r}")
        self._drop_outbox(endpoint_id)

    def get_target(self, endpoint_id: str) -> SendsData | None:
        """Return the target object of an endpoint, or None."""
        ob = self._outboxes.get(endpoint_id)
        return ob.target if ob is not None else None

    def _set_outbox(self, endpoint_id: str, ob: Outbox) -> None:
        if endpoint_id in self._outboxes:
            self._drop_outbox(endpoint_id)
        self._outboxes[endpoint_id] = ob
        self._endpoints_changed()

    def _drop_outbox(self, endpoint_id: str) -> None:
        ob = self._outboxes.pop(endpoint_id)
        if ob.queue or ob.task is not None:
            self._retired.add(ob)
        self._endpoints_changed()

    def _endpoints_changed(self) -> None:
        # Plans hold resolved targets: an endpoint that came or went may change them.
        self._table.plans = {}

    def resolve(self, address: str) -> tuple[str | None, str]:
        """Split an address into (endpoint, tag) by the longest endpoint id prefixing it."""
        return resolve_endpoint(address, self._outboxes)

    def mark_stale(self, source_id: str, reason: str, since: float | None = None) -> int:
        """Mark every last value of ``source_id`` stale (see `DataSpace.mark_stale`).

        A quality mark reaches what mirrors the data space (the MQTT bridge,
        the stream, data space subscribers) but fires no route: nothing was
        measured, so no condition, transform or device write may act on it.
        Works while paused (panic), so what a stopped device last said is
        shown as old.

        Args:
            source_id: The connection (or other source) that stopped delivering.
            reason: Why (``data_timeout``, ``admin_stop``, ``half_open``...).
            since: When, wall-clock seconds; now if None.

        Returns:
            How many addresses were marked.
        """
        return self.data.mark_stale(source_id, reason, self._time() if since is None else since)


def check_routes(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    clock: Clock | None = None,
    limits: ExprLimits | None = None,
) -> int:
    """Validate and compile a ``routing.json`` without applying it anywhere.

    Returns:
        The number of routes.

    Raises:
        RouteError: exactly as `Router.load_routes` (with these ``limits``) would.
    """
    scratch = Router(clock=clock, limits=limits)
    scratch.load_routes(source)
    return len(scratch.routes)
