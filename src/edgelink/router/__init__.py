"""The universal data router: routes, conditions, transforms, targets and the data space.

See DESIGN section 7 and ``docs/router.md``::

    router = manager.router
    router.load_routes("config/routing.json")
    router.add_target("webhook.alerts", MyWebhook())
    router.route_data("calc", "total_power", 4200.0)
    await router.drain()
    router.data.get("plc_1.MAIN.temperature")
"""

from edgelink.router.address import (
    Pattern,
    PatternIndex,
    Template,
    parse_pattern,
    parse_template,
    resolve_endpoint,
)
from edgelink.router.datapoint import DataPoint
from edgelink.router.dataspace import DataSpace, DataSubscriber
from edgelink.router.engine import (
    QuarantineCallback,
    Router,
    RouteTableDiff,
    SpamCallback,
    check_routes,
)
from edgelink.router.expr import (
    DROP,
    Condition,
    EvalError,
    ExprLimits,
    LimitError,
    Transform,
    compile_condition,
    compile_transform,
    parse_expression,
    parse_transform,
)
from edgelink.router.schema import RouteSpec, RoutingConfig, load_routing, routing_json_schema
from edgelink.router.targets import (
    DirectWriter,
    LogTarget,
    MemoryTarget,
    SendsData,
    Target,
    WriteNowait,
    Writer,
)

__all__ = [
    "DROP",
    "Condition",
    "DataPoint",
    "DataSpace",
    "DataSubscriber",
    "DirectWriter",
    "EvalError",
    "ExprLimits",
    "LimitError",
    "LogTarget",
    "MemoryTarget",
    "Pattern",
    "PatternIndex",
    "QuarantineCallback",
    "RouteSpec",
    "RouteTableDiff",
    "Router",
    "RoutingConfig",
    "SendsData",
    "SpamCallback",
    "Target",
    "Template",
    "Transform",
    "WriteNowait",
    "Writer",
    "check_routes",
    "compile_condition",
    "compile_transform",
    "load_routing",
    "parse_expression",
    "parse_pattern",
    "parse_template",
    "parse_transform",
    "resolve_endpoint",
    "routing_json_schema",
]
