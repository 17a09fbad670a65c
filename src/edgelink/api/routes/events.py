"""The SQLite event log and the audit trail, paged and filtered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Query

from edgelink.service.gateway import LogClosedError

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["router"]

#: The largest id or count a query parameter may carry (SQLite's INTEGER).
_MAX_ID = 2**63 - 1
#: Wall-clock bounds of ``since``/``until`` (0 .. year 5138).
_MAX_TS = 1e11


def router(gateway: Gateway) -> APIRouter:
    """Return the event-log and audit routes."""
    routes = APIRouter()

    @routes.get("/api/events", tags=["events"])
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
        try:
            rows = await gateway.query_events(
                event_type=type,
                connection_id=connection_id,
                level=level,
                since=since,
                until=until,
                before_id=before_id,
                limit=limit,
            )
        except LogClosedError as exc:
            raise HTTPException(503, detail=str(exc)) from None
        next_page = rows[-1]["id"] if len(rows) == limit else None
        return {"events": rows, "next_before_id": next_page}

    @routes.get("/api/audit", tags=["events"])
    async def audit(
        action: str | None = Query(default=None, max_length=64, description="e.g. stop, panic"),
        target: str | None = Query(default=None, max_length=256, description="e.g. a connection"),
        before_id: int | None = Query(
            default=None, ge=1, le=_MAX_ID, description="page: ids below this"
        ),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """The audit trail: who did what (instance actions, routes, panic...), newest first."""
        try:
            rows = await gateway.query_audit(
                action=action, target=target, before_id=before_id, limit=limit
            )
        except LogClosedError as exc:
            raise HTTPException(503, detail=str(exc)) from None
        next_page = rows[-1]["id"] if len(rows) == limit else None
        return {"audit": rows, "next_before_id": next_page}

    return routes
