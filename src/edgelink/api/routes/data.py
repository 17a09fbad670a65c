"""Browse the data space (its tree, the last datapoint, its history) and write a point."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from edgelink.api.auth import who_asks
from edgelink.errors import EdgelinkError
from edgelink.service.gateway import ActionRefusedError, UnknownConnectionError

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["WriteBody", "router"]


class WriteBody(BaseModel):
    """The body of ``POST /api/data/write``."""

    address: str = Field(min_length=3, max_length=1024, description="<connection>.<tag>")
    value: Any = Field(description="what to write: a number, a bool, a string, JSON")


def router(gateway: Gateway) -> APIRouter:
    """Return the data-space routes."""
    routes = APIRouter()

    @routes.get("/api/data/tree", tags=["data"])
    async def data_tree(
        prefix: str = Query(default="", max_length=512, description="an address prefix"),
    ) -> dict[str, Any]:
        """Browse the data space: the children one level below ``prefix``.

        Levels are the address's segments and, inside a segment, its MQTT topic
        levels: ``prefix=broker.plant`` lists ``broker.plant/line1`` for the
        address ``broker.plant/line1/power``.
        """
        return {"prefix": prefix, "children": gateway.data_children(prefix)}

    @routes.get("/api/data/point", tags=["data"])
    async def data_point(address: str = Query(max_length=512)) -> dict[str, Any]:
        """The last datapoint at an address."""
        dp = gateway.data_point(address)
        if dp is None:
            raise HTTPException(404, detail=f"no datapoint at {address!r}")
        return dp.as_dict()

    @routes.get("/api/data/history", tags=["data"])
    async def data_history(address: str = Query(max_length=512)) -> dict[str, Any]:
        """The recent datapoints at an address, oldest first."""
        points = gateway.data_history(address)
        if not points:
            raise HTTPException(404, detail=f"no datapoint at {address!r}")
        return {"address": address, "history": [dp.as_dict() for dp in points]}

    @routes.post("/api/data/write", tags=["data"])
    async def data_write(body: WriteBody) -> dict[str, Any]:
        """Write a value to the device behind an address; the answer is the device's.

        404: no connection owns the address. 409: the gateway is in panic.
        422: the tag cannot be written (read-only) or the value does not fit.
        502: the device refused it or the link failed (the detail says which).
        """
        try:
            return await gateway.write_point(body.address, body.value, who=who_asks(gateway))
        except UnknownConnectionError as exc:
            raise HTTPException(404, detail=str(exc)) from None
        except ActionRefusedError as exc:
            raise HTTPException(409, detail=f"{exc} (POST /api/admin/recover)") from None
        except (ValueError, TypeError) as exc:
            raise HTTPException(422, detail=str(exc)) from None
        except (EdgelinkError, TimeoutError) as exc:
            raise HTTPException(502, detail=f"{type(exc).__name__}: {exc}") from None

    return routes
