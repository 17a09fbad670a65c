"""The two lifecycles of edgelink's objects, each with one spelling.

`AsyncResource` is anything that holds something and is closed once: it has
`aclose()` and is its own async context manager. `Service` is anything that
runs between `start()` and `stop()`; entering its context starts it, leaving
stops it, and `aclose()` is `stop()`, so every closable thing closes the same
way. Both are pure: no I/O, no tasks.

A subclass that holds live resources (sockets, tasks, threads) arms the leak
guard while they are live: an armed object that is garbage-collected warns
with `ResourceWarning` (pytest's ``filterwarnings = error`` makes that a test
failure), the way an unclosed file or aiohttp connector does.

Example:
    class Broker(Service):
        async def start(self) -> None:
            self._arm_leak_warning()

        async def stop(self) -> None:
            self._disarm_leak_warning()

    async with Broker() as broker:
        ...
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

__all__ = ["AsyncResource", "Service"]


class AsyncResource(abc.ABC):
    """Something closed once with `aclose()`, and an async context manager that does so.

    Entering the context does nothing but return the object; leaving it calls
    `aclose()`, also when the body raised. `aclose()` must be idempotent.
    """

    # A class attribute, so an object whose __init__ failed half-way is not armed.
    _leak_armed: bool = False

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release what the object holds (idempotent)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _arm_leak_warning(self) -> None:
        """Warn `ResourceWarning` if this object is collected before `_disarm_leak_warning`."""
        self._leak_armed = True

    def _disarm_leak_warning(self) -> None:
        """The object was closed: collecting it is fine."""
        self._leak_armed = False

    def __del__(self, _warn: Callable[..., Any] = warnings.warn) -> None:
        # The default argument keeps warnings.warn reachable at interpreter exit,
        # when module globals may already be gone.
        if self._leak_armed:
            close = "stop()" if isinstance(self, Service) else "aclose()"
            _warn(
                f"unclosed {type(self).__name__} at {id(self):#x}: it was garbage-collected"
                f" while running; use 'async with' or await its {close}",
                ResourceWarning,
                source=self,
            )


class Service(AsyncResource):
    """Something that runs between `start()` and `stop()`.

    ``async with service:`` starts it and stops it on the way out, also when the
    body raised (a `start` that raised is not followed by `stop`). `aclose()`
    is `stop()`. `start` and `stop` are idempotent.
    """

    @abc.abstractmethod
    async def start(self) -> None:
        """Start running (idempotent)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop running and release everything `start` took (idempotent)."""

    async def aclose(self) -> None:
        """Stop (the spelling every closable edgelink object shares)."""
        await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self
