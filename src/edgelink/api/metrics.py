"""Prometheus metrics of a gateway, in a registry of its own (never the global one).

Connection figures are read from the manager at scrape time (no work per
event); the health-check latency histogram is fed by
`ConnectionManager.on_health_check`; API requests are counted by the app's
middleware.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edgelink.state import ConnectionState

if TYPE_CHECKING:
    from edgelink.manager import ConnectionManager
    from edgelink.router import Router
    from edgelink.service.gateway import Gateway

__all__ = ["GatewayMetrics"]


class _GatewayCollector(Collector):
    def __init__(self, gateway: Gateway, extra: list[Callable[[], Iterator[Metric]]]) -> None:
        self._gateway = gateway
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        gateway = self._gateway
        states = GaugeMetricFamily("edgelink_connections", "Connections by state", labels=["state"])
        up = GaugeMetricFamily(
            "edgelink_connection_up",
            "1 while the connection is connected",
            labels=["connection_id"],
        )
        reconnects = CounterMetricFamily(
            "edgelink_reconnects", "Reconnects since start", labels=["connection_id"]
        )
        errors = CounterMetricFamily(
            "edgelink_connection_errors", "Errors since start", labels=["connection_id"]
        )
        failovers = CounterMetricFamily(
            "edgelink_failovers",
            "Moves to another endpoint since start (docs/failover.md)",
            labels=["connection_id"],
        )
        failbacks = CounterMetricFamily(
            "edgelink_failbacks",
            "Moves back to the preferred endpoint since start",
            labels=["connection_id"],
        )
        counts = dict.fromkeys((str(s) for s in ConnectionState), 0)
        manager = gateway.current_manager
        if manager is not None:
            for cid, status in manager.get_status().items():
                counts[status["status"]] = counts.get(status["status"], 0) + 1
                up.add_metric([cid], 1.0 if status["status"] == "connected" else 0.0)
                reconnects.add_metric([cid], status["stats"]["reconnects"])
                errors.add_metric([cid], status["stats"]["errors"])
                endpoints = status.get("endpoints")
                if endpoints is not None:
                    failovers.add_metric([cid], endpoints["failovers"])
                    failbacks.add_metric([cid], endpoints["failbacks"])
        for state, n in counts.items():
            states.add_metric([state], n)
        yield states
        yield up
        yield reconnects
        yield errors
        yield failovers
        yield failbacks
        yield GaugeMetricFamily(
            "edgelink_panic",
            "1 while the gateway is in panic",
            value=1.0 if gateway.panicked else 0.0,
        )
        if manager is not None:
            yield from _router_metrics(manager.router)
            yield from _runtime_metrics(manager)
        bridge = gateway.bridge
        if bridge is not None:
            stats = bridge.stats()
            yield GaugeMetricFamily(
                "edgelink_bridge_buffer_depth",
                "Messages waiting for the broker",
                value=stats["depth"],
            )
            yield GaugeMetricFamily(
                "edgelink_bridge_queued",
                "Messages in memory on the way to the broker (queued, in flight)",
                value=stats["queued"],
            )
            yield GaugeMetricFamily(
                "edgelink_bridge_live",
                "1 while the bridge publishes live",
                value=float(stats["live"]),
            )
            for name, key, text in (
                ("edgelink_bridge_published", "published", "Messages published"),
                ("edgelink_bridge_buffered", "buffered", "Messages that went to the buffer"),
                ("edgelink_bridge_dropped", "dropped", "Messages a full queue dropped"),
                ("edgelink_bridge_errors", "errors", "Messages refused or failed"),
                ("edgelink_bridge_dead_letters", "dead_letters", "Messages dead-lettered"),
                (
                    "edgelink_bridge_dead_letters_dropped",
                    "dead_letters_dropped",
                    "Dead letters the full table dropped",
                ),
                ("edgelink_bridge_retried", "retried", "Refused messages published again"),
                ("edgelink_bridge_suppressed", "suppressed", "Values the deadband held back"),
                ("edgelink_bridge_coalesced", "coalesced", "Messages a newer one replaced"),
                (
                    "edgelink_bridge_mode_state_evicted",
                    "mode_state_evicted",
                    "Topics whose mode state the bound evicted",
                ),
            ):
                yield CounterMetricFamily(name, text, value=stats[key])
        for extra in self._extra:
            yield from extra()


def _runtime_metrics(manager: ConnectionManager) -> Iterator[Metric]:
    lag = manager.lag_monitor
    yield HistogramMetricFamily(
        "edgelink_loop_lag_seconds",
        "How late the event loop ran a timer (sampled)",
        buckets=[("+Inf" if b == float("inf") else str(b), n) for b, n in lag.buckets()],
        sum_value=lag.sum,
    )
    yield CounterMetricFamily(
        "edgelink_loop_stalls", "Loop-lag samples at or above the threshold", value=lag.stalls
    )
    gc_status = manager.runtime_status()["gc"]
    if gc_status is not None:
        yield GaugeMetricFamily(
            "edgelink_gc_frozen_objects",
            "Objects the garbage collector skips (the gc policy froze them)",
            value=gc_status["frozen_objects"],
        )


def _router_metrics(router: Router) -> Iterator[Metric]:
    stats = router.stats()
    yield CounterMetricFamily(
        "edgelink_datapoints", "Datapoints that entered the router", value=stats["received"]
    )
    yield CounterMetricFamily(
        "edgelink_datapoints_spam_dropped",
        "Datapoints spam protection dropped",
        value=stats["spam_dropped"],
    )
    yield CounterMetricFamily(
        "edgelink_datapoints_stale_marked",
        "Last values marked stale because their link was lost or stopped",
        value=stats["stale_marked"],
    )
    routed = CounterMetricFamily(
        "edgelink_route_passed", "Datapoints a route delivered onwards", labels=["route"]
    )
    errors = CounterMetricFamily(
        "edgelink_route_errors", "Condition, transform or delivery failures", labels=["route"]
    )
    for spec in router.routes:
        route_stats = router.route_stats(spec["id"])
        routed.add_metric([spec["id"]], route_stats["passed"])
        errors.add_metric([spec["id"]], route_stats["errors"])
    yield routed
    yield errors


class GatewayMetrics:
    """The metrics of one gateway.

    Args:
        gateway: The gateway to describe.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._extra: list[Callable[[], Iterator[Metric]]] = []
        self.registry.register(_GatewayCollector(gateway, self._extra))
        self.health_latency = Histogram(
            "edgelink_health_check_seconds",
            "Health check latency",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.health_failures = Counter(
            "edgelink_health_check_failures", "Failed health checks", registry=self.registry
        )
        self.api_requests = Counter(
            "edgelink_api_requests",
            "Admin API requests",
            labelnames=["method", "route", "status"],
            registry=self.registry,
        )

    def add_collector(self, collect: Callable[[], Iterator[Metric]]) -> None:
        """Add more metric families, produced at scrape time by ``collect()``."""
        self._extra.append(collect)

    def observe_health(self, connection_id: str, latency: float, ok: bool) -> None:
        """Record one health check (a `ConnectionManager.on_health_check` listener)."""
        self.health_latency.observe(latency)
        if not ok:
            self.health_failures.inc()

    def render(self) -> tuple[bytes, str]:
        """Return the exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def __repr__(self) -> str:
        return f"<GatewayMetrics {self.registry!r}>"
