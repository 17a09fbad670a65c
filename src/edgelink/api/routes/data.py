"""Browse the data space: the tree, the last datapoint at an address, its history."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Query

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["router"]


def router(gateway: Gateway) -> APIRouter:
    """Return the data-space routes."""
    routes = APIRouter()

    @routes.get("/api/data/tree", tags=["data"])
    async def data_tree(
        prefix: str = Query(default="", max_length=512, description="an address prefix"),
    ) -> dict[str, Any]:
        """Browse the data space: the children one level below ``prefix``."""
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

    return routes
