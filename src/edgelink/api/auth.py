"""Bearer-token guard of the admin API (every route but ``/api/health``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import HTTPException, Request, WebSocket, status

from edgelink.service.audit import token_identity
from edgelink.service.token import token_matches

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["bearer_of", "require_token", "websocket_token", "who_asks"]


def bearer_of(header: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def require_token(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries the gateway's token.

    Raises:
        HTTPException: 401 with ``WWW-Authenticate: Bearer``.
    """
    expected: str = request.app.state.token
    if not token_matches(bearer_of(request.headers.get("authorization")), expected):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def websocket_token(ws: WebSocket) -> str | None:
    """The token a stream client offers: the Authorization header or ``?token=``.

    Browsers and Node-RED's websocket node cannot set headers, hence the query
    parameter; the API's own request log never prints query strings.
    """
    return bearer_of(ws.headers.get("authorization")) or ws.query_params.get("token")


def who_asks(gateway: Gateway) -> str:
    """Who an API request is, for the audit trail: the token's fingerprint, never the token."""
    return token_identity(gateway.token)
