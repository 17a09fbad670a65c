"""Try one route on a sample value: nothing is sent, no live route's state is touched.

The answer says whether ``from`` matches, what the condition says, and what
would be sent where.

`try_route` compiles the route afresh (under the running expression caps), so
a stateful transform step (deadband, throttle) starts from nothing, as a new
route would.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from edgelink.clock import Clock
from edgelink.router.address import PatternIndex
from edgelink.router.datapoint import DataPoint
from edgelink.router.expr import ExprLimits
from edgelink.router.expr.base import DROP
from edgelink.router.schema import load_routing
from edgelink.router.table import compile_route

__all__ = ["TRIAL_FILE", "try_route"]

#: The file name errors of a tried route carry.
TRIAL_FILE = "<route>"


def try_route(
    spec: Mapping[str, Any],
    address: str,
    value: Any,
    *,
    limits: ExprLimits,
    clock: Clock,
    quality: str = "good",
) -> dict[str, Any]:
    """Run one route (as written in ``routing.json``) on a sample datapoint.

    Args:
        spec: The route: ``id``, ``from``, ``to``, optional ``condition`` and ``transform``.
        address: The sample's address, ``<source>.<tag>``.
        value: The sample value.
        limits: The expression caps the router runs with.
        clock: The clock transforms read.
        quality: The sample's quality.

    Returns:
        ``matches`` (its ``from`` matches ``address``), ``condition`` (True,
        False, or None without one), ``passed``, ``value`` (the transformed
        value, None when not passed), ``dropped`` (a transform step held it
        back), ``targets`` (the addresses it would go to) and ``error`` (a
        condition or transform that failed on this value, else None).

    Raises:
        RouteError: for a route that does not validate or compile, with the
            JSON path and, for an expression, the position.
    """
    # Validated as a one-route table: the same messages and paths as routing.json's.
    config, _ = load_routing({"routes": [dict(spec)]})
    route = compile_route(config.routes[0], 0, TRIAL_FILE, limits, clock)
    index: PatternIndex[int] = PatternIndex()
    for i, pattern in enumerate(route.patterns):
        index.add(pattern, i)
    found = index.match(address)
    source, _, tag = address.partition(".")
    result: dict[str, Any] = {
        "matches": bool(found),
        "condition": None,
        "passed": False,
        "value": None,
        "dropped": False,
        "targets": [],
        "error": None,
    }
    dp = DataPoint(address, value, time.time(), quality, source)
    try:
        if route.condition is not None:
            result["condition"] = bool(route.condition(value, dp))
            if not result["condition"]:
                return result
        out = value if route.transform is None else route.transform(value, dp)
    except Exception as exc:  # noqa: BLE001 - the sample fails the route, as live
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    if out is DROP:
        result["dropped"] = True
        return result
    result["passed"] = True
    result["value"] = out
    captures = found[0][1] if found else ()
    result["targets"] = [t.render(captures, tag, source) for t in route.templates]
    return result
