"""The Edge OS seed's data gateway (``edge-os-changelog.de.md``) on edgelink's router.

The document's gateway has one entry for every datapoint,
``DataGateway.route_data(source_id, tag, value, metadata)``, and spells out
its steps: ``normalize`` into the unified data space, ``routing_engine.match``,
then per route ``route.transform`` and ``route.send_to_target``. Here:

- `DataGateway.route_data` is `edgelink.router.Router.route_data` (the same
  call: stored in the data space, matched, conditioned, transformed, queued
  per target, spam-guarded, counted);
- the steps exist too, for code that runs them one at a time as the
  document's sketch does: `DataGateway.normalize` makes the `DataPoint`,
  `RoutingEngine.match` gives the routes whose ``from`` matches and whose
  ``condition`` passes, `RoutedRoute.transform` runs the route's transform,
  `RoutedRoute.send_to_target` delivers through the router's outboxes with
  the router's counters and loop guard. Nothing here keeps routes, queues
  or state of its own;
- ``PRIORITY_*`` are the isolation priority classes; `DataGateway.set_priority`
  sets the gateway process's nice value (per connection it is
  ``isolation.priority`` in ``connections.json``);
- `SUSPENDED_BY_SPAM` is the status code a spam-suspended connection's
  status carries (``status_code`` in `ConnectionManager.get_status`).

Example:
    gateway = DataGateway(manager)            # or a Router, or a running Gateway
    gateway.route_data("bt.bms_001", "voltage", 52310, {"quality": "good"})
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from edgelink.errors import ConfigError
from edgelink.isolation.spec import PRIORITY_NICE
from edgelink.router import DataPoint, Router
from edgelink.router.expr import DROP
from edgelink.state import SUSPENDED_BY_SPAM

if TYPE_CHECKING:
    from edgelink.router.table import Out, Route, RouteTable

__all__ = [
    "DROPPED",
    "PRIORITY_ABOVE_NORMAL",
    "PRIORITY_BELOW_NORMAL",
    "PRIORITY_HIGH",
    "PRIORITY_NORMAL",
    "SUSPENDED_BY_SPAM",
    "DataGateway",
    "RoutedRoute",
    "RoutingEngine",
]

logger = logging.getLogger(__name__)

#: The document's priority classes (psutil nice values: `PRIORITY_NICE`).
PRIORITY_HIGH: Final = "high"
PRIORITY_ABOVE_NORMAL: Final = "above_normal"
PRIORITY_NORMAL: Final = "normal"
PRIORITY_BELOW_NORMAL: Final = "below_normal"

#: What `RoutedRoute.transform` returns when the route holds the value back
#: (a deadband or throttle step, or a transform that failed on it):
#: `RoutedRoute.send_to_target` sends nothing for it.
DROPPED: Final = DROP


def _router_of(source: object) -> Router:
    """The router behind a Router, a ConnectionManager or a started Gateway."""
    if isinstance(source, Router):
        return source
    router = getattr(source, "router", None)
    if isinstance(router, Router):
        return router
    manager = getattr(source, "manager", None)
    router = getattr(manager, "router", None)
    if isinstance(router, Router):
        return router
    raise ConfigError(
        f"DataGateway needs a Router, a ConnectionManager or a started Gateway, "
        f"got {type(source).__name__}"
    )


def _name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"route_data: {kind} must be a non-empty string, got {value!r}")
    return value


class RoutedRoute:
    """One route that matched one datapoint (what the document's loop calls ``route``)."""

    __slots__ = ("_dp", "_outs", "_route", "_router", "_table")

    def __init__(
        self, router: Router, table: RouteTable, route: Route, outs: tuple[Out, ...], dp: DataPoint
    ) -> None:
        self._router = router
        self._table = table
        self._route = route
        self._outs = outs
        self._dp = dp

    @property
    def id(self) -> str:
        """The route's id in ``routing.json``."""
        return self._route.id

    @property
    def targets(self) -> list[str]:
        """The addresses the route sends this datapoint to."""
        return [ttag if ob is None else ob.address_of(ttag) for ob, ttag in self._outs]

    def transform(self, datapoint: DataPoint) -> Any:
        """The route's transform applied to ``datapoint`` (its value if it has none).

        Returns `DROPPED` when a step holds the value back, or when the
        transform fails on it (counted as the route's error, as live).
        """
        step = self._route.transform
        if step is None:
            return datapoint.value
        try:
            return step(datapoint.value, datapoint)
        except Exception as exc:  # noqa: BLE001 - a bad value fails its route only
            self._router._route_failed(self._route, exc, datapoint.source)
            return DROPPED

    def send_to_target(self, value: Any) -> None:
        """Send ``value`` to every target of the route (nothing for `DROPPED`)."""
        self._router.send_passed(self._table, self._route, self._outs, self._dp, value)

    def __repr__(self) -> str:
        return f"<RoutedRoute {self.id} {self._dp.address} -> {', '.join(self.targets)}>"


class RoutingEngine:
    """The document's ``routing_engine``: the router's table, matched one datapoint at a time."""

    __slots__ = ("_router",)

    def __init__(self, router: Router) -> None:
        self._router = router

    def match(self, datapoint: DataPoint) -> list[RoutedRoute]:
        """The routes whose ``from`` matches the datapoint and whose condition passes it.

        A route whose condition is false counts as filtered, one whose
        condition fails on the value as an error of the route, as in
        `Router.route_data`.
        """
        router = self._router
        table, plan = router.plan_of(datapoint)
        matched = []
        for route, outs in plan:
            cond = route.condition
            if cond is not None:
                try:
                    passes = cond(datapoint.value, datapoint)
                except Exception as exc:  # noqa: BLE001 - a bad value fails its route only
                    router._route_failed(route, exc, datapoint.source)
                    continue
                if not passes:
                    route.filtered += 1
                    continue
            matched.append(RoutedRoute(router, table, route, outs, datapoint))
        return matched

    def routes(self) -> list[dict[str, Any]]:
        """The route table as loaded, each route with its counters."""
        return self._router.routes_with_stats()

    def stats(self) -> dict[str, Any]:
        """The router's counters."""
        return self._router.stats()


class DataGateway:
    """The Edge OS ``DataGateway`` on edgelink's router: ``route_data`` and its steps.

    Call it on the event loop that runs the router (as every router call);
    from a thread, use `edgelink.SyncConnectionManager.route_data`.
    """

    def __init__(self, source: object) -> None:
        self._router = _router_of(source)
        self.routing_engine = RoutingEngine(self._router)

    @property
    def router(self) -> Router:
        """The router this gateway feeds."""
        return self._router

    def route_data(
        self, source_id: str, tag: str, value: Any, metadata: Mapping[str, Any] | None = None
    ) -> bool:
        """Route one datapoint from ``source_id`` (e.g. ``plc_001``, ``bt.bms_001``).

        ``metadata`` may carry ``ts`` (wall-clock seconds) and ``quality``;
        it stays on the datapoint. Returns False when spam protection or a
        quarantine dropped it, or the router is paused.

        Raises:
            ConfigError: ``source_id`` or ``tag`` is not a non-empty string.
        """
        return self._router.route_data(
            _name("source_id", source_id), _name("tag", tag), value, metadata
        )

    def normalize(
        self, source_id: str, tag: str, value: Any, metadata: Mapping[str, Any] | None = None
    ) -> DataPoint:
        """The datapoint ``route_data`` makes: address ``<source_id>.<tag>``, time and quality.

        ``ts`` and ``quality`` come from ``metadata`` when it has them, else
        now and ``"good"``.
        """
        source_id = _name("source_id", source_id)
        tag = _name("tag", tag)
        ts = metadata.get("ts") if metadata is not None else None
        quality = metadata.get("quality") if metadata is not None else None
        return DataPoint(
            f"{source_id}.{tag}",
            value,
            float(ts) if isinstance(ts, int | float) else self._router.clock.time(),
            quality if isinstance(quality, str) else "good",
            source_id,
            metadata,
        )

    def set_priority(self, priority: str | int) -> bool:
        """Set the gateway process's CPU priority: a ``PRIORITY_*`` class or a nice value.

        Raising it above normal needs CAP_SYS_NICE (or root): a refusal is
        logged and returns False, nothing else changes.

        Raises:
            ConfigError: for an unknown class or a nice value outside -20..19.
        """
        import psutil

        if isinstance(priority, str):
            try:
                nice = PRIORITY_NICE[priority]
            except KeyError:
                known = ", ".join(sorted(PRIORITY_NICE))
                raise ConfigError(
                    f"set_priority: unknown priority {priority!r} ({known})"
                ) from None
        elif isinstance(priority, int) and not isinstance(priority, bool) and -20 <= priority <= 19:
            nice = priority
        else:
            raise ConfigError(f"set_priority: a nice value is -20..19, got {priority!r}")
        try:
            psutil.Process().nice(nice)
        except psutil.AccessDenied:
            logger.warning("set_priority(%r): the system refused nice %d", priority, nice)
            return False
        return True

    def __repr__(self) -> str:
        return f"<DataGateway {self._router!r}>"
