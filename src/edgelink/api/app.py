"""The admin API of a running gateway (FastAPI; OpenAPI at ``/openapi.json``, docs at ``/docs``).

Every route but ``GET /api/health`` needs ``Authorization: Bearer <token>``.
Request bodies are validated by pydantic (422 with the field's path) and
bounded (``api.max_body_bytes``, 413); query parameters are range-checked
(422); an unknown connection is 404; an action refused while the gateway is
in panic is 409. Admin actions are audited by the gateway (`Auditor`); the
API passes only who asked (the token's fingerprint).

Each area's routes are a module of `edgelink.api.routes`; they read and act
only through the gateway's public methods. `edgelink.api.server` serves the
app over HTTP.

Routes:
    GET  /api/health                                   liveness, no auth
    GET  /api/service                                  the service's own status
    GET  /api/connections, /api/connections/{id}        status (DESIGN section 4)
    GET  /api/admin/instances                          resource figures per connection
    POST /api/admin/instances/{id}/{action}            start|stop|restart|kill|resume|
                                                       disconnect|reconnect
    POST /api/admin/instances/{id}/quarantine/release  poll quarantined tags again (?tag=)
    PUT  /api/admin/instances/{id}/settings/{key}      set one connection setting (validated)
    GET  /api/admin/spam                               connections suspended by spam protection
    POST /api/admin/panic, /api/admin/recover, /api/admin/reload
    GET  /api/routes, /api/routes/{id}                 the route table, with counters
    PUT  /api/routes                                   replace routing.json (validated, atomic)
    POST /api/routes/validate                          check a routing.json without applying it
    GET  /api/router/routes, /api/router/stats         Edge OS names: the table; counters by route
    PUT  /api/router/routes, POST .../validate, .../try  Edge OS names of the /api/routes ones
    POST /api/routes/{id}/enable                       let a quarantined (poison) route run again
    POST /api/sources/{id}/enable                      let a quarantined source's data be routed
    GET  /api/data/tree, /api/data/point, /api/data/history   the data space
    POST /api/data/write                               write a value to a device's tag
    GET, POST, DELETE /api/connections/{id}/subscriptions   an mqtt connection's topic filters
    GET  /api/bridge                                   the MQTT bridge's counters
    GET  /api/bridge/dead-letters                      messages the broker or client refused
    GET  /api/events                                   the SQLite event log, paged, filtered
    GET  /api/audit                                    who did what (admin actions), paged
    GET  /metrics                                      Prometheus
    WS   /api/stream, /api/nodered/stream              events and datapoints by pattern
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, Request, Response

from edgelink import __version__
from edgelink.api.auth import require_token
from edgelink.api.limits import BodyLimit
from edgelink.api.metrics import GatewayMetrics
from edgelink.api.routes import (
    admin,
    ble,
    bridge,
    connections,
    data,
    events,
    metrics,
    plugins,
    routes,
    service,
    subscriptions,
    symbols,
)
from edgelink.api.routes.admin import Action
from edgelink.api.stream import StreamHub, register_stream
from edgelink.service.gateway import Gateway

__all__ = ["Action", "close_app", "create_app"]

logger = logging.getLogger(__name__)


def create_app(gateway: Gateway) -> FastAPI:
    """Build the API of a started ``gateway``: its routes, metrics and stream.

    The metrics and the stream subscribe to the gateway (its events, data and
    health checks); `close_app` unsubscribes them, and so does the gateway's stop.
    """
    app = FastAPI(
        title="edgelink",
        version=__version__,
        description="Admin API of an edgelink gateway.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.gateway = gateway
    app.state.token = gateway.token
    gauges = GatewayMetrics(gateway)
    app.state.metrics = gauges
    hub = StreamHub(gateway)
    app.state.stream = hub
    app.state.unsubscribe = _wire_live_sources(gateway, gauges, hub)

    def body_refused(method: str, _path: str) -> None:
        gauges.api_requests.labels(method, "unmatched", "413").inc()

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        gauges.api_requests.labels(request.method, path, str(response.status_code)).inc()
        return response

    app.include_router(service.public_router(gateway))
    guarded = [Depends(require_token)]
    for area in (
        service.router(gateway),
        connections.router(gateway),
        subscriptions.router(gateway),
        admin.router(gateway),
        routes.router(gateway),
        data.router(gateway),
        bridge.router(gateway),
        events.router(gateway),
        ble.router(gateway),
        symbols.router(gateway),
        plugins.router(gateway),
        metrics.router(gauges),
    ):
        app.include_router(area, dependencies=guarded)
    register_stream(app, hub)
    app.add_middleware(
        BodyLimit, max_bytes=gateway.settings.api.max_body_bytes, on_refused=body_refused
    )
    return app


def close_app(app: FastAPI) -> None:
    """Unsubscribe the app's metrics and stream from its gateway (idempotent)."""
    offs: list[Callable[[], None]] = app.state.unsubscribe
    while offs:
        offs.pop()()


def _wire_live_sources(
    gateway: Gateway, gauges: GatewayMetrics, hub: StreamHub
) -> list[Callable[[], None]]:
    """Feed the metrics and the stream from the gateway (once it has a manager)."""
    if gateway.current_manager is None:
        return []
    return [
        gateway.subscribe_health_checks(gauges.observe_health),
        gateway.subscribe_events(hub.publish_event),
        # The data space, not the drivers: virtual addresses (calc.*) stream too.
        gateway.subscribe_data(hub.publish_data, "**", changes_only=False),
    ]
