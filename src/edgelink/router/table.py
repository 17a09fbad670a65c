"""The route table: compiled routes, their counters, the plan cache and the table diff."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from edgelink.clock import Clock
from edgelink.errors import RouteError
from edgelink.router.address import (
    Pattern,
    PatternIndex,
    Template,
    parse_pattern,
    parse_template,
)
from edgelink.router.expr import (
    DEFAULT_LIMITS,
    Condition,
    ExprLimits,
    Transform,
    compile_condition,
    compile_transform,
)
from edgelink.router.schema import RouteSpec, RoutingConfig

if TYPE_CHECKING:
    from edgelink.router.outbox import Outbox
    from edgelink.router.quarantine import Strikes


#: Plans cached per route table; past this the cache starts over (addresses
#: invented by a source must not grow memory without bound).
PLAN_CACHE_LIMIT: Final = 200_000
#: Repeated failures of one route or target are logged at most this often, s.
LOG_EVERY: Final = 60.0


class Route:
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
        self._last_log = -LOG_EVERY
        #: Evaluations over a cap or the cost budget; crashes (not an `EvalError`).
        self.limit_errors = 0
        self.crashes = 0
        self.limits = DEFAULT_LIMITS
        self.strikes: Strikes | None = None
        #: Why and since when the route is quarantined (None: it is not).
        self.quarantine: dict[str, Any] | None = None

    @property
    def state(self) -> str:
        """``quarantined``, ``disabled`` or ``enabled``."""
        if self.quarantine is not None:
            return "quarantined"
        return "enabled" if self.enabled else "disabled"

    def stats(self) -> dict[str, Any]:
        """The route's counters (`Router.route_stats`)."""
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
Out = tuple["Outbox | None", str]
Plan = tuple[tuple[Route, tuple[Out, ...]], ...]


class RouteTable:
    """An immutable route table plus its plan cache."""

    __slots__ = ("by_id", "exact", "plans", "routes", "shapes", "source", "warned", "wild")

    def __init__(self, routes: list[Route], source: str | None) -> None:
        self.routes = tuple(routes)
        self.by_id = {r.id: r for r in routes}
        self.exact: dict[str, list[Route]] = {}
        self.wild: PatternIndex[Route] = PatternIndex()
        for route in routes:
            if not route.enabled or route.quarantine is not None:
                continue
            for pattern in route.patterns:
                if pattern.is_exact:
                    self.exact.setdefault(pattern.text, []).append(route)
                else:
                    self.wild.add(pattern, route)
        self.plans: dict[str, Plan] = {}
        #: Wildcard matches per address shape (`Dispatch._wild_match`).
        self.shapes: dict[str, list[tuple[Route, tuple[str, ...]]]] = {}
        self.source = source
        #: (route id, address) pairs already logged as virtual.
        self.warned: set[tuple[str, str]] = set()


@dataclass(frozen=True, slots=True)
class RouteTableDiff:
    """What `Router.load_routes` changed, by route id (each sorted).

    Unchanged routes keep their counters and their state (deadband, windows).
    """

    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]


def build_table(
    old: RouteTable, config: RoutingConfig, file: str, limits: ExprLimits, clock: Clock
) -> tuple[RouteTable, RouteTableDiff]:
    """Compile a routing config into a new table, reusing ``old``'s unchanged routes.

    Nothing is changed unless everything compiles.

    Raises:
        RouteError: for every bad route at once, naming file, path and route.
    """
    routes: list[Route] = []
    errors: list[tuple[str, str]] = []
    first: RouteError | None = None
    reused: list[tuple[Route, int]] = []
    for i, spec in enumerate(config.routes):
        previous = old.by_id.get(spec.id)
        if previous is not None and previous.spec == spec and previous.limits is limits:
            reused.append((previous, i))
            routes.append(previous)
            continue
        try:
            routes.append(compile_route(spec, i, file, limits, clock))
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
    table = RouteTable(routes, file)
    old_ids = set(old.by_id)
    new_ids = set(table.by_id)
    changed = sorted(rid for rid in old_ids & new_ids if table.by_id[rid] is not old.by_id[rid])
    diff = RouteTableDiff(
        added=sorted(new_ids - old_ids),
        removed=sorted(old_ids - new_ids),
        changed=changed,
        unchanged=sorted((old_ids & new_ids) - set(changed)),
    )
    return table, diff


def compile_route(
    spec: RouteSpec, index: int, file: str, limits: ExprLimits, clock: Clock
) -> Route:
    """Compile one route (``index``: its place in ``file``).

    Raises:
        RouteError: naming the file, the JSON path and the route.
    """
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
            condition = compile_condition(spec.condition, route_id=rid, limits=limits)
        except RouteError as exc:
            raise located(exc, file, f"{where}.condition") from None
    if spec.transform is not None:
        try:
            transform = compile_transform(spec.transform, route_id=rid, clock=clock, limits=limits)
        except RouteError as exc:
            raise located(exc, file, f"{where}.transform") from None
    route = Route(spec, index, tuple(patterns), tuple(templates), condition, transform)
    route.limits = limits
    return route


def located(exc: RouteError, file: str, path: str) -> RouteError:
    """Return ``exc`` placed at ``path`` of ``file``."""
    return RouteError(
        exc.message,
        file=file,
        path=path,
        route_id=exc.route_id,
        expression=exc.expression,
        position=exc.position,
    )
