"""TCP socket tuning shared by the TCP-based drivers (DESIGN section 3)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import TypeVar, cast

from edgelink.drivers.configs import TcpKeepalive
from edgelink.errors import ConnectError

__all__ = ["open_tcp_link", "tcp_socket_options", "tune_tcp_socket"]

P = TypeVar("P", bound=asyncio.BaseProtocol)


def tcp_socket_options(
    *,
    keepalive_idle: int = 10,
    keepalive_interval: int = 5,
    keepalive_count: int = 3,
    user_timeout: float = 15.0,
    nodelay: bool = True,
) -> list[tuple[int, int, int]]:
    """Return the ``(level, option, value)`` triples of `tune_tcp_socket`.

    For libraries that open sockets themselves and take options to set
    (httpx's ``socket_options``). Options this platform lacks are left out.
    """
    opts: list[tuple[int, int, int]] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    if nodelay:
        opts.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
    for name, value in (
        ("TCP_KEEPIDLE", keepalive_idle),
        ("TCP_KEEPINTVL", keepalive_interval),
        ("TCP_KEEPCNT", keepalive_count),
        ("TCP_USER_TIMEOUT", int(user_timeout * 1000)),
    ):
        opt = getattr(socket, name, None)
        if opt is not None:
            opts.append((socket.IPPROTO_TCP, opt, value))
    return opts


def tune_tcp_socket(
    sock: socket.socket,
    *,
    keepalive_idle: int = 10,
    keepalive_interval: int = 5,
    keepalive_count: int = 3,
    user_timeout: float = 15.0,
    nodelay: bool = True,
) -> None:
    """Set keepalive, ``TCP_USER_TIMEOUT`` and ``TCP_NODELAY`` where the OS has them.

    Keepalive finds a peer that vanished without a FIN within
    idle + interval * count seconds (25 s at the defaults); ``TCP_USER_TIMEOUT``
    bounds how long unacknowledged data may sit (15 s) so a write to a dead peer
    fails instead of queueing for minutes; Nagle off keeps request latency low.
    Options a platform lacks are skipped.
    """
    opts = tcp_socket_options(
        keepalive_idle=keepalive_idle,
        keepalive_interval=keepalive_interval,
        keepalive_count=keepalive_count,
        user_timeout=user_timeout,
        nodelay=nodelay,
    )
    for level, opt, value in opts:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, opt, value)


async def open_tcp_link(
    factory: Callable[[], P],
    host: str,
    port: int,
    keepalive: TcpKeepalive,
    *,
    connection_id: str,
) -> tuple[asyncio.Transport, P]:
    """Open a TCP connection served by the protocol ``factory`` makes, tuned by ``keepalive``.

    Raises:
        ConnectError: if the connection cannot be opened (refused, no route,
            unknown host), naming the address; the `OSError` is its cause.
    """
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_connection(factory, host, port)
    except OSError as exc:
        raise ConnectError(
            f"cannot connect to {host}:{port}: {exc.strerror or exc}",
            connection_id=connection_id,
            cause=exc,
        ) from exc
    sock = transport.get_extra_info("socket")
    if sock is not None:
        tune_tcp_socket(
            sock,
            keepalive_idle=keepalive.keepalive_idle,
            keepalive_interval=keepalive.keepalive_interval,
            keepalive_count=keepalive.keepalive_count,
            user_timeout=keepalive.tcp_user_timeout,
        )
    # No isinstance(transport, asyncio.Transport) here: uvloop's TCPTransport has
    # the stream methods but is no subclass of it.
    return transport, protocol


async def close_transport(
    transport: asyncio.Transport | asyncio.DatagramTransport,
    closed: asyncio.Future[None],
    *,
    unsent_ok: int = 0,
) -> None:
    """Close ``transport`` and wait (1 s at most) until its protocol saw the socket go.

    Args:
        transport: The link to close.
        closed: Done when the protocol's ``connection_lost`` ran.
        unsent_ok: Bytes still unsent that a polite close may flush (a goodbye
            packet); with more, the link is aborted, since a peer that stopped
            reading would hold a polite close forever.
    """
    # A stream transport writes (a datagram one sends to); asked by method, as
    # uvloop's transports are no subclasses of asyncio's.
    stream = hasattr(transport, "write")
    unsent = cast(asyncio.Transport, transport).get_write_buffer_size() if stream else 0
    if unsent > unsent_ok:
        transport.abort()
    else:
        transport.close()
    # The socket is closed in a callback the loop runs next; waiting for it
    # means the descriptor is gone when the caller's disconnect() returns.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            await closed
