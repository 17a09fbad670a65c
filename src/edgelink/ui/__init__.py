"""The admin web UI: NiceGUI pages on the API's own app and port (``pip install edgelink[ui]``).

`mount_ui` is an `edgelink.api.server.Mount`: the command line hands it to
the API server, which calls it with its app; the API never imports the UI.
The UI reads and acts only through the gateway's public methods, the same
ones the API calls, so each action is audited once with who did it.

Layout: `edgelink.ui.auth` (login checks, sessions, throttle), `context`
(per-gateway state and the socket guard), `layout` (header, panic, banner,
navigation and the page registry), `mount` (wiring into FastAPI), and one
module per page in `edgelink.ui.pages`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from edgelink.service.gateway import Gateway

__all__ = ["is_available", "mount_ui"]


def is_available() -> bool:
    """Return whether the UI's packages (nicegui, argon2-cffi) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("nicegui", "argon2"))


async def mount_ui(app: FastAPI, gateway: Gateway) -> Callable[[], Awaitable[None]] | None:
    """Serve the UI at ``/`` of ``app`` unless ``ui.enabled`` is false or nicegui is missing.

    Returns:
        The UI's close (awaited after the server stops), or None when not mounted.
    """
    if not gateway.settings.ui.enabled or not is_available():
        return None
    from edgelink.ui.mount import mount

    return await mount(app, gateway)
