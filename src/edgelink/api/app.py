"""The admin API of a running gateway (FastAPI; OpenAPI at ``/openapi.json``, docs at ``/docs``).

Every route but ``GET /api/health`` needs ``Authorization: Bearer <token>``.
Request bodies are validated by pydantic (422 with the field's path); an
unknown connection is 404; an action refused while the gateway is in panic
is 409.

Routes:
    GET  /api/health                                   liveness, no auth
    GET  /api/service                                  the service's own status
    GET  /api/connections, /api/connections/{id}        status (DESIGN section 4)
    POST /api/admin/instances/{id}/{action}            start|stop|restart|kill|resume|
                                                       disconnect|reconnect
    POST /api/admin/panic, /api/admin/recover, /api/admin/reload
    GET  /api/routes, /api/routes/{id}                 the route table, with counters
    PUT  /api/routes                                   replace routing.json (validated, atomic)
    POST /api/routes/validate                          check a routing.json without applying it
    GET  /api/data/tree, /api/data/point, /api/data/history   the data space
    GET  /api/bridge                                   the MQTT bridge's counters
    GET  /api/bridge/dead-letters                      messages the broker or client refused
    GET  /api/events                                   the SQLite event log, paged, filtered
    GET  /metrics                                      Prometheus
    WS   /api/stream, /api/nodered/stream              events and datapoints by pattern
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from edgelink import __version__
from edgelink.api.auth import require_token
from edgelink.api.metrics import GatewayMetrics
from edgelink.api.stream import StreamHub, register_stream
from edgelink.errors import RouteError
from edgelink.router import check_routes

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["Action", "create_app"]

logger = logging.getLogger(__name__)


class Action(StrEnum):
    """What an admin can ask of one connection."""

    START = "start"
    STOP = "stop"
    RESTART = "restart"
    KILL = "kill"
    RESUME = "resume"
    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"


#: Actions that would bring a device link up: refused while in panic.
_STARTING = frozenset({Action.START, Action.RESTART, Action.RESUME, Action.RECONNECT})


class PanicBody(BaseModel):
    """Optional body of ``POST /api/admin/panic``."""

    reason: str = Field(default="panic", max_length=500)


def create_app(gateway: Gateway) -> FastAPI:
    """Build the API of ``gateway`` (started or about to be)."""
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
    metrics = GatewayMetrics(gateway)
    app.state.metrics = metrics
    hub = StreamHub(gateway)
    app.state.stream = hub
    _wire_live_sources(gateway, metrics, hub)

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.api_requests.labels(request.method, path, str(response.status_code)).inc()
        return response

    public = APIRouter()

    @public.get("/api/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness: answers without a token, says whether the gateway is in panic."""
        return {
            "status": "panic" if gateway.panicked else "ok",
            "version": __version__,
            "uptime_s": (time.time() - gateway.started_at) if gateway.started_at else None,
        }

    guarded = APIRouter(dependencies=[Depends(require_token)])

    @guarded.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @guarded.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="edgelink API")

    @guarded.get("/api/service", tags=["service"])
    async def service() -> dict[str, Any]:
        """The service: uptime, connection counts, panic, last reload, config errors."""
        return gateway.status()

    @guarded.get("/api/connections", tags=["connections"])
    async def connections() -> dict[str, Any]:
        """Every connection with its status."""
        return {"connections": list(gateway.manager.get_status().values())}

    @guarded.get("/api/connections/{connection_id}", tags=["connections"])
    async def connection(connection_id: str) -> dict[str, Any]:
        """One connection's status."""
        return _status_or_404(gateway, connection_id)

    @guarded.post("/api/admin/instances/{connection_id}/{action}", tags=["admin"])
    async def instance_action(connection_id: str, action: Action) -> dict[str, Any]:
        """Start, stop, restart, kill, resume, disconnect or reconnect one connection."""
        manager = gateway.manager
        _status_or_404(gateway, connection_id)
        if gateway.panicked and action in _STARTING:
            raise HTTPException(
                409, detail="the gateway is in panic: POST /api/admin/recover first"
            )
        if action is Action.START:
            await manager.start_connection(connection_id)
        elif action in (Action.STOP, Action.DISCONNECT):
            await manager.stop_connection(connection_id)
        elif action is Action.RESTART:
            await manager.restart_connection(connection_id)
        elif action is Action.KILL:
            await manager.kill_connection(connection_id)
        elif action is Action.RESUME:
            await manager.resume(connection_id)
        else:
            await manager.safe_reconnect(connection_id, fast_path=True)
        logger.info("admin %s %s", action, connection_id)
        return {
            "connection_id": connection_id,
            "action": str(action),
            **_brief(gateway, connection_id),
        }

    @guarded.post("/api/admin/panic", tags=["admin"])
    async def panic(body: PanicBody | None = None) -> dict[str, Any]:
        """Disconnect every device and stop data flow; the API stays up."""
        return await gateway.panic(reason=(body or PanicBody()).reason, by="api")

    @guarded.post("/api/admin/recover", tags=["admin"])
    async def recover() -> dict[str, Any]:
        """Leave panic: reload the config folder and start what was running."""
        return await gateway.recover(by="api")

    @guarded.post("/api/admin/reload", tags=["admin"])
    async def reload() -> dict[str, Any]:
        """Re-read the config folder now (as SIGHUP does)."""
        return await gateway.reload()

    @guarded.get("/api/routes", tags=["routes"])
    async def routes() -> dict[str, Any]:
        """The current route table as written, each route with its counters."""
        router = gateway.manager.router
        return {
            "routes": [{**spec, "stats": router.route_stats(spec["id"])} for spec in router.routes],
            "stats": router.stats(),
        }

    @guarded.get("/api/routes/{route_id}", tags=["routes"])
    async def route(route_id: str) -> dict[str, Any]:
        """One route and its counters."""
        router = gateway.manager.router
        for spec in router.routes:
            if spec["id"] == route_id:
                return {**spec, "stats": router.route_stats(route_id)}
        raise HTTPException(404, detail=f"unknown route {route_id!r}")

    @guarded.post("/api/routes/validate", tags=["routes"])
    async def validate_routes(document: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        """Check a routing.json document (conditions and transforms compiled); apply nothing."""
        try:
            count = check_routes(document, clock=gateway.manager.clock)
        except RouteError as exc:
            return {"ok": False, "error": str(exc), "path": exc.path}
        return {"ok": True, "routes": count}

    @guarded.put("/api/routes", tags=["routes"])
    async def put_routes(document: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        """Replace the route table; on success it is written to routing.json too."""
        try:
            return await gateway.replace_routes(document)
        except RouteError as exc:
            raise HTTPException(
                422, detail={"error": str(exc), "path": exc.path, "route_id": exc.route_id}
            ) from None

    @guarded.get("/api/data/tree", tags=["data"])
    async def data_tree(
        prefix: str = Query(default="", max_length=512, description="an address prefix"),
    ) -> dict[str, Any]:
        """Browse the data space: the children one level below ``prefix``."""
        return {"prefix": prefix, "children": gateway.manager.router.data.children(prefix)}

    @guarded.get("/api/data/point", tags=["data"])
    async def data_point(address: str = Query(max_length=512)) -> dict[str, Any]:
        """The last datapoint at an address."""
        dp = gateway.manager.router.data.get(address)
        if dp is None:
            raise HTTPException(404, detail=f"no datapoint at {address!r}")
        return dp.as_dict()

    @guarded.get("/api/data/history", tags=["data"])
    async def data_history(address: str = Query(max_length=512)) -> dict[str, Any]:
        """The recent datapoints at an address, oldest first."""
        points = gateway.manager.router.data.history(address)
        if not points:
            raise HTTPException(404, detail=f"no datapoint at {address!r}")
        return {"address": address, "history": [dp.as_dict() for dp in points]}

    @guarded.get("/api/bridge", tags=["service"])
    async def bridge() -> dict[str, Any]:
        """The MQTT bridge: live or buffering, published, buffered, depth, dropped."""
        if gateway.bridge is None:
            return {"enabled": False}
        return {"enabled": True, **gateway.bridge.stats()}

    @guarded.get("/api/bridge/dead-letters", tags=["service"])
    async def bridge_dead_letters(limit: int = Query(default=100, ge=1, le=1000)) -> dict[str, Any]:
        """Messages the broker or the client refused, newest first: topic, reason, time."""
        if gateway.bridge is None:
            return {"enabled": False, "dead_letters": []}
        bridge = gateway.bridge
        await bridge.store_dead_letters()
        return {
            "enabled": True,
            "total": bridge.dead_letters.total,
            "dropped": bridge.dead_letters.dropped,
            "dead_letters": await bridge.dead_letters.recent(limit),
        }

    @guarded.get("/api/events", tags=["events"])
    async def events(
        type: str | None = Query(default=None, max_length=64, description="event type"),
        connection_id: str | None = Query(default=None, max_length=256),
        level: str | None = Query(default=None, pattern="^(info|error)$"),
        since: float | None = Query(default=None, description="wall-clock seconds"),
        until: float | None = Query(default=None),
        before_id: int | None = Query(default=None, ge=1, description="page: ids below this"),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Events and errors from the SQLite log, newest first."""
        log = gateway.events
        if log is None:
            raise HTTPException(503, detail="the event log is not open")
        rows = await log.query(
            event_type=type,
            connection_id=connection_id,
            level=level,
            since=since,
            until=until,
            before_id=before_id,
            limit=limit,
        )
        next_page = rows[-1]["id"] if len(rows) == limit else None
        return {"events": rows, "next_before_id": next_page}

    @guarded.get("/metrics", tags=["service"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics."""
        body, content_type = metrics.render()
        return Response(content=body, media_type=content_type)

    app.include_router(public)
    app.include_router(guarded)
    register_stream(app, hub)
    return app


def _wire_live_sources(gateway: Gateway, metrics: GatewayMetrics, hub: StreamHub) -> None:
    """Feed the metrics and the stream from the manager (once it exists)."""
    manager = gateway._manager
    if manager is None:
        return
    offs = [
        manager.on_health_check(metrics.observe_health),
        manager.on_event("*", hub.publish_event),
        # The data space, not the drivers: virtual addresses (calc.*) stream too.
        manager.router.data.subscribe("**", hub.publish_data, changes_only=False),
    ]
    gateway._unsubscribe.extend(offs)


def _status_or_404(gateway: Gateway, connection_id: str) -> dict[str, Any]:
    try:
        return gateway.manager.get_status(connection_id)
    except KeyError:
        raise HTTPException(404, detail=f"unknown connection {connection_id!r}") from None


def _brief(gateway: Gateway, connection_id: str) -> dict[str, Any]:
    status = gateway.manager.get_status(connection_id)
    return {"status": status["status"], "reason": status["reason"], "desired": status["desired"]}
