"""Failing the requests a driver still waits on when its link ends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["fail_all"]


def fail_all(futures: Iterable[asyncio.Future[Any] | None], error: BaseException) -> None:
    """Set ``error`` on every future not done yet (None entries are skipped).

    The exception is marked retrieved at once: a request whose caller gave up
    must not log "exception was never retrieved" later.
    """
    for fut in futures:
        if fut is not None and not fut.done():
            fut.set_exception(error)
            fut.exception()
