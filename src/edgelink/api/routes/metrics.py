"""``GET /metrics``: the gateway's Prometheus metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Response

if TYPE_CHECKING:
    from edgelink.api.metrics import GatewayMetrics

__all__ = ["router"]


def router(metrics: GatewayMetrics) -> APIRouter:
    """Return the metrics route."""
    routes = APIRouter()

    @routes.get("/metrics", tags=["service"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics."""
        body, content_type = metrics.render()
        return Response(content=body, media_type=content_type)

    return routes
