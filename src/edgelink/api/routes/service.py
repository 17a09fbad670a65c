"""Routes of the service itself: liveness, status, the OpenAPI document and its page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["public_router", "router"]


def public_router(gateway: Gateway) -> APIRouter:
    """Return the routes that answer without a token."""
    routes = APIRouter()

    @routes.get("/api/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness: answers without a token, says whether the gateway is in panic."""
        return gateway.health()

    return routes


def router(gateway: Gateway) -> APIRouter:
    """Return the service's guarded routes."""
    routes = APIRouter()

    @routes.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @routes.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="edgelink API")

    @routes.get("/api/service", tags=["service"])
    async def service() -> dict[str, Any]:
        """The service: uptime, connection counts, panic, last reload, config errors."""
        return gateway.status()

    return routes
