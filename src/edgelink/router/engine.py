"""The Router: match, condition, transform, deliver; the data space; spam protection.

`Router.route_data` is synchronous and runs on the event loop. For one
datapoint it:

1. drops it if its source is a connection over its ``spam_max_pps`` budget;
2. stores it in the `DataSpace` (as a plain tuple of `DataPoint`'s fields:
   the DataPoint is made when someone reads it);
3. looks up the *plan* of its address: the matching routes (exact ``from``
   addresses by dict lookup, wildcards through a `PatternIndex`) with their
   targets already rendered and resolved. Plans are built on the first
   datapoint of an address and cached with the route table, so after that a
   lookup is one dict probe whatever the number of routes;
4. per route: the loop guard, the compiled condition, the compiled transform;
5. makes one `DataPoint` for a route that passes and appends it to each
   target's outbox; virtual addresses are then routed at once, as a new
   datapoint with the route in its path.

One delivery task per target drains its outbox in batches, so a datapoint
costs an append, never a task; a slow or failing target delays only its
own outbox. ``await router.drain()`` waits until every outbox is empty.

A new route table is built and compiled completely before it replaces the
old one in a single assignment; a datapoint captures the table when it
arrives and uses that one for its whole way, virtual hops included.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from edgelink.clock import Clock, SystemClock
from edgelink.deadline import DeadlineWheel
from edgelink.errors import EdgelinkError, RouteError
from edgelink.router.address import (
    Pattern,
    PatternIndex,
    Template,
    parse_pattern,
    parse_template,
    resolve_endpoint,
)
from edgelink.router.datapoint import DataPoint
from edgelink.router.dataspace import DataSpace, Record
from edgelink.router.expr import (
    DEFAULT_LIMITS,
    DROP,
    Condition,
    EvalError,
    ExprLimits,
    LimitError,
    Transform,
    compile_condition,
    compile_transform,
    loose_equal,
)
from edgelink.router.schema import RouteSpec, RoutingConfig, load_routing
from edgelink.router.targets import ConnectionTarget, LogTarget, SendsData, Target, Writer
from edgelink.tasks import cancel_and_wait

__all__ = ["QuarantineCallback", "Router", "RouteTableDiff", "SpamCallback"]

logger = logging.getLogger(__name__)

#: ``on_spam(connection_id, info)``: a connection exceeded its budget (called once per trip).
SpamCallback = Callable[[str, dict[str, Any]], None]

#: ``on_quarantine(event_type, info)``: a route or source was quarantined or let out again
#: (``route_quarantined``, ``source_quarantined``, ``quarantine_lifted``).
QuarantineCallback = Callable[[str, dict[str, Any]], None]

#: Sources whose strikes are tracked at once; past this the tally starts over.
STRIKE_SOURCES_LIMIT: Final = 10_000

#: Plans cached per route table; past this the cache starts over (addresses
#: invented by a source must not grow memory without bound).
PLAN_CACHE_LIMIT: Final = 200_000
#: Echoes remembered at once; older ones go first.
ECHO_LIMIT: Final = 10_000
#: Writes remembered per address for echo recognition.
_ECHOES_PER_ADDRESS: Final = 4
#: Repeated failures of one route or target are logged at most this often, s.
_LOG_EVERY: Final = 60.0

_new_datapoint = tuple.__new__
_Echo = tuple[Any, tuple[str, ...], int, tuple[str, ...], float]
_EMPTY: Final[tuple[()]] = ()


class _Strikes:
    """The times of the last ``count`` strikes against a route or source."""

    __slots__ = ("stamps",)

    def __init__(self, count: int) -> None:
        self.stamps: deque[float] = deque(maxlen=count)

    def hit(self, now: float, window: float) -> bool:
        """Count a strike; True if ``count`` of them fell within ``window`` seconds."""
        stamps = self.stamps
        stamps.append(now)
        return len(stamps) == stamps.maxlen and now - stamps[0] <= window


class _Route:
    """One compiled route and its counters."""

    __slots__ = (
        "_last_log",
        "condition",
        "crashes",
        "delivery_errors",
        "enabled",
        "eval_errors",
        "failing",
        "filtered",
        "id",
        "index",
        "last_error",
        "last_fired",
        "limit_errors",
        "limits",
        "loop_blocked",
        "passed",
        "path1",
        "patterns",
        "quarantine",
        "spec",
        "strikes",
        "suppressed",
        "templates",
        "transform",
    )

    def __init__(
        self,
        spec: RouteSpec,
        index: int,
        patterns: tuple[Pattern, ...],
        templates: tuple[Template, ...],
        condition: Condition | None,
        transform: Transform | None,
    ) -> None:
        self.id = spec.id
        self.spec = spec
        self.index = index
        self.enabled = spec.enabled
        self.patterns = patterns
        self.templates = templates
        self.condition = condition
        self.transform = transform
        self.path1 = (spec.id,)
        self.passed = 0
        self.filtered = 0
        self.suppressed = 0
        self.eval_errors = 0
        self.delivery_errors = 0
        self.loop_blocked = 0
        self.last_fired: float | None = None
        self.last_error: str | None = None
        self.failing = False
        self._last_log = -_LOG_EVERY
        #: Evaluations over a cap or the cost budget; crashes (not an `EvalError`).
        self.limit_errors = 0
        self.crashes = 0
        self.limits = DEFAULT_LIMITS
        self.strikes: _Strikes | None = None
        #: Why and since when the route is quarantined (None: it is not).
        self.quarantine: dict[str, Any] | None = None

    @property
    def state(self) -> str:
        """``quarantined``, ``disabled`` or ``enabled``."""
        if self.quarantine is not None:
            return "quarantined"
        return "enabled" if self.enabled else "disabled"

    def stats(self) -> dict[str, Any]:
        matched = self.passed + self.filtered + self.suppressed + self.eval_errors
        q = self.quarantine
        return {
            "id": self.id,
            "enabled": self.enabled,
            "state": self.state,
            "reason": q["reason"] if q else None,
            "since": q["since"] if q else None,
            "limit_errors": self.limit_errors,
            "crashes": self.crashes,
            "matched": matched,
            "passed": self.passed,
            "filtered": self.filtered,
            "suppressed": self.suppressed,
            "errors": self.eval_errors + self.delivery_errors,
            "loop_blocked": self.loop_blocked,
            "last_fired": self.last_fired,
            "last_error": self.last_error,
        }

    def __repr__(self) -> str:
        return f"<Route {self.id} passed={self.passed} filtered={self.filtered}>"


#: A resolved target of one plan entry: (outbox, tag), or (None, address) for a virtual address.
_Out = tuple["_Outbox | None", str]
_Plan = tuple[tuple[_Route, tuple[_Out, ...]], ...]


class _Table:
    """An immutable route table plus its plan cache."""

    __slots__ = ("by_id", "exact", "plans", "routes", "source", "warned", "wild")

    def __init__(self, routes: list[_Route], source: str | None) -> None:
        self.routes = tuple(routes)
        self.by_id = {r.id: r for r in routes}
        self.exact: dict[str, list[_Route]] = {}
        self.wild: PatternIndex[_Route] = PatternIndex()
        for route in routes:
            if not route.enabled or route.quarantine is not None:
                continue
            for pattern in route.patterns:
                if pattern.is_exact:
                    self.exact.setdefault(pattern.text, []).append(route)
                else:
                    self.wild.add(pattern, route)
        self.plans: dict[str, _Plan] = {}
        self.source = source
        #: (route id, address) pairs already logged as virtual.
        self.warned: set[tuple[str, str]] = set()


class _Outbox:
    """The queue and delivery task of one target."""

    __slots__ = (
        "_last_log",
        "batched",
        "dropped",
        "echo",
        "endpoint",
        "errors",
        "failing",
        "idle",
        "kind",
        "last_error",
        "limit",
        "queue",
        "sent",
        "target",
        "task",
    )

    def __init__(self, endpoint: str, target: SendsData, kind: str, limit: int) -> None:
        self.endpoint = endpoint
        self.target = target
        self.kind = kind
        self.queue: list[tuple[str, DataPoint]] = []
        self.task: asyncio.Task[None] | None = None
        self.idle = True
        send_batch = getattr(type(target), "send_batch", None)
        self.batched = send_batch is not None and send_batch is not Target.send_batch
        self.echo = bool(getattr(target, "echo", False))
        self.limit = limit
        self.sent = 0
        self.errors = 0
        self.dropped = 0
        self.failing = False
        self.last_error: str | None = None
        self._last_log = -_LOG_EVERY

    def address_of(self, tag: str) -> str:
        """The full address of ``tag`` at this endpoint."""
        return f"{self.endpoint}.{tag}" if tag else self.endpoint

    def trim(self) -> None:
        # Over the limit: the oldest tenth goes, so trimming is amortized O(1).
        cut = max(1, self.limit // 10)
        del self.queue[:cut]
        self.dropped += cut

    def stats(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "kind": self.kind,
            "sent": self.sent,
            "errors": self.errors,
            "dropped": self.dropped,
            "pending": len(self.queue),
            "failing": self.failing,
            "last_error": self.last_error,
        }


class _SpamGuard:
    """A sliding window over the last ``budget`` datapoints of one connection."""

    __slots__ = (
        "budget",
        "limit",
        "monotonic",
        "on_exceeded",
        "source",
        "stamps",
        "tripped",
        "window",
    )

    def __init__(
        self,
        source: str,
        max_pps: float,
        monotonic: Callable[[], float],
        on_exceeded: SpamCallback | None,
    ) -> None:
        self.source = source
        self.limit = max_pps
        # max_pps datapoints in any one second; below 1/s: one per 1/max_pps seconds.
        if max_pps >= 1:
            self.budget, self.window = int(max_pps), 1.0
        else:
            self.budget, self.window = 1, 1.0 / max_pps
        # Made on the first datapoint: an empty deque is 600 bytes and one more
        # object for the garbage collector, per connection, also for the many
        # that never report data (health-checked links).
        self.stamps: deque[float] | None = None
        self.monotonic = monotonic
        self.on_exceeded = on_exceeded
        self.tripped = False

    def admit(self) -> bool:
        if self.tripped:
            return False
        now = self.monotonic()
        stamps = self.stamps
        if stamps is None:
            stamps = self.stamps = deque(maxlen=self.budget)
        if len(stamps) == self.budget and now - stamps[0] < self.window:
            self.tripped = True
            elapsed = now - stamps[0]
            info = {
                "limit_pps": self.limit,
                "count": self.budget + 1,
                "seconds": round(elapsed, 6),
                "window": self.window,
            }
            logger.debug("%s: spam protection tripped (%s)", self.source, info)
            if self.on_exceeded is not None:
                try:
                    self.on_exceeded(self.source, info)
                except Exception:
                    logger.exception("%s: spam callback failed", self.source)
            return False
        stamps.append(now)
        return True


class _Gate:
    """A quarantined source's place among the spam guards: admits nothing, counts the drops.

    Routing checks the guards anyway, so a quarantine costs the hot path nothing.
    """

    __slots__ = ("info", "inner")

    def __init__(self, info: dict[str, Any], inner: _SpamGuard | None) -> None:
        self.info = info
        #: The source's spam guard, back in place when the quarantine is lifted.
        self.inner = inner

    def admit(self) -> bool:
        self.info["dropped"] += 1
        return False


@dataclass(frozen=True, slots=True)
class RouteTableDiff:
    """What `Router.load_routes` changed, by route id (each sorted).

    Unchanged routes keep their counters and their state (deadband, windows).
    """

    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]


def _fast_wall_clock(clock: Clock) -> Callable[[], float]:
    # SystemClock.time is a Python call around time.time: skip the wrapper.
    return time.time if type(clock) is SystemClock else clock.time


class Router:
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
        history: Datapoints kept per address in the data space.
        max_hops: Routes one datapoint may pass in a row (the loop guard).
        echo_window: Seconds a value written to a device (or an echo target)
            is expected back; the echo carries the writing route's path.
        queue_limit: Datapoints an outbox holds before it drops its oldest.
        delivery_timeout: Longest one send (or batch) to a target may take, s.
        max_addresses: Addresses the data space keeps.
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
        history: int = 10,
        max_hops: int = 8,
        echo_window: float = 5.0,
        queue_limit: int = 100_000,
        delivery_timeout: float | None = 60.0,
        max_addresses: int = 100_000,
        limits: ExprLimits | None = None,
        quarantine_after: int = 5,
        quarantine_window: float = 60.0,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self._time = _fast_wall_clock(self.clock)
        self._monotonic = self.clock.monotonic
        self._writer = writer
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
        self._subs = self.data._subs
        self._table = _Table([], None)
        self._outboxes: dict[str, _Outbox] = {}
        self._retired: set[_Outbox] = set()
        self._connections: set[str] = set()
        self._guards: dict[str, _SpamGuard | _Gate] = {}
        #: address -> recent writes: (value, path, hops, trail, expires at).
        self._echoes: dict[str, list[_Echo]] = {}
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
        self.configure(
            limits=limits, quarantine_after=quarantine_after, quarantine_window=quarantine_window
        )
        #: Called when a route or source is quarantined or let out (the service events it).
        self.on_quarantine: QuarantineCallback | None = None
        #: Quarantined sources: id -> {"reason", "since", "error", "dropped"}.
        self._quarantined: dict[str, dict[str, Any]] = {}
        self._source_strikes: dict[str, _Strikes] = {}
        #: Datapoints dropped because their source is quarantined.
        self.quarantine_dropped = 0

    def configure(
        self,
        *,
        limits: ExprLimits | None = None,
        quarantine_after: int | None = None,
        quarantine_window: float | None = None,
    ) -> None:
        """Set the expression caps and the quarantine thresholds.

        New caps apply to the routes compiled afterwards: the next
        `load_routes` recompiles every route when they changed.

        Raises:
            ValueError: for a threshold below 1 (count) or not above 0 (window).
        """
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

    # ------------------------------------------------------------ the table

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
        old = self._table
        routes: list[_Route] = []
        errors: list[tuple[str, str]] = []
        first: RouteError | None = None
        reused: list[tuple[_Route, int]] = []
        for i, spec in enumerate(config.routes):
            previous = old.by_id.get(spec.id)
            if previous is not None and previous.spec == spec and previous.limits is self.limits:
                reused.append((previous, i))
                routes.append(previous)
                continue
            try:
                routes.append(self._compile(spec, i, file))
            except RouteError as exc:
                errors.append((exc.path or f"routes[{i}]", exc.detail))
                first = first or exc
        if first is not None:
            if len(errors) == 1:
                raise first
            raise RouteError(
                first.message,
                file=file,
                path=first.path,
                route_id=first.route_id,
                expression=first.expression,
                position=first.position,
                errors=errors,
            )
        # Only now that nothing can fail: a reused route takes its new place.
        for route, index in reused:
            route.index = index
        table = _Table(routes, file)
        old_ids = set(old.by_id)
        new_ids = set(table.by_id)
        changed = sorted(rid for rid in old_ids & new_ids if table.by_id[rid] is not old.by_id[rid])
        diff = RouteTableDiff(
            added=sorted(new_ids - old_ids),
            removed=sorted(old_ids - new_ids),
            changed=changed,
            unchanged=sorted((old_ids & new_ids) - set(changed)),
        )
        # The swap: one assignment. route_data reads self._table once per datapoint.
        self._table = table
        logger.info(
            "routes loaded from %s: %d routes (%d added, %d removed, %d changed)",
            file,
            len(routes),
            len(diff.added),
            len(diff.removed),
            len(diff.changed),
        )
        return diff

    def _compile(self, spec: RouteSpec, index: int, file: str) -> _Route:
        where = f"routes[{index}]"
        rid = spec.id
        patterns: list[Pattern] = []
        for j, text in enumerate(spec.sources):
            path = f"{where}.from" if isinstance(spec.from_, str) else f"{where}.from[{j}]"
            try:
                patterns.append(parse_pattern(text))
            except RouteError as exc:
                raise RouteError(exc.message, file=file, path=path, route_id=rid) from None
        templates: list[Template] = []
        fewest = min(p.wildcards for p in patterns)
        for j, text in enumerate(spec.targets):
            path = f"{where}.to" if isinstance(spec.to, str) else f"{where}.to[{j}]"
            try:
                template = parse_template(text)
            except RouteError as exc:
                raise RouteError(exc.message, file=file, path=path, route_id=rid) from None
            if template.highest_capture > fewest:
                raise RouteError(
                    f"{{{template.highest_capture}}} needs {template.highest_capture} wildcards "
                    f"in 'from', but a pattern there has {fewest}",
                    file=file,
                    path=path,
                    route_id=rid,
                )
            templates.append(template)
        condition = transform = None
        if spec.condition is not None:
            try:
                condition = compile_condition(spec.condition, route_id=rid, limits=self.limits)
            except RouteError as exc:
                raise _located(exc, file, f"{where}.condition") from None
        if spec.transform is not None:
            try:
                transform = compile_transform(
                    spec.transform, route_id=rid, clock=self.clock, limits=self.limits
                )
            except RouteError as exc:
                raise _located(exc, file, f"{where}.transform") from None
        route = _Route(spec, index, tuple(patterns), tuple(templates), condition, transform)
        route.limits = self.limits
        return route

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
            "cached_plans": len(self._table.plans),
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

    # ------------------------------------------------------------ endpoints

    @property
    def endpoints(self) -> dict[str, str]:
        """Every endpoint id and its kind (``connection``, ``target``, ``log``)."""
        return {ep: ob.kind for ep, ob in sorted(self._outboxes.items())}

    def set_writer(self, writer: Writer | None) -> None:
        """Set how the router writes to connections (the manager does this)."""
        self._writer = writer

    def _current_writer(self) -> Writer | None:
        return self._writer

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
            target = ConnectionTarget(connection_id, self._current_writer)
            self._set_outbox(
                connection_id, _Outbox(connection_id, target, "connection", self.queue_limit)
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
            guard = _SpamGuard(source_id, max_pps, self._monotonic, on_spam)
        self._set_guard(source_id, guard)

    def _set_guard(self, source_id: str, guard: _SpamGuard | None) -> None:
        """Install a spam guard (or none), behind the source's quarantine gate if it has one."""
        quarantine = self._quarantined.get(source_id)
        if quarantine is not None:
            self._guards[source_id] = _Gate(quarantine, guard)
        elif guard is None:
            self._guards.pop(source_id, None)
        else:
            self._guards[source_id] = guard

    def _spam_guard(self, source_id: str) -> _SpamGuard | None:
        guard = self._guards.get(source_id)
        return guard.inner if isinstance(guard, _Gate) else guard

    def reset_spam(self, source_id: str) -> None:
        """Let a source that tripped spam protection send again (with a fresh window)."""
        guard = self._spam_guard(source_id)
        if guard is not None:
            guard.tripped = False
            guard.stamps = None

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
        self._set_outbox(endpoint_id, _Outbox(endpoint_id, target, "target", self.queue_limit))

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

    def _set_outbox(self, endpoint_id: str, ob: _Outbox) -> None:
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

    # ---------------------------------------------------------- the hot path

    def route_data(
        self,
        source_id: str,
        tag: str,
        value: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        quality: str | None = None,
        ts: float | None = None,
    ) -> bool:
        """Route one datapoint: store it, match routes, check, transform, schedule delivery.

        Synchronous and cheap; call it on the event loop. The datapoint's
        timestamp and quality come from ``ts``/``quality``, else from
        ``metadata["ts"]``/``metadata["quality"]``, else now and ``"good"``;
        ``metadata`` stays on the datapoint as it is. Deliveries run in the
        background: ``await drain()`` waits for them. Never raises for a bad
        value: a failing condition or transform counts as an error of its route.

        Returns:
            False if spam protection dropped the datapoint, its source is
            quarantined (`enable_source`), or the router is paused (`pause`),
            else True.
        """
        if self.paused:
            self.paused_dropped += 1
            return False
        if metadata is not None:
            if quality is None:
                quality = metadata.get("quality", "good")
            if ts is None:
                ts = metadata.get("ts")
        if self._guards:
            guard = self._guards.get(source_id)
            if guard is not None and not guard.admit():
                # A quarantined source's gate stands among the guards: no check of its own.
                if guard.__class__ is _Gate:
                    self.quarantine_dropped += 1
                else:
                    self.spam_dropped += 1
                return False
        self.received += 1
        address = f"{source_id}.{tag}"
        if ts is None:
            ts = self._time()
        if quality is None:
            quality = "good"
        # The datapoint as a plain tuple of DataPoint's fields: building the
        # DataPoint itself costs three times as much, and only the routes that
        # pass need one (the data space makes one when it is read).
        dp: Record
        trail: tuple[str, ...] | None = None
        if self._echoes:
            dp, trail = self._echo_record(address, value, ts, quality, source_id, metadata)
        else:
            dp = (address, value, ts, quality, source_id, metadata, _EMPTY, 0)
        # Captured before the data space runs subscribers: one of them may load
        # new routes, and this datapoint must see one table only.
        table = self._table
        try:
            ring: deque[Record] | None = self._rings[address]
        except KeyError:
            ring = self.data._new_ring(address, source_id)
        if ring is not None:
            if self._subs:
                prev = ring[-1] if ring else None
                ring.append(dp)
                self.data.notify(dp, prev)
            else:
                ring.append(dp)
        try:
            plan = table.plans[address]
        except KeyError:
            plan = self._plan(table, address, source_id, tag)
        if not plan:
            return True
        if trail is not None:
            # An echo of our own write carries its route path: the loop guard applies.
            self._fire(table, plan, dp, value, trail, ts)
            return True
        # The first hop, inlined: this loop is _fire without the loop guard (an
        # empty path cannot hold a route), and it is most of route_data's cost.
        for route, outs in plan:
            try:
                cond = route.condition
                if cond is not None and not cond(value, dp):
                    route.filtered += 1
                    continue
                transform = route.transform
                out = value if transform is None else transform(value, dp)
            except Exception as exc:  # noqa: BLE001 - a bad value fails its route only
                self._route_failed(route, exc, dp[4])
                continue
            if out is DROP:
                route.suppressed += 1
                continue
            route.passed += 1
            route.last_fired = ts
            if route.failing:
                self._route_recovered(route)
            out_dp: DataPoint = _new_datapoint(
                DataPoint,
                (address, out, ts, quality, source_id, metadata, route.path1, 1),
            )
            virtual = None
            for ob, ttag in outs:
                if ob is None:
                    # Routed on after this route's own targets have their datapoint.
                    virtual = [ttag] if virtual is None else [*virtual, ttag]
                    continue
                queue = ob.queue
                queue.append((ttag, out_dp))
                if ob.idle:
                    self._start(ob)
                elif len(queue) > ob.limit:
                    ob.trim()
                if ob.echo:
                    self._remember_echo(ob, ttag, out_dp, (address,))
            if virtual is not None:
                for target in virtual:
                    self._route_virtual(table, target, out_dp, (address,))
        return True

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

    def _echo_record(
        self,
        address: str,
        value: Any,
        ts: float,
        quality: str,
        source_id: str,
        metadata: Mapping[str, Any] | None,
    ) -> tuple[Record, tuple[str, ...] | None]:
        """Build the record; if it echoes a recent write, with that write's path and trail."""
        entries = self._echoes.get(address)
        if entries is not None:
            now = self._monotonic()
            live = [e for e in entries if e[4] >= now]
            if len(live) != len(entries):
                if live:
                    self._echoes[address] = live
                else:
                    del self._echoes[address]
            for written, path, hops, trail, _ in reversed(live):
                if loose_equal(written, value):
                    return (address, value, ts, quality, source_id, metadata, path, hops), trail
        return (address, value, ts, quality, source_id, metadata, _EMPTY, 0), None

    def _fire(
        self,
        table: _Table,
        plan: _Plan,
        dp: Record,
        value: Any,
        trail: tuple[str, ...],
        ts: float,
    ) -> None:
        """Run a plan for a datapoint that already passed routes, with the loop guard.

        ``trail`` holds the addresses the datapoint's lineage has been at. A
        route never fires twice in one lineage (``path``), a lineage ends
        after ``max_hops`` routes, and nothing is sent back to an address in
        the trail: that is what settles a bidirectional pair whose two sides
        change at once (each side's write would otherwise race the other's
        report forever).
        """
        path = dp[6]
        hops = dp[7]
        for route, outs in plan:
            if hops >= self.max_hops or route.id in path:
                route.loop_blocked += 1
                self.loop_blocked += 1
                continue
            try:
                cond = route.condition
                if cond is not None and not cond(value, dp):
                    route.filtered += 1
                    continue
                transform = route.transform
                out = value if transform is None else transform(value, dp)
            except Exception as exc:  # noqa: BLE001 - a bad value fails its route only
                self._route_failed(route, exc, dp[4])
                continue
            if out is DROP:
                route.suppressed += 1
                continue
            route.passed += 1
            route.last_fired = ts
            if route.failing:
                self._route_recovered(route)
            out_dp: DataPoint = _new_datapoint(
                DataPoint,
                (dp[0], out, dp[2], dp[3], dp[4], dp[5], path + route.path1, hops + 1),
            )
            virtual = None
            for ob, ttag in outs:
                target = ttag if ob is None else ob.address_of(ttag)
                if target in trail:
                    route.loop_blocked += 1
                    self.loop_blocked += 1
                    continue
                if ob is None:
                    virtual = [ttag] if virtual is None else [*virtual, ttag]
                    continue
                queue = ob.queue
                queue.append((ttag, out_dp))
                if ob.idle:
                    self._start(ob)
                elif len(queue) > ob.limit:
                    ob.trim()
                if ob.echo:
                    self._remember_echo(ob, ttag, out_dp, trail)
            if virtual is not None:
                for target in virtual:
                    self._route_virtual(table, target, out_dp, trail)

    def _route_virtual(
        self, table: _Table, address: str, out: DataPoint, trail: tuple[str, ...]
    ) -> None:
        """Route a value sent to a virtual address (``calc.total_power``) as a new datapoint."""
        source, _, tag = address.partition(".")
        if self._quarantined and source in self._quarantined:
            self._quarantined[source]["dropped"] += 1
            self.quarantine_dropped += 1
            return
        dp: Record = (address, out[1], out[2], out[3], source, out[5], out[6], out[7])
        self.data.put(dp)
        plan = table.plans.get(address)
        if plan is None:
            plan = self._plan(table, address, source, tag)
        if plan:
            self._fire(table, plan, dp, dp[1], (*trail, address), dp[2])

    def _remember_echo(self, ob: _Outbox, tag: str, out: DataPoint, trail: tuple[str, ...]) -> None:
        """Expect what was just sent to an echo target back within ``echo_window``.

        The last few values sent to an address are kept: a device may report
        an older write after a newer one was sent.
        """
        address = ob.address_of(tag)
        mono = self._monotonic()
        echoes = self._echoes
        entry = (out[1], out[6], out[7], (*trail, address), mono + self.echo_window)
        entries = echoes.get(address)
        if entries is not None:
            entries.append(entry)
            if len(entries) > _ECHOES_PER_ADDRESS:
                del entries[0]
            return
        if len(echoes) >= ECHO_LIMIT:
            for key in [k for k, e in echoes.items() if e[-1][4] < mono]:
                del echoes[key]
            if len(echoes) >= ECHO_LIMIT:
                del echoes[next(iter(echoes))]
        echoes[address] = [entry]

    def _plan(self, table: _Table, address: str, source: str, tag: str) -> _Plan:
        hits: dict[_Route, tuple[str, ...]] = {}
        for route in table.exact.get(address, ()):
            hits.setdefault(route, ())
        if len(table.wild):
            for route, caps in table.wild.match(address):
                hits.setdefault(route, caps)
        entries = []
        for route in sorted(hits, key=lambda r: r.index):
            caps = hits[route]
            outs = []
            for template in route.templates:
                target = template.text if template.is_static else template.render(caps, tag, source)
                outs.append(self._resolve_target(table, route, target))
            entries.append((route, tuple(outs)))
        plan = tuple(entries)
        if len(table.plans) >= PLAN_CACHE_LIMIT:
            table.plans = {}
        table.plans[address] = plan
        return plan

    def _resolve_target(self, table: _Table, route: _Route, address: str) -> _Out:
        endpoint, tag = resolve_endpoint(address, self._outboxes)
        if endpoint is not None:
            return self._outboxes[endpoint], tag
        if address.startswith("log.") and len(address) > 4:
            name, _, tag = address[4:].partition(".")
            endpoint = "log." + name
            ob = _Outbox(endpoint, LogTarget(name), "log", self.queue_limit)
            self._outboxes[endpoint] = ob
            return ob, tag
        key = (route.id, address)
        if key not in table.warned:
            table.warned.add(key)
            logger.info(
                "route %s: %r names no connection or target: routed as a virtual address",
                route.id,
                address,
            )
        return None, address

    # -------------------------------------------------------------- failures

    def _route_failed(self, route: _Route, exc: BaseException, source: str) -> None:
        route.eval_errors += 1
        text = f"{type(exc).__name__}: {exc}"
        route.last_error = text
        now = self._monotonic()
        if not route.failing or now - route._last_log >= _LOG_EVERY:
            route._last_log = now
            logger.warning(
                "route %s failed (%d errors so far): %s", route.id, route.eval_errors, text
            )
        route.failing = True
        if isinstance(exc, LimitError):
            route.limit_errors += 1
            if exc.entry:
                # The value came in over a cap: the source's doing, not the route's.
                self._strike_source(source, text, now)
            else:
                self._strike_route(route, text, now)
        elif not isinstance(exc, EvalError | RouteError):
            # Not a value the language refuses but a crash of its handler.
            route.crashes += 1
            self._strike_source(source, text, now)

    # ------------------------------------------------------------ quarantine

    def _strike_route(self, route: _Route, text: str, now: float) -> None:
        if route.quarantine is not None:
            return
        if route.strikes is None:
            route.strikes = _Strikes(self.quarantine_after)
        if not route.strikes.hit(now, self.quarantine_window):
            return
        route.quarantine = {"reason": "poison", "since": self._time(), "error": text}
        # Out of the matching indexes: a new table (plans start over), one assignment.
        table = self._table
        new = _Table(list(table.routes), table.source)
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
            strikes = tally[source] = _Strikes(self.quarantine_after)
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
            new = _Table(list(table.routes), table.source)
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

    def _route_recovered(self, route: _Route) -> None:
        route.failing = False
        logger.info("route %s works again", route.id)

    def _delivery_failed(
        self, ob: _Outbox, items: list[tuple[str, DataPoint]], exc: BaseException
    ) -> None:
        ob.errors += len(items)
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        ob.last_error = text
        if not isinstance(exc, EdgelinkError | OSError | TimeoutError):
            # The handler crashed on these datapoints (not a link or device failure).
            now = self._monotonic()
            for source in {dp.source for _, dp in items}:
                self._strike_source(source, f"target {ob.endpoint}: {text}", now)
        by_id = self._table.by_id
        for _, dp in items:
            if dp.path:
                route = by_id.get(dp.path[-1])
                if route is not None:
                    route.delivery_errors += 1
                    route.last_error = f"delivery to {ob.endpoint}: {text}"
        now = self._monotonic()
        if not ob.failing or now - ob._last_log >= _LOG_EVERY:
            ob._last_log = now
            logger.warning(
                "target %s: delivery failed (%d so far): %s", ob.endpoint, ob.errors, text
            )
        ob.failing = True

    def _delivery_ok(self, ob: _Outbox) -> None:
        ob.failing = False
        logger.info("target %s: deliveries work again", ob.endpoint)

    # -------------------------------------------------------------- delivery

    def _start(self, ob: _Outbox) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: drain() starts it
        ob.idle = False
        ob.task = loop.create_task(
            self._run_outbox(ob), name=f"edgelink.router[{ob.endpoint}].deliver"
        )

    async def _run_outbox(self, ob: _Outbox) -> None:
        try:
            while ob.queue:
                batch, ob.queue = ob.queue, []
                await self._deliver(ob, batch)
        finally:
            ob.task = None
            ob.idle = True
            if not ob.queue:
                # A removed target is forgotten once it has delivered what it had.
                self._retired.discard(ob)

    async def _deliver(self, ob: _Outbox, batch: list[tuple[str, DataPoint]]) -> None:
        target = ob.target
        timeout = self.delivery_timeout
        deadline = self._deadlines.timeout
        if ob.batched:
            try:
                with deadline(timeout):
                    await target.send_batch(batch)  # type: ignore[attr-defined]
            except asyncio.CancelledError:
                ob.dropped += len(batch)
                raise
            except Exception as exc:  # noqa: BLE001 - a failing target fails alone
                self._delivery_failed(ob, batch, exc)
                return
            ob.sent += len(batch)
            if ob.failing:
                self._delivery_ok(ob)
            return
        send = target.send
        done = 0
        try:
            for tag, dp in batch:
                try:
                    with deadline(timeout):
                        await send(tag, dp)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a failing target fails alone
                    self._delivery_failed(ob, [(tag, dp)], exc)
                else:
                    ob.sent += 1
                    if ob.failing:
                        self._delivery_ok(ob)
                done += 1
        except asyncio.CancelledError:
            ob.dropped += len(batch) - done
            raise

    def _all_outboxes(self) -> list[_Outbox]:
        return [*self._outboxes.values(), *self._retired]

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every scheduled delivery has finished (and what those scheduled).

        Raises:
            TimeoutError: if deliveries are still running after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                busy = [ob for ob in self._all_outboxes() if ob.queue or ob.task is not None]
                if not busy:
                    return
                for ob in busy:
                    if ob.task is None:
                        self._start(ob)
                tasks = [ob.task for ob in busy if ob.task is not None]
                await asyncio.wait(tasks)

    async def aclose(self) -> None:
        """Cancel every delivery still running; what was queued is dropped (and counted)."""
        outboxes = self._all_outboxes()
        tasks = [ob.task for ob in outboxes if ob.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            await cancel_and_wait(task)
        for ob in outboxes:
            ob.dropped += len(ob.queue)
            ob.queue = []
            ob.idle = True
        self._retired.clear()


def _located(exc: RouteError, file: str, path: str) -> RouteError:
    return RouteError(
        exc.message,
        file=file,
        path=path,
        route_id=exc.route_id,
        expression=exc.expression,
        position=exc.position,
    )


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
