"""`UiContext`: what the web UI of one gateway knows, reached from every request.

NiceGUI's pages are registered once per process, but a process may serve
more than one gateway (the tests do): `UiGuard`, an ASGI middleware on each
gateway's app, puts that gateway's context into every request's scope, and a
page reads it with `context_of`. The guard also checks the UI's websocket
(NiceGUI's Socket.IO endpoint, ``/_nicegui_ws/``) before NiceGUI sees it:

- the ``Origin`` header, when the browser sends one, must be the page's own
  origin (scheme and ``Host``) or one of ``api.allowed_origins``;
- the socket's ``client_id`` must be a page this gateway rendered: a login
  page, or a page rendered for a session that is still alive and whose
  cookie the socket carries.

Anything else is refused with 403 before a handshake. NiceGUI itself accepts
any origin (its Socket.IO server allows ``*``) and trusts the client id; this
guard is what checks them.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from edgelink.ui.auth import LoginThrottle, Session, Sessions, Tickets

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from edgelink.service.gateway import Gateway

__all__ = ["SCOPE_KEY", "SOCKET_PREFIX", "UiContext", "UiGuard", "context_of"]

#: Where `UiGuard` puts the context in an ASGI scope.
SCOPE_KEY = "edgelink.ui"
#: NiceGUI's Socket.IO endpoint (polling and websocket).
SOCKET_PREFIX = "/_nicegui_ws/"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class UiContext:
    """One gateway's web UI: its sessions, tickets, throttle and rendered pages.

    Args:
        gateway: The started gateway the UI reads and acts on.
        clock: Wall clock (epoch s) for expiries; tests may pass their own.
    """

    gateway: Gateway
    clock: Callable[[], float] = time.time
    sessions: Sessions = field(init=False)
    tickets: Tickets = field(default_factory=Tickets)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    #: Pages rendered: NiceGUI client id -> the session it was rendered for (None: login).
    clients: OrderedDict[str, str | None] = field(default_factory=OrderedDict)
    max_clients: int = 4096
    #: Sockets refused by the guard, by reason (``origin``, ``session``).
    refused: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.gateway.settings.ui.session_hours * 3600.0)
        _MOUNTED[self.gateway] = self

    @staticmethod
    def of(gateway: Gateway) -> UiContext:
        """Return the UI context mounted for ``gateway`` (tests set its clock through it).

        Raises:
            LookupError: when no UI was mounted for ``gateway``.
        """
        try:
            return _MOUNTED[gateway]
        except KeyError:
            raise LookupError("no web UI is mounted for this gateway") from None

    def cookie_name(self, conn: HTTPConnection) -> str:
        """The session cookie's name: per port, since browsers share cookies across ports."""
        server = conn.scope.get("server")
        return f"edgelink_session_{server[1] if server else 0}"

    def session_of(self, conn: HTTPConnection) -> Session | None:
        """Return the live session whose cookie ``conn`` carries, or None."""
        return self.sessions.get(conn.cookies.get(self.cookie_name(conn)), self.clock())

    def rendered(self, client_id: str, session: Session | None) -> None:
        """Remember that this gateway rendered page ``client_id`` (for ``session``; None: login)."""
        self.clients[client_id] = session.sid if session is not None else None
        while len(self.clients) > self.max_clients:
            self.clients.popitem(last=False)

    def socket_refusal(self, scope: Scope) -> str | None:
        """Return why a request to the UI's socket is refused, or None to let it through."""
        from starlette.requests import HTTPConnection

        conn = HTTPConnection(scope)
        origin = conn.headers.get("origin")
        if origin is not None and not self._same_origin(origin, conn):
            return "origin"
        client_id = parse_qs(conn.url.query).get("client_id", [""])[0]
        if client_id not in self.clients:
            return "session"
        sid = self.clients[client_id]
        if sid is None:
            return None  # a login page: it needs no session
        session = self.session_of(conn)
        return None if session is not None and session.sid == sid else "session"

    def _same_origin(self, origin: str, conn: HTTPConnection) -> bool:
        if origin in self.gateway.settings.api.allowed_origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == conn.headers.get("host")


#: The UI mounted per gateway (gone with the gateway).
_MOUNTED: weakref.WeakKeyDictionary[Gateway, UiContext] = weakref.WeakKeyDictionary()


def context_of(conn: HTTPConnection) -> UiContext:
    """Return the `UiContext` of the gateway a request reached.

    Raises:
        RuntimeError: for a request that did not pass a `UiGuard`.
    """
    ctx = conn.scope.get(SCOPE_KEY)
    if not isinstance(ctx, UiContext):
        raise RuntimeError("request did not pass the UI guard")
    return ctx


class UiGuard:
    """ASGI middleware: the gateway's `UiContext` into each scope; the UI's socket checked."""

    def __init__(self, app: AsgiApp, context: UiContext) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or refuse a socket request (403) that fails the checks."""
        if scope["type"] in ("http", "websocket"):
            scope[SCOPE_KEY] = self.context
            if scope["path"].startswith(SOCKET_PREFIX):
                reason = self.context.socket_refusal(scope)
                if reason is not None:
                    refused = self.context.refused
                    refused[reason] = refused.get(reason, 0) + 1
                    await _refuse(scope, send, reason)
                    return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, reason: str) -> None:
    if scope["type"] == "websocket":
        # Closing before accepting makes the server answer the upgrade with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": reason})
        return
    body = f"refused: {reason}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
