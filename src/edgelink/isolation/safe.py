"""``safe_run`` for instance code that runs in the gateway's process (the seed's ``BaseModule``).

An `InstanceGuard` wraps the calls into one instance's own code (a plugin's
hook, a driver callback): an exception is counted (``error_count``), kept
(``last_error``), turns the status to ``error`` and goes to the optional
`SentryReporter`; it never reaches the gateway. More than ``max_errors`` in
``window`` seconds is a crash: the guard's status becomes ``crashed`` and
``on_crash(instance_id, exc)`` runs once (the seed's ``handle_crash``; for a
connection, `guard_connection` stops it and emits ``instance_crashed``).

Example:
    guard = InstanceGuard("my_plugin", on_crash=lambda iid, exc: ...)
    value = guard.safe_run(plugin.execute)              # None if it raised
    value = await guard.safe_run_async(plugin.poll)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from edgelink.events import EventType, make_event

if TYPE_CHECKING:
    from edgelink.manager import ConnectionManager

__all__ = ["InstanceGuard", "SentryReporter", "guard_connection"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

CrashHandler = Callable[[str, BaseException], Awaitable[None] | None]


class SentryReporter:
    """Sends exceptions to a Sentry server (``sentry-sdk``, the ``sentry`` extra).

    Off unless built with a DSN. ``sentry_sdk.init`` runs once, at the first
    instance built; the SDK's own integrations (logging, threading hooks) are
    off, so only what a guard reports is sent.

    Raises:
        ImportError: naming ``pip install 'edgelink[sentry]'`` if the SDK is missing.
    """

    def __init__(
        self, dsn: str, *, environment: str | None = None, sample_rate: float = 1.0
    ) -> None:
        try:
            import sentry_sdk
        except ImportError as exc:
            raise ImportError(
                f"Sentry needs an extra: pip install 'edgelink[sentry]' ({exc})"
            ) from exc
        self._sdk = sentry_sdk
        sentry_sdk.init(
            dsn=dsn,
            environment=environment,
            sample_rate=sample_rate,
            default_integrations=False,
            auto_enabling_integrations=False,
        )

    def capture(self, exc: BaseException, instance_id: str) -> None:
        """Send ``exc`` tagged with the instance; never raises."""
        try:
            with self._sdk.new_scope() as scope:
                scope.set_tag("instance", instance_id)
                self._sdk.capture_exception(exc)
        except Exception:
            logger.debug("sentry capture failed", exc_info=True)

    def flush(self, timeout: float = 2.0) -> None:
        """Wait up to ``timeout`` s for queued reports to leave."""
        self._sdk.flush(timeout=timeout)


class InstanceGuard:
    """Counts an instance's errors and stops it after too many; the gateway never sees them.

    Args:
        instance_id: The instance (a connection id, a plugin name).
        max_errors: Errors allowed in ``window``; one more is a crash (the seed's 5).
        window: Seconds the errors are counted over.
        on_crash: Called once per crash with the id and the last exception
            (sync or async); `reset` arms it again.
        reporter: Where exceptions also go (a `SentryReporter`), or None.
    """

    def __init__(
        self,
        instance_id: str,
        *,
        max_errors: int = 5,
        window: float = 60.0,
        on_crash: CrashHandler | None = None,
        reporter: SentryReporter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.instance_id = instance_id
        self.max_errors = max_errors
        self.window = window
        self.on_crash = on_crash
        self.reporter = reporter
        self._clock = clock
        #: Every error since the guard was made (or `reset`).
        self.error_count = 0
        self.last_error: str | None = None
        #: The last error's stack trace, for the error log.
        self.last_traceback: str | None = None
        self.status: Literal["running", "error", "crashed"] = "running"
        self._recent: deque[float] = deque(maxlen=max_errors + 1)
        self._crash_tasks: set[asyncio.Task[None]] = set()

    def safe_run(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Call ``fn(*args)``; return its result, or None after recording what it raised."""
        if self.status == "crashed":
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - the point of the guard
            self.record(exc)
            return None

    async def safe_run_async(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T | None:
        """Await ``fn(*args)``; return its result, or None after recording what it raised.

        Cancellation passes through untouched.
        """
        if self.status == "crashed":
            return None
        try:
            return await fn(*args)
        except Exception as exc:  # noqa: BLE001 - the point of the guard
            self.record(exc)
            return None

    def record(self, exc: BaseException) -> None:
        """Count ``exc``: error status, report, and the crash handler past the limit."""
        self.error_count += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_traceback = "".join(traceback.format_exception(exc))
        logger.warning("%s: %s", self.instance_id, self.last_error)
        if self.reporter is not None:
            self.reporter.capture(exc, self.instance_id)
        if self.status == "crashed":
            return
        self.status = "error"
        now = self._clock()
        recent = self._recent
        recent.append(now)
        while recent and now - recent[0] > self.window:
            recent.popleft()
        if len(recent) > self.max_errors:
            self.status = "crashed"
            self._handle_crash(exc)

    def _handle_crash(self, exc: BaseException) -> None:
        logger.error(
            "%s: %d errors within %g s: stopped (%s)",
            self.instance_id,
            len(self._recent),
            self.window,
            self.last_error,
        )
        handler = self.on_crash
        if handler is None:
            return
        result = handler(self.instance_id, exc)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._crash_tasks.add(task)
            task.add_done_callback(self._crash_tasks.discard)

    def reset(self) -> None:
        """Forget the errors (a person restarted the instance)."""
        self.error_count = 0
        self.last_error = None
        self.last_traceback = None
        self.status = "running"
        self._recent.clear()

    def __repr__(self) -> str:
        return f"<InstanceGuard {self.instance_id} {self.status} errors={self.error_count}>"


def guard_connection(
    manager: ConnectionManager, connection_id: str, **kwargs: Any
) -> InstanceGuard:
    """Return a guard whose crash stops the connection and emits ``instance_crashed``.

    Run on the manager's event loop (the stop is a task of it).
    """

    async def crash(instance_id: str, exc: BaseException) -> None:
        manager.events.emit(
            make_event(
                EventType.INSTANCE_CRASHED,
                instance_id,
                time.time(),
                errors=guard.error_count,
                window=guard.window,
                last_error=guard.last_error,
            )
        )
        await manager.stop_connection(instance_id)

    guard = InstanceGuard(connection_id, on_crash=crash, **kwargs)
    return guard
