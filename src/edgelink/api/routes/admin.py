"""Admin: resource figures per instance; start/stop/... of one, quarantine release, panic, recover.

Every action is audited by the gateway (`Auditor`); the route passes only who
asked (the token's fingerprint).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from edgelink.api.auth import who_asks
from edgelink.api.routes.connections import status_or_404
from edgelink.errors import ConfigError
from edgelink.service.gateway import ActionRefusedError, UnknownConnectionError

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["Action", "PanicBody", "SettingBody", "router"]


class Action(StrEnum):
    """What an admin can ask of one connection."""

    START = "start"
    STOP = "stop"
    RESTART = "restart"
    KILL = "kill"
    RESUME = "resume"
    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"


class PanicBody(BaseModel):
    """Optional body of ``POST /api/admin/panic``."""

    reason: str = Field(default="panic", max_length=500)


class SettingBody(BaseModel):
    """Body of ``PUT /api/admin/instances/{id}/settings/{key}``: the new value (null: off)."""

    value: Any


def router(gateway: Gateway) -> APIRouter:
    """Return the admin routes."""
    routes = APIRouter()

    @routes.get("/api/admin/instances", tags=["admin"])
    async def instances() -> dict[str, Any]:
        """Every connection's resource figures (the seed's dict) and the process totals.

        Connections run in the gateway's process: CPU, memory and disk of one
        of them cannot be told apart, so those are null per instance and the
        process's own figures stand beside them under ``process``.
        """
        return gateway.instance_resources()

    @routes.get("/api/admin/spam", tags=["admin"])
    async def spam() -> list[dict[str, Any]]:
        """Connections suspended by spam protection now: the rate that tripped, the threshold."""
        return gateway.spam_suspensions()

    @routes.put("/api/admin/instances/{connection_id}/settings/{key}", tags=["admin"])
    async def set_setting(connection_id: str, key: str, body: SettingBody) -> dict[str, Any]:
        """Set one of a connection's ``settings`` (e.g. ``spam_max_pps``) in connections.json.

        Validated as a reload validates it (422 with ``path`` and ``error``,
        the file unchanged), written atomically, applied (``applied``:
        ``live`` without a restart, or ``restarted``). 409 during panic.
        """
        try:
            return await gateway.set_connection_setting(
                connection_id, key, body.value, who=who_asks(gateway)
            )
        except UnknownConnectionError as exc:
            raise HTTPException(404, detail=str(exc)) from None
        except ActionRefusedError as exc:
            raise HTTPException(409, detail=f"{exc} (POST /api/admin/recover)") from None
        except ConfigError as exc:
            raise HTTPException(
                422, detail={"error": str(exc), "path": exc.path, "message": exc.message}
            ) from None
        except OSError as exc:
            raise HTTPException(503, detail=f"connections file not written: {exc}") from None

    @routes.post("/api/admin/instances/{connection_id}/quarantine/release", tags=["admin"])
    async def release_quarantine(connection_id: str, tag: str | None = None) -> dict[str, Any]:
        """Poll a connection's quarantined (poison) tags again: all of them, or ``tag``."""
        status_or_404(gateway, connection_id)
        try:
            return await gateway.release_quarantine(connection_id, tag, who=who_asks(gateway))
        except KeyError:
            raise HTTPException(
                404, detail=f"tag {tag!r} of {connection_id!r} is not quarantined"
            ) from None

    @routes.post("/api/admin/instances/{connection_id}/{action}", tags=["admin"])
    async def instance_action(connection_id: str, action: Action) -> dict[str, Any]:
        """Start, stop, restart, kill, resume, disconnect or reconnect one connection.

        ``reconnect`` brings the link back whatever it is doing: a stopped
        connection is started, a failed or suspended one resumed, a connected
        one drops its link and reconnects (``done`` says which). During panic,
        start, restart, resume and reconnect are 409; stops are kept by recover.
        """
        try:
            return await gateway.instance_action(connection_id, str(action), who=who_asks(gateway))
        except UnknownConnectionError as exc:
            raise HTTPException(404, detail=str(exc)) from None
        except ActionRefusedError as exc:
            raise HTTPException(409, detail=f"{exc} (POST /api/admin/recover)") from None

    @routes.post("/api/admin/panic", tags=["admin"])
    async def panic(body: PanicBody | None = None) -> dict[str, Any]:
        """Disconnect every device and stop data flow; the API stays up."""
        return await gateway.panic(reason=(body or PanicBody()).reason, by=who_asks(gateway))

    @routes.post("/api/admin/recover", tags=["admin"])
    async def recover() -> dict[str, Any]:
        """Leave panic: reload the config folder and start what was running."""
        return await gateway.recover(by=who_asks(gateway))

    @routes.post("/api/admin/reload", tags=["admin"])
    async def reload() -> dict[str, Any]:
        """Re-read the config folder now (as SIGHUP does)."""
        return await gateway.reload(who=who_asks(gateway))

    return routes
