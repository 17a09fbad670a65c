"""TCP socket tuning shared by the TCP-based drivers (DESIGN section 3)."""

from __future__ import annotations

import contextlib
import socket

__all__ = ["tcp_socket_options", "tune_tcp_socket"]


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
