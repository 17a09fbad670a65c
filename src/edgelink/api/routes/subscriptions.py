"""The subscription ledger of an ``mqtt`` connection: list, subscribe and unsubscribe at run time.

The routes call `Gateway.subscriptions`, `Gateway.add_subscription` and
`Gateway.remove_subscription`, as the web UI's MQTT page does (one code path,
one audit record per action).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from edgelink.api.auth import who_asks
from edgelink.service.gateway import ActionRefusedError, UnknownConnectionError

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["SubscribeBody", "router"]


class SubscribeBody(BaseModel):
    """The body of ``POST /api/connections/{id}/subscriptions``."""

    filter: str = Field(min_length=1, max_length=1024, description="an MQTT topic filter")
    qos: int | None = Field(default=None, ge=0, le=2, description="default: the connection's")


def router(gateway: Gateway) -> APIRouter:
    """Return the subscription routes."""
    routes = APIRouter()

    @routes.get("/api/connections/{connection_id}/subscriptions", tags=["connections"])
    async def subscriptions(connection_id: str) -> dict[str, Any]:
        """The connection's subscription ledger: each filter, its state and its origin."""
        with _answers():
            ledger = gateway.subscriptions(connection_id)
        return {"connection_id": connection_id, "subscriptions": ledger}

    @routes.post("/api/connections/{connection_id}/subscriptions", tags=["connections"])
    async def subscribe(connection_id: str, body: SubscribeBody) -> dict[str, Any]:
        """Subscribe to a topic filter now and after every reconnect (409 during panic)."""
        with _answers():
            ledger = await gateway.add_subscription(
                connection_id, body.filter, qos=body.qos, who=who_asks(gateway)
            )
        return {"connection_id": connection_id, "subscriptions": ledger}

    @routes.delete("/api/connections/{connection_id}/subscriptions", tags=["connections"])
    async def unsubscribe(
        connection_id: str, filter: str = Query(min_length=1, max_length=1024)
    ) -> dict[str, Any]:
        """Unsubscribe a filter of the ledger (404 for one that is not in it)."""
        with _answers():
            try:
                ledger = await gateway.remove_subscription(
                    connection_id, filter, who=who_asks(gateway)
                )
            except KeyError:
                raise HTTPException(
                    404, detail=f"{filter!r} is not a subscription of {connection_id!r}"
                ) from None
        return {"connection_id": connection_id, "subscriptions": ledger}

    return routes


@contextmanager
def _answers() -> Iterator[None]:
    """Turn the gateway's refusals into HTTP answers: 404, 409, 422."""
    try:
        yield
    except UnknownConnectionError as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except ActionRefusedError as exc:
        raise HTTPException(409, detail=f"{exc} (POST /api/admin/recover)") from None
    except ValueError as exc:
        raise HTTPException(422, detail=str(exc)) from None
