"""The admin API of a running gateway (FastAPI; OpenAPI at ``/openapi.json``, docs at ``/docs``).

Every route but ``GET /api/health`` needs ``Authorization: Bearer <token>``.
Request bodies are validated by pydantic (422 with the field's path) and
bounded (``api.max_body_bytes``, 413); query parameters are range-checked
(422); an unknown connection is 404; an action refused while the gateway is
in panic is 409. Admin actions are audited by the gateway (`Auditor`); the
API passes only who asked (the token's fingerprint).

Routes:
    GET  /api/health                                   liveness, no auth
    GET  /api/service                                  the service's own status
    GET  /api/connections, /api/connections/{id}        status (DESIGN section 4)
    POST /api/admin/instances/{id}/{action}            start|stop|restart|kill|resume|
                                                       disconnect|reconnect
    POST /api/admin/instances/{id}/quarantine/release  poll quarantined tags again (?tag=)
    POST /api/admin/panic, /api/admin/recover, /api/admin/reload
    GET  /api/routes, /api/routes/{id}                 the route table, with counters
    PUT  /api/routes                                   replace routing.json (validated, atomic)
    POST /api/routes/validate                          check a routing.json without applying it
    POST /api/routes/{id}/enable                       let a quarantined (poison) route run again
    POST /api/sources/{id}/enable                      let a quarantined source's data be routed
    GET  /api/data/tree, /api/data/point, /api/data/history   the data space
    GET  /api/bridge                                   the MQTT bridge's counters
    GET  /api/bridge/dead-letters                      messages the broker or client refused
    GET  /api/events                                   the SQLite event log, paged, filtered
    GET  /api/audit                                    who did what (admin actions), paged
    GET  /metrics                                      Prometheus
    WS   /api/stream, /api/nodered/stream              events and datapoints by pattern
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from edgelink import __version__
from edgelink.api.auth import require_token
from edgelink.api.limits import BodyLimit
from edgelink.api.metrics import GatewayMetrics
from edgelink.api.stream import StreamHub, register_stream
from edgelink.errors import RouteError
from edgelink.router import check_routes
from edgelink.service.audit import token_identity
from edgelink.service.gateway import ActionRefusedError, Gateway, UnknownConnectionError

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


#: The largest id or count a query parameter may carry (SQLite's INTEGER).
_MAX_ID = 2**63 - 1
#: Wall-clock bounds of ``since``/``until`` (0 .. year 5138).
_MAX_TS = 1e11


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

    def body_refused(method: str, _path: str) -> None:
        metrics.api_requests.labels(method, "unmatched", "413").inc()

    def who() -> str:
        return token_identity(gateway.token)

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

    @guarded.post("/api/admin/instances/{connection_id}/quarantine/release", tags=["admin"])
    async def release_quarantine(connection_id: str, tag: str | None = None) -> dict[str, Any]:
        """Poll a connection's quarantined (poison) tags again: all of them, or ``tag``."""
        _status_or_404(gateway, connection_id)
        try:
            return await gateway.release_quarantine(connection_id, tag, who=who())
        except KeyError:
            raise HTTPException(
                404, detail=f"tag {tag!r} of {connection_id!r} is not quarantined"
            ) from None

    @guarded.post("/api/admin/instances/{connection_id}/{action}", tags=["admin"])
    async def instance_action(connection_id: str, action: Action) -> dict[str, Any]:
        """Start, stop, restart, kill, resume, disconnect or reconnect one connection.

        ``reconnect`` brings the link back whatever it is doing: a stopped
        connection is started, a failed or suspended one resumed, a connected
        one drops its link and reconnects (``done`` says which). During panic,
        start, restart, resume and reconnect are 409; stops are kept by recover.
        """
        try:
            return await gateway.instance_action(connection_id, str(action), who=who())
        except UnknownConnectionError as exc:
            raise HTTPException(404, detail=str(exc)) from None
        except ActionRefusedError as exc:
            raise HTTPException(409, detail=f"{exc} (POST /api/admin/recover)") from None

    @guarded.post("/api/admin/panic", tags=["admin"])
    async def panic(body: PanicBody | None = None) -> dict[str, Any]:
        """Disconnect every device and stop data flow; the API stays up."""
        return await gateway.panic(reason=(body or PanicBody()).reason, by=who())

    @guarded.post("/api/admin/recover", tags=["admin"])
    async def recover() -> dict[str, Any]:
        """Leave panic: reload the config folder and start what was running."""
        return await gateway.recover(by=who())

    @guarded.post("/api/admin/reload", tags=["admin"])
    async def reload() -> dict[str, Any]:
        """Re-read the config folder now (as SIGHUP does)."""
        return await gateway.reload(who=who())

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

    @guarded.post("/api/routes/{route_id}/enable", tags=["routes"])
    async def enable_route(route_id: str) -> dict[str, Any]:
        """Let a route quarantined as poison run again; its strikes start over."""
        try:
            return {"ok": True, "stats": await gateway.enable_route(route_id, who=who())}
        except KeyError:
            raise HTTPException(404, detail=f"unknown route {route_id!r}") from None

    @guarded.post("/api/sources/{source_id}/enable", tags=["routes"])
    async def enable_source(source_id: str) -> dict[str, Any]:
        """Route a quarantined source's datapoints again."""
        was = await gateway.enable_source(source_id, who=who())
        return {"ok": True, "was_quarantined": was is not None, "quarantine": was}

    @guarded.post("/api/routes/validate", tags=["routes"])
    async def validate_routes(document: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        """Check a routing.json document (conditions and transforms compiled); apply nothing."""
        try:
            if "routes" not in document:
                raise RouteError("'routes' is required", path="routes")
            count = check_routes(
                document, clock=gateway.manager.clock, limits=gateway.manager.router.limits
            )
        except RouteError as exc:
            return {"ok": False, "error": str(exc), "path": exc.path}
        return {"ok": True, "routes": count}

    @guarded.put("/api/routes", tags=["routes"])
    async def put_routes(document: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        """Replace the route table; on success it is written to routing.json too."""
        try:
            return await gateway.replace_routes(document, who=who())
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
        since: float | None = Query(
            default=None, ge=0, le=_MAX_TS, allow_inf_nan=False, description="wall-clock seconds"
        ),
        until: float | None = Query(default=None, ge=0, le=_MAX_TS, allow_inf_nan=False),
        before_id: int | None = Query(
            default=None, ge=1, le=_MAX_ID, description="page: ids below this"
        ),
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

    @guarded.get("/api/audit", tags=["events"])
    async def audit(
        action: str | None = Query(default=None, max_length=64, description="e.g. stop, panic"),
        target: str | None = Query(default=None, max_length=256, description="e.g. a connection"),
        before_id: int | None = Query(
            default=None, ge=1, le=_MAX_ID, description="page: ids below this"
        ),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """The audit trail: who did what (instance actions, routes, panic...), newest first."""
        if gateway.audit is None:
            raise HTTPException(503, detail="the audit log is not open")
        rows = await gateway.audit.query(
            action=action, target=target, before_id=before_id, limit=limit
        )
        next_page = rows[-1]["id"] if len(rows) == limit else None
        return {"audit": rows, "next_before_id": next_page}

    @guarded.get("/metrics", tags=["service"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics."""
        body, content_type = metrics.render()
        return Response(content=body, media_type=content_type)

    app.include_router(public)
    app.include_router(guarded)
    register_stream(app, hub)
    app.add_middleware(
        BodyLimit, max_bytes=gateway.settings.api.max_body_bytes, on_refused=body_refused
    )
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
