"""``/login``: the admin token (or a user's password) and **Log in**.

A wrong token is refused with a message; after `FREE_FAILURES` failures from
one address each further attempt must wait longer (`LoginThrottle`). A
success trades a one-time ticket for the session cookie at ``/login/session``.
"""

from __future__ import annotations

import asyncio
import math

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from nicegui import ui

from edgelink.ui.auth import verify_login
from edgelink.ui.context import context_of

__all__ = ["login"]


@ui.page("/login", title="Log in · edgelink")
def login(request: Request) -> Response | None:
    """The login page; a browser with a live session goes on to ``/``."""
    ctx = context_of(request)
    if ctx.session_of(request) is not None:
        return RedirectResponse("/", status_code=303)
    ctx.rendered(ui.context.client.id, None)
    address = request.client.host if request.client else "unknown"
    gateway = ctx.gateway
    with ui.card().classes("absolute-center w-96"):
        ui.label(f"{gateway.name}: edgelink").classes("text-h6")
        user = ui.input("User", placeholder="empty: log in with the admin token").classes("w-full")
        token = ui.input("Token", password=True).classes("w-full").props("autofocus")
        message = ui.label("").classes("text-negative")

        async def submit() -> None:
            wait = ctx.throttle.retry_after(address, ctx.clock())
            if wait > 0:
                message.set_text(f"Too many failed attempts: try again in {math.ceil(wait)} s")
                return
            name, secret = (user.value or "").strip(), token.value or ""
            identity = await asyncio.to_thread(
                verify_login, gateway.settings.ui, gateway.token, name, secret
            )
            if identity is None:
                wait = ctx.throttle.failed(address, ctx.clock())
                refused = "Wrong user or password" if name else "Wrong token"
                later = f"; next attempt in {math.ceil(wait)} s" if wait > 0 else ""
                message.set_text(refused + later)
                token.set_value("")
                return
            ctx.throttle.succeeded(address)
            ticket = ctx.tickets.issue(identity, ctx.clock())
            ui.navigate.to(f"/login/session?ticket={ticket}")

        token.on("keydown.enter", submit)
        ui.button("Log in", on_click=submit).classes("w-full").props("no-caps")
    return None
