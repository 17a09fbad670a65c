"""`eventually`: wait until a check holds, for tests that watch a real peer."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["eventually"]


async def eventually(check: Callable[[], Any], timeout: float = 10.0, poll: float = 0.02) -> Any:
    """Call ``check`` (sync or async) every ``poll`` s until it returns something true.

    Returns:
        What ``check`` returned.

    Raises:
        TimeoutError: naming the check, if it did not hold within ``timeout`` s.
    """
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return result
                await asyncio.sleep(poll)
    except TimeoutError:
        name = getattr(check, "__qualname__", repr(check))
        raise TimeoutError(f"{name} did not hold within {timeout:g} s") from None
