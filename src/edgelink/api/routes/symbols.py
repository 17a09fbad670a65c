"""A PLC's symbol table, and adding a tag to a connection's polled tags.

``GET /api/connections/{id}/symbols`` uploads an ``ads`` connection's symbol
table (`Gateway.ads_symbols`); ``POST /api/connections/{id}/poll`` adds a tag
to its poll groups in connections.json (`Gateway.add_polled_tag`: validated,
atomic, audited, 409 during panic). The admin UI's ``/symbols`` page calls
the same gateway functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from edgelink.api.auth import who_asks
from edgelink.errors import ConfigError, ConnectionLostError
from edgelink.service.gateway import ActionRefusedError, UnknownConnectionError

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["PollBody", "router"]


class PollBody(BaseModel):
    """Body of ``POST /api/connections/{id}/poll``."""

    tag: str = Field(min_length=1, max_length=255, description="e.g. MAIN.fTemperature")
    interval: float = Field(default=1.0, gt=0, le=86400, description="seconds between polls")


def router(gateway: Gateway) -> APIRouter:
    """Return the symbol routes."""
    routes = APIRouter()

    @routes.get("/api/connections/{connection_id}/symbols", tags=["connections"])
    async def symbols(connection_id: str) -> dict[str, Any]:
        """The PLC's symbol table: name, type, size, comment, index group and offset."""
        try:
            table = await gateway.ads_symbols(connection_id)
        except UnknownConnectionError as exc:
            raise HTTPException(404, detail=exc.message) from None
        except ActionRefusedError as exc:
            raise HTTPException(409, detail=exc.message) from None
        except ConnectionLostError as exc:
            raise HTTPException(503, detail=exc.message) from None
        return {"connection_id": connection_id, "symbols": table}

    @routes.post("/api/connections/{connection_id}/poll", tags=["connections"])
    async def poll(connection_id: str, body: PollBody) -> dict[str, Any]:
        """Poll ``tag`` from now on (kept in connections.json)."""
        try:
            return await gateway.add_polled_tag(
                connection_id, body.tag, interval=body.interval, who=who_asks(gateway)
            )
        except UnknownConnectionError as exc:
            raise HTTPException(404, detail=exc.message) from None
        except ActionRefusedError as exc:
            raise HTTPException(409, detail=exc.message) from None
        except ConfigError as exc:
            raise HTTPException(422, detail=str(exc)) from None

    return routes
