"""Events: what happened to a connection, delivered to callbacks and the log.

`EventBus.emit` never blocks and never raises. Every subscription owns a queue:
async callbacks are drained by a task per subscription, sync callbacks run on a
small thread pool, one at a time per subscription (so their order is kept).
A callback that raises is logged and skipped; one that is slow delays only its
own queue, never a connection or another callback. Each event is also written
as one structured log record (``EVENT_RECONNECT_START`` ...) whose fields are
real ``extra`` attributes, so a JSON log formatter shows them.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from edgelink._tasks import cancel_and_wait
from edgelink.lifecycle import AsyncResource
from edgelink.redact import redact
from edgelink.state import Reason

__all__ = [
    "EVENT_TYPES",
    "Event",
    "EventBus",
    "EventCallback",
    "EventType",
    "Unsubscribe",
    "log_name",
]

logger = logging.getLogger(__name__)


class EventType(enum.StrEnum):
    """Every event type edgelink emits.

    A `StrEnum`: each member equals its string, so ``on_event("connected", ...)``,
    ``event.type == "connected"`` and the JSON of an event stay the same.
    """

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ERROR = "error"
    HEALTH_CHECK_FAILED = "health_check_failed"
    STATE_CHANGE = "state_change"
    RECONNECT_START = "reconnect_start"
    RECONNECT_OK = "reconnect_ok"
    RECONNECT_FAILED = "reconnect_failed"
    MAX_RETRIES_EXCEEDED = "max_retries_exceeded"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    TX_DROP_DETECTED = "tx_drop_detected"
    FAST_PATH_ACTIVE = "fast_path_active"
    CONNECTION_STABLE = "connection_stable"
    DEVICE_RESET = "device_reset"
    SPAM_SUSPENDED = "spam_suspended"
    POWER_WARNING = "power_warning"
    POWER_CRITICAL = "power_critical"
    SUPERVISOR_RESTARTED = "supervisor_restarted"
    HEALTH_CHANGE = "health_change"
    FLAPPING = "flapping"
    FLAP_CLEARED = "flap_cleared"
    POLL_QUARANTINED = "poll_quarantined"
    QUARANTINE_RELEASED = "quarantine_released"
    # Failover (docs/failover.md): the connection moved to another endpoint, or back.
    FAILOVER = "failover"
    FAILBACK = "failback"
    # The manager: a link came back and woke its recovery group (connection_id None).
    FLEET_WAKE = "fleet_wake"
    # The service (edgelink run): manager-wide, connection_id None.
    PANIC = "panic"
    RECOVERED = "recovered"
    CONFIG_RELOADED = "config_reloaded"
    CONFIG_ERROR = "config_error"
    WEBHOOK_FAILED = "webhook_failed"
    BRIDGE_BUFFERING = "bridge_buffering"
    BRIDGE_DROPPED = "bridge_dropped"
    # The manager: the event loop stalled (connection_id None).
    LOOP_LAG = "loop_lag"
    # The router: a poison route or source quarantined, and let out by an admin.
    ROUTE_QUARANTINED = "route_quarantined"
    SOURCE_QUARANTINED = "source_quarantined"
    QUARANTINE_LIFTED = "quarantine_lifted"
    # Isolation (docs/isolation.md): the child process of an isolated instance.
    CHILD_STARTED = "child_started"
    CHILD_EXITED = "child_exited"
    HEARTBEAT_MISSED = "heartbeat_missed"
    MEMORY_WARNING = "memory_warning"
    MEMORY_THROTTLED = "memory_throttled"
    MEMORY_RELEASED = "memory_released"
    MEMORY_KILLED = "memory_killed"
    CPU_LIMITED = "cpu_limited"
    PRIORITY_REFUSED = "priority_refused"
    # safe_run: an instance's code failed too often and was stopped.
    INSTANCE_CRASHED = "instance_crashed"
    # Plugins: the scheduled check found a newer version; a check or the index failed.
    PLUGIN_UPDATE_AVAILABLE = "plugin_update_available"
    PLUGIN_CHECK_FAILED = "plugin_check_failed"


#: Every event type edgelink emits, as strings.
EVENT_TYPES: frozenset[str] = frozenset(t.value for t in EventType)

# Log transitions, not repetitions: loss is one WARNING, return one INFO,
# per-attempt detail DEBUG.
_LEVELS: dict[str, int] = {
    EventType.CONNECTED: logging.INFO,
    EventType.RECONNECT_OK: logging.INFO,
    EventType.RESUMED: logging.INFO,
    EventType.CONNECTION_STABLE: logging.INFO,
    EventType.FAST_PATH_ACTIVE: logging.INFO,
    EventType.DEVICE_RESET: logging.WARNING,
    EventType.DISCONNECTED: logging.WARNING,
    EventType.TX_DROP_DETECTED: logging.WARNING,
    EventType.POWER_WARNING: logging.WARNING,
    EventType.HEALTH_CHECK_FAILED: logging.DEBUG,
    EventType.RECONNECT_START: logging.DEBUG,
    EventType.RECONNECT_FAILED: logging.DEBUG,
    EventType.STATE_CHANGE: logging.DEBUG,
    EventType.HEALTH_CHANGE: logging.DEBUG,
    EventType.ERROR: logging.ERROR,
    EventType.MAX_RETRIES_EXCEEDED: logging.ERROR,
    EventType.SUSPENDED: logging.ERROR,
    EventType.SPAM_SUSPENDED: logging.ERROR,
    EventType.POWER_CRITICAL: logging.ERROR,
    EventType.SUPERVISOR_RESTARTED: logging.ERROR,
    EventType.FLAPPING: logging.WARNING,
    EventType.FLAP_CLEARED: logging.INFO,
    EventType.POLL_QUARANTINED: logging.ERROR,
    EventType.QUARANTINE_RELEASED: logging.INFO,
    EventType.FLEET_WAKE: logging.INFO,
    EventType.FAILOVER: logging.WARNING,
    EventType.FAILBACK: logging.INFO,
    EventType.PANIC: logging.CRITICAL,
    EventType.RECOVERED: logging.WARNING,
    EventType.CONFIG_RELOADED: logging.INFO,
    EventType.CONFIG_ERROR: logging.ERROR,
    EventType.WEBHOOK_FAILED: logging.WARNING,
    EventType.BRIDGE_BUFFERING: logging.WARNING,
    EventType.BRIDGE_DROPPED: logging.ERROR,
    EventType.LOOP_LAG: logging.WARNING,
    # The router logs these itself (one WARNING with the advice).
    EventType.ROUTE_QUARANTINED: logging.DEBUG,
    EventType.SOURCE_QUARANTINED: logging.DEBUG,
    EventType.QUARANTINE_LIFTED: logging.DEBUG,
    EventType.CHILD_STARTED: logging.INFO,
    EventType.CHILD_EXITED: logging.WARNING,
    EventType.HEARTBEAT_MISSED: logging.ERROR,
    EventType.MEMORY_WARNING: logging.WARNING,
    EventType.MEMORY_THROTTLED: logging.WARNING,
    EventType.MEMORY_RELEASED: logging.INFO,
    EventType.MEMORY_KILLED: logging.ERROR,
    EventType.CPU_LIMITED: logging.INFO,
    EventType.PRIORITY_REFUSED: logging.WARNING,
    EventType.INSTANCE_CRASHED: logging.ERROR,
    EventType.PLUGIN_UPDATE_AVAILABLE: logging.INFO,
    EventType.PLUGIN_CHECK_FAILED: logging.WARNING,
}

#: Bounded per-subscription queue: a callback that cannot keep up loses the
#: oldest events (counted in `EventBus.dropped`) rather than growing memory.
QUEUE_LIMIT = 10_000


#: Reasons for a disconnect that a person or the service asked for: not a loss.
DELIBERATE = frozenset(
    {
        Reason.ADMIN_STOP,
        Reason.SHUTDOWN,
        Reason.REMOVED,
        Reason.KILLED,
        Reason.PANIC,
        Reason.RESTART,
        Reason.ADMIN_RESTART,
        Reason.SUPERVISOR_RESTARTED,
        Reason.FAILBACK,
    }
)


def _level(event: Event) -> int:
    if event.type == EventType.DISCONNECTED and event.data.get("reason") in DELIBERATE:
        return logging.INFO
    return _LEVELS.get(event.type, logging.INFO)


def log_name(event_type: str) -> str:
    """Return an event type's log name: ``reconnect_start`` -> ``EVENT_RECONNECT_START``."""
    return "EVENT_" + event_type.upper()


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to one connection.

    Attributes:
        type: The event type, e.g. ``"reconnect_start"``.
        connection_id: The connection it concerns (None for manager-wide events).
        ts: Wall-clock time.
        state: The connection's state when it was emitted.
        attempt: The reconnect attempt counter at that moment.
        data: Context, secrets already redacted.
        connection: The driver object, for callbacks in the seed's style.

    An event also answers for its connection: an attribute it does not have
    (``last_error``, ``stats``, ``status``, ``get_status()``, a driver's own
    method) is looked up on ``connection``, so a callback written for the seed,
    ``def on_error(connection): print(connection.last_error)``, works as it is.
    ``last_error`` is the error the event carries when it carries one (the
    error at emission), else the connection's.
    """

    type: str
    connection_id: str | None
    ts: float
    state: str | None = None
    attempt: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    connection: Any = field(default=None, repr=False, compare=False)

    def __getattr__(self, name: str) -> Any:
        # Only for names the event lacks; never for private ones (copy, pickle).
        if name.startswith("_") or name == "connection":
            raise AttributeError(name)
        if name == "last_error" and "error" in self.data:
            return self.data["error"]
        connection = self.connection
        if connection is None:
            raise AttributeError(
                f"event {self.type!r} has no attribute {name!r} "
                f"(and no connection to ask: connection_id={self.connection_id!r})"
            )
        try:
            return getattr(connection, name)
        except AttributeError:
            raise AttributeError(
                f"neither event {self.type!r} nor its connection "
                f"{type(connection).__name__} has an attribute {name!r}"
            ) from None

    def as_dict(self) -> dict[str, Any]:
        """Return the event as a JSON-friendly dict (without the connection object)."""
        return {
            "type": self.type,
            "event": log_name(self.type),
            "connection_id": self.connection_id,
            "ts": self.ts,
            "state": self.state,
            "attempt": self.attempt,
            "data": self.data,
        }


EventCallback = Callable[[Event], Awaitable[None] | None]
Unsubscribe = Callable[[], None]


class _Subscription:
    __slots__ = ("active", "busy", "callback", "event_type", "is_async", "queue")

    def __init__(self, event_type: str, callback: EventCallback) -> None:
        self.event_type = event_type
        self.callback = callback
        self.is_async = inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
            getattr(callback, "__call__", None)  # noqa: B004 - async callable objects
        )
        self.queue: deque[Event] = deque()
        self.busy = False
        self.active = True


class EventBus(AsyncResource):
    """Fan-out of `Event`s to callbacks, isolated from each other and from the emitter.

    Example:
        bus = EventBus()
        off = bus.on("connected", lambda ev: print(ev.connection_id))
        bus.emit(Event("connected", "plc_1", ts=time.time()))
        await bus.drain()
        off()
    """

    def __init__(self, *, sync_workers: int = 4) -> None:
        self._subs: dict[str, list[_Subscription]] = {}
        self._sync_workers = sync_workers
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight = 0
        self._idle: asyncio.Event | None = None
        self._lock = threading.Lock()
        self.dropped = 0
        self.callback_errors = 0
        self.emitted = 0

    def on(self, event_type: str, callback: EventCallback) -> Unsubscribe:
        """Subscribe ``callback`` to ``event_type`` (``"*"`` for every event).

        Returns:
            A function that unsubscribes; calling it twice is harmless.

        Raises:
            ValueError: for an unknown event type.
        """
        if event_type != "*" and event_type not in EVENT_TYPES:
            raise ValueError(
                f"unknown event type {event_type!r}; known: {', '.join(sorted(EVENT_TYPES))}"
            )
        sub = _Subscription(event_type, callback)
        with self._lock:
            self._subs = {**self._subs, event_type: [*self._subs.get(event_type, []), sub]}

        def unsubscribe() -> None:
            with self._lock:
                sub.active = False
                sub.queue.clear()
                subs = [s for s in self._subs.get(event_type, []) if s is not sub]
                self._subs = {**self._subs, event_type: subs}

        return unsubscribe

    def has_subscribers(self, event_type: str) -> bool:
        """Return True if anything listens to ``event_type``."""
        subs = self._subs
        return bool(subs.get(event_type) or subs.get("*"))

    def wants(self, event_type: str) -> bool:
        """Return True if an event of this type would reach a subscriber or the log."""
        return self.has_subscribers(event_type) or logger.isEnabledFor(
            _LEVELS.get(event_type, logging.INFO)
        )

    def emit(self, event: Event) -> None:
        """Log ``event`` and queue it for every matching subscriber. Never blocks, never raises."""
        self.emitted += 1
        level = _level(event)
        if logger.isEnabledFor(level):
            name = log_name(event.type)
            logger.log(
                level,
                "%s %s state=%s attempt=%s %s",
                name,
                event.connection_id,
                event.state,
                event.attempt,
                event.data,
                extra={
                    "event": name,
                    "event_type": event.type,
                    "connection_id": event.connection_id,
                    "state": event.state,
                    "attempt": event.attempt,
                    "context": event.data,
                    "event_ts": event.ts,
                },
            )
        if not self.has_subscribers(event.type):
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            self._loop = running
            self._dispatch(event)
            return
        # Emitted from a worker thread: queue it on the loop's thread, where
        # all delivery bookkeeping lives.
        loop = self._loop
        if loop is None or loop.is_closed():
            logger.debug("event %s emitted with no event loop to deliver it", event.type)
            return
        loop.call_soon_threadsafe(self._dispatch, event)

    def _dispatch(self, event: Event) -> None:
        subs = self._subs
        for sub in subs.get(event.type, []) + subs.get("*", []):
            if len(sub.queue) >= QUEUE_LIMIT:
                sub.queue.popleft()
                self.dropped += 1
            sub.queue.append(event)
            if not sub.busy:
                self._start(sub)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tell the bus which loop delivers events emitted from other threads."""
        self._loop = loop

    def _start(self, sub: _Subscription) -> None:
        loop = asyncio.get_running_loop()
        sub.busy = True
        self._inflight += 1
        if self._idle is not None:
            self._idle.clear()
        if sub.is_async:
            self._own(self._drain_async(sub), sub)
        else:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._sync_workers, thread_name_prefix="edgelink-events"
                )
            fut = loop.run_in_executor(self._executor, self._drain_sync, sub)
            fut.add_done_callback(lambda _f: self._finished(sub))

    def _finished(self, sub: _Subscription) -> None:
        # Runs on the loop thread. Events may have arrived after the drain
        # looked at the queue for the last time: start another round then.
        sub.busy = False
        self._inflight -= 1
        if sub.queue and sub.active:
            self._start(sub)
        elif self._inflight == 0 and self._idle is not None:
            self._idle.set()

    async def _drain_async(self, sub: _Subscription) -> None:
        try:
            while sub.queue and sub.active:
                event = sub.queue.popleft()
                try:
                    result = sub.callback(event)
                    if inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.callback_errors += 1
                    logger.exception("event callback %r failed on %s", sub.callback, event.type)
        finally:
            self._finished(sub)

    def _drain_sync(self, sub: _Subscription) -> None:
        while sub.active:
            try:
                event = sub.queue.popleft()
            except IndexError:
                return
            try:
                result = sub.callback(event)
                if inspect.isawaitable(result):
                    # An async callable we could not detect up front: run it on the
                    # loop, in a task the bus owns (aclose ends it, errors are counted).
                    loop = self._loop
                    if loop is not None and not loop.is_closed():
                        loop.call_soon_threadsafe(self._run_late_async, sub, event, result)
            except Exception:
                self.callback_errors += 1
                logger.exception("event callback %r failed on %s", sub.callback, event.type)

    def _run_late_async(self, sub: _Subscription, event: Event, result: Awaitable[None]) -> None:
        """Run the awaitable a sync-looking callback returned, as a task of the bus."""
        self._own(self._await_late(sub, event, result), sub)

    def _own(self, coro: Coroutine[Any, Any, None], sub: _Subscription) -> None:
        """Run ``coro`` in a task of the bus: `aclose` cancels and awaits it."""
        task = asyncio.get_running_loop().create_task(
            coro, name=f"edgelink.events[{sub.event_type}]"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _await_late(self, sub: _Subscription, event: Event, result: Awaitable[None]) -> None:
        try:
            await result
        except Exception:
            self.callback_errors += 1
            logger.exception("event callback %r failed on %s", sub.callback, event.type)

    async def drain(self, timeout: float | None = 5.0) -> None:
        """Wait until every queued event has been delivered (or ``timeout`` passes).

        Raises:
            TimeoutError: if deliveries are still running after ``timeout`` seconds.
        """
        if self._idle is None:
            self._idle = asyncio.Event()
        async with asyncio.timeout(timeout):
            while self._inflight:
                self._idle.clear()
                if self._inflight == 0:
                    break
                await self._idle.wait()

    async def aclose(self) -> None:
        """Stop delivery: cancel async deliveries and shut the callback threads down."""
        with self._lock:
            for subs in self._subs.values():
                for sub in subs:
                    sub.active = False
                    sub.queue.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            await cancel_and_wait(task)
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for subs in self._subs.values():
                for sub in subs:
                    sub.active = True
        self._inflight = 0

    def __repr__(self) -> str:
        n = sum(len(s) for s in self._subs.values())
        return f"<EventBus subscriptions={n} emitted={self.emitted} dropped={self.dropped}>"


def make_event(
    event_type: str,
    connection_id: str | None,
    ts: float,
    *,
    state: str | None = None,
    attempt: int = 0,
    connection: Any = None,
    **data: Any,
) -> Event:
    """Build an `Event` with its data redacted."""
    return Event(event_type, connection_id, ts, state, attempt, redact(data), connection)
