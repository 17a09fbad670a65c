"""Routes that read the connections' status (DESIGN section 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException

from edgelink.service.gateway import UnknownConnectionError

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["router", "status_or_404"]


def router(gateway: Gateway) -> APIRouter:
    """Return the connection routes."""
    routes = APIRouter()

    @routes.get("/api/connections", tags=["connections"])
    async def connections() -> dict[str, Any]:
        """Every connection with its status."""
        return {"connections": gateway.connections()}

    @routes.get("/api/connections/{connection_id}", tags=["connections"])
    async def connection(connection_id: str) -> dict[str, Any]:
        """One connection's status."""
        return status_or_404(gateway, connection_id)

    return routes


def status_or_404(gateway: Gateway, connection_id: str) -> dict[str, Any]:
    """Return a connection's status, or answer 404 for an unknown one."""
    try:
        return gateway.connection(connection_id)
    except UnknownConnectionError:
        raise HTTPException(404, detail=f"unknown connection {connection_id!r}") from None
