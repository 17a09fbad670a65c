"""Wiring the UI into one gateway's FastAPI app (see `edgelink.ui.mount_ui`).

NiceGUI is one app per process: the first gateway's app gets it through
``ui.run_with`` (pages, static files and JavaScript from the wheel, the
Socket.IO endpoint), later ones mount the same app. NiceGUI's start-up runs
when the first UI of the process starts serving and its shutdown when the
last one stops (the API server runs uvicorn without lifespan events, so the
UI starts them itself).

Besides NiceGUI's pages, two plain HTTP routes handle the cookie, which a
websocket cannot set: ``GET /login/session?ticket=`` trades a login ticket for
the session cookie (HttpOnly, SameSite=Strict, Max-Age = ``ui.session_hours``,
Secure over https) and ``GET /logout`` ends the session and clears it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from edgelink.ui.context import UiContext, UiGuard

if TYPE_CHECKING:
    from fastapi import FastAPI

    from edgelink.service.gateway import Gateway

__all__ = ["mount"]

logger = logging.getLogger(__name__)

#: Browser title of every page.
TITLE = "edgelink"

_configured = False
_serving = 0


async def mount(app: FastAPI, gateway: Gateway) -> Callable[[], Awaitable[None]]:
    """Mount the UI on ``app`` for ``gateway``; return its close."""
    global _configured
    from nicegui import core, ui

    from edgelink.ui import pages

    pages.register()
    secret = gateway.ui_storage_secret()
    ctx = UiContext(gateway)
    _add_cookie_routes(app, ctx)
    if not _configured:
        lifetime = int(gateway.settings.ui.session_hours * 3600)
        ui.run_with(
            app,
            title=TITLE,
            # One NiceGUI per process: the first gateway's secret serves all of them.
            storage_secret=secret,
            # NiceGUI's own browser-id cookie, kept as strict as the session's.
            session_middleware_kwargs={"same_site": "strict", "max_age": lifetime},
            show_welcome_message=False,
            favicon="🔗",
        )
        _configured = True
    else:
        app.mount("/", core.app)
    app.add_middleware(UiGuard, context=ctx)
    await _serve()
    gateway.ui_path = "/"
    logger.info("web UI mounted at / (%d users besides the token)", len(gateway.settings.ui.users))

    async def close() -> None:
        gateway.ui_path = None
        await _close()

    return close


def _add_cookie_routes(app: FastAPI, ctx: UiContext) -> None:
    """Add ``/login/session`` and ``/logout`` (before NiceGUI's catch-all mount)."""

    @app.get("/login/session", include_in_schema=False)
    async def login_session(request: Request, ticket: str = "") -> Response:
        identity = ctx.tickets.redeem(ticket, ctx.clock())
        if identity is None:
            return RedirectResponse("/login", status_code=303)
        session = ctx.sessions.create(identity, ctx.clock())
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            ctx.cookie_name(request),
            session.sid,
            max_age=int(ctx.sessions.lifetime_s),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        logger.info("web UI login: %s", identity.who)
        return response

    @app.get("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        name = ctx.cookie_name(request)
        ctx.sessions.drop(request.cookies.get(name))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(name, path="/", httponly=True, samesite="strict")
        return response


async def _serve() -> None:
    global _serving
    if _serving == 0:
        from nicegui.nicegui import _startup

        await _startup()
    _serving += 1


async def _close() -> None:
    global _serving
    _serving -= 1
    if _serving == 0:
        from nicegui.nicegui import _shutdown

        await _shutdown()
