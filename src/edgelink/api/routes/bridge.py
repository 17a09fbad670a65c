"""The MQTT bridge's counters and dead letters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["router"]


def router(gateway: Gateway) -> APIRouter:
    """Return the bridge routes."""
    routes = APIRouter()

    @routes.get("/api/bridge", tags=["service"])
    async def bridge() -> dict[str, Any]:
        """The MQTT bridge: live or buffering, published, buffered, depth, dropped."""
        return gateway.bridge_stats()

    @routes.get("/api/bridge/dead-letters", tags=["service"])
    async def bridge_dead_letters(limit: int = Query(default=100, ge=1, le=1000)) -> dict[str, Any]:
        """Messages the broker or the client refused, newest first: topic, reason, time."""
        return await gateway.bridge_dead_letters(limit)

    return routes
