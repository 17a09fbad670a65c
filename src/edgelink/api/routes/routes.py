"""The route table: read it, validate or replace it, let quarantined routes and sources run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from edgelink.api.auth import who_asks
from edgelink.errors import RouteError

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["RouteTrial", "router"]


class RouteTrial(BaseModel):
    """``POST /api/routes/try``: a route as in routing.json and a sample datapoint."""

    model_config = ConfigDict(extra="forbid")

    route: dict[str, Any]
    address: str = Field(min_length=1, max_length=1024)
    value: Any = None
    quality: str = "good"


def router(gateway: Gateway) -> APIRouter:
    """Return the route-table routes."""
    routes = APIRouter()

    @routes.get("/api/routes", tags=["routes"])
    async def route_table() -> dict[str, Any]:
        """The current route table as written, each route with its counters."""
        return gateway.routes()

    @routes.get("/api/routes/{route_id}", tags=["routes"])
    async def route(route_id: str) -> dict[str, Any]:
        """One route and its counters."""
        try:
            return gateway.route(route_id)
        except KeyError:
            raise HTTPException(404, detail=f"unknown route {route_id!r}") from None

    @routes.post("/api/routes/{route_id}/enable", tags=["routes"])
    async def enable_route(route_id: str) -> dict[str, Any]:
        """Let a route quarantined as poison run again; its strikes start over."""
        try:
            return {
                "ok": True,
                "stats": await gateway.enable_route(route_id, who=who_asks(gateway)),
            }
        except KeyError:
            raise HTTPException(404, detail=f"unknown route {route_id!r}") from None

    @routes.post("/api/sources/{source_id}/enable", tags=["routes"])
    async def enable_source(source_id: str) -> dict[str, Any]:
        """Route a quarantined source's datapoints again."""
        was = await gateway.enable_source(source_id, who=who_asks(gateway))
        return {"ok": True, "was_quarantined": was is not None, "quarantine": was}

    @routes.post("/api/routes/validate", tags=["routes"])
    async def validate_routes(document: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        """Check a routing.json document (conditions and transforms compiled); apply nothing."""
        try:
            count = gateway.check_routes(document)
        except RouteError as exc:
            return {"ok": False, "error": str(exc), "path": exc.path}
        return {"ok": True, "routes": count}

    @routes.post("/api/routes/try", tags=["routes"])
    async def try_route(body: RouteTrial) -> dict[str, Any]:
        """Run one route on a sample value: match, condition, transformed value; nothing sent."""
        try:
            return gateway.try_route(body.route, body.address, body.value, quality=body.quality)
        except RouteError as exc:
            raise HTTPException(
                422, detail={"error": str(exc), "path": exc.path, "route_id": exc.route_id}
            ) from None

    @routes.put("/api/routes", tags=["routes"])
    async def put_routes(document: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        """Replace the route table; on success it is written to routing.json too."""
        try:
            return await gateway.replace_routes(document, who=who_asks(gateway))
        except RouteError as exc:
            raise HTTPException(
                422, detail={"error": str(exc), "path": exc.path, "route_id": exc.route_id}
            ) from None

    # The Edge OS document's Web API names the routing operations /api/router/*:
    # the same handlers answer there.
    routes.add_api_route("/api/router/routes", route_table, methods=["GET"], tags=["router"])
    routes.add_api_route("/api/router/routes", put_routes, methods=["PUT"], tags=["router"])
    routes.add_api_route("/api/router/validate", validate_routes, methods=["POST"], tags=["router"])
    routes.add_api_route("/api/router/try", try_route, methods=["POST"], tags=["router"])

    @routes.get("/api/router/stats", tags=["router"])
    async def router_stats() -> dict[str, Any]:
        """The router's totals and each route's counters, by route id."""
        table = gateway.routes()
        return {
            "stats": table["stats"],
            "routes": {spec["id"]: spec["stats"] for spec in table["routes"]},
        }

    return routes
