"""Plugins under ``/api/admin/plugins``: list with badges, README, actions, config.

Each action goes through the gateway (`Gateway.plugin_action`,
`Gateway.configure_plugin`: audited with who; enable, update and install
refused with 409 during panic). A plugin that cannot be enabled, updated
(rolled back) or installed is 422 with the reason; an unknown one 404.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, HTTPException

from edgelink.api.auth import who_asks
from edgelink.errors import ConfigError
from edgelink.plugins import PluginError
from edgelink.service.gateway import PLUGIN_ACTIONS, ActionRefusedError

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["router"]


def router(gateway: Gateway) -> APIRouter:
    """Return the plugin routes."""
    routes = APIRouter()

    @routes.get("/api/admin/plugins", tags=["admin"])
    async def plugins() -> dict[str, Any]:
        """Every plugin, installed or in the index, with its badge."""
        gateway.plugins.discover()
        return {"plugins": gateway.plugins.as_list(), **gateway.plugins.status()}

    @routes.get("/api/admin/plugins/{name}/readme", tags=["admin"])
    async def readme(name: str) -> dict[str, Any]:
        """The plugin's README.md (markdown)."""
        try:
            return {"name": name, "markdown": gateway.plugins.readme(name)}
        except KeyError as exc:
            raise HTTPException(404, detail=str(exc.args[0])) from None

    @routes.post("/api/admin/plugins/{name}/{action}", tags=["admin"])
    async def action(name: str, action: str) -> dict[str, Any]:
        """``enable``, ``disable``, ``check`` (for an update), ``update`` or ``install``."""
        if action not in PLUGIN_ACTIONS:
            raise HTTPException(
                404, detail=f"no action {action!r}; known: {', '.join(PLUGIN_ACTIONS)}"
            )
        try:
            return await gateway.plugin_action(name, action, who=who_asks(gateway))
        except KeyError as exc:
            raise HTTPException(404, detail=str(exc.args[0])) from None
        except ActionRefusedError as exc:
            raise HTTPException(409, detail=exc.message) from None
        except PluginError as exc:
            raise HTTPException(422, detail=exc.message) from None

    @routes.put("/api/admin/plugins/{name}/config", tags=["admin"])
    async def configure(name: str, config: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        """Set the plugin's config (validated against its config_schema)."""
        try:
            return await gateway.configure_plugin(name, config, who=who_asks(gateway))
        except KeyError as exc:
            raise HTTPException(404, detail=str(exc.args[0])) from None
        except ConfigError as exc:
            raise HTTPException(422, detail=str(exc)) from None

    return routes
