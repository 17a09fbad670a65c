"""SyncConnectionManager: the blocking, thread-safe facade over `ConnectionManager`.

One asyncio loop runs in a background thread and owns the manager; every
method here hands its call to that loop and blocks for the result. There is
no logic of its own: supervisors, pollers and health checks keep running on
the loop between calls. Event callbacks run off the loop (on the event bus's
callback threads), so a callback may call back into this facade.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from os import PathLike
from types import TracebackType
from typing import Any, Self, TypeVar

from edgelink.appcontext import ModuleManager, context_with
from edgelink.clock import Clock
from edgelink.config import ConfigDiff, ConnectionSpec
from edgelink.connection import AnyConnection
from edgelink.events import EventCallback, Unsubscribe
from edgelink.gcpolicy import GcPolicy
from edgelink.manager import ConnectionManager, DataListener, HealthCheckListener, HealthMonitor
from edgelink.registry import DriverRegistry, RegistrableClass
from edgelink.router import DataPoint, RouteTableDiff
from edgelink.state import ConnectionState

__all__ = ["SyncConnectionManager"]

T = TypeVar("T")


class SyncConnectionManager:
    """Blocking twin of `ConnectionManager`: same methods, no ``await``.

    Example:
        with SyncConnectionManager.from_config("connections.json") as manager:
            manager.wait_for_state("plc_1", "connected", timeout=10)
            print(manager.execute_with_retry("plc_1", lambda c: c.read("MAIN.temp")))

    Every method is thread-safe. ``timeout`` arguments bound the call itself.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        registry: DriverRegistry | None = None,
        context: Any = None,
        manager: ConnectionManager | None = None,
        **settings: Any,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._closing = False
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        # Blocking drivers that look the manager up (the seed's app_context)
        # find this facade, whose methods they can call from their threads.
        if manager is None:
            context = context_with(context, "connection_manager", self)
            manager = ConnectionManager(clock=clock, registry=registry, context=context, **settings)
        else:
            modules = getattr(manager.context, "module_manager", None)
            if isinstance(modules, ModuleManager):
                modules.register_module("connection_manager", self, replace=True)
        self._manager = manager

    @classmethod
    def from_config(
        cls,
        source: str | PathLike[str] | Mapping[str, Any],
        *,
        clock: Clock | None = None,
        registry: DriverRegistry | None = None,
        context: Any = None,
        gc_policy: GcPolicy | str | None = None,
    ) -> Self:
        """Build from a config path or dict (see `ConnectionManager.from_config`)."""
        return cls(
            manager=ConnectionManager.from_config(
                source, clock=clock, registry=registry, context=context, gc_policy=gc_policy
            )
        )

    def _submit(
        self, coro: Coroutine[Any, Any, T], *, during_close: bool = False
    ) -> concurrent.futures.Future[T]:
        # Checking for close and registering the call happen under one lock, so
        # close() sees every call that got in and refuses every one after it.
        with self._lock:
            if self._closed or (self._closing and not during_close):
                coro.close()
                raise RuntimeError("SyncConnectionManager is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="edgelink-loop", daemon=True
                )
                self._thread.start()
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._inflight.add(future)
            return future

    def _run(
        self,
        coro: Coroutine[Any, Any, T],
        timeout: float | None = None,
        *,
        during_close: bool = False,
    ) -> T:
        if self._thread is not None and threading.get_ident() == self._thread.ident:
            coro.close()
            raise RuntimeError("blocking call from the manager's own loop thread would deadlock")
        future = self._submit(coro, during_close=during_close)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"call did not finish within {timeout} s") from None
        except concurrent.futures.CancelledError:
            if self._closing:
                raise RuntimeError("SyncConnectionManager was closed during the call") from None
            raise
        finally:
            with self._lock:
                self._inflight.discard(future)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a plain method of the manager on its loop (for thread safety)."""

        async def call() -> T:
            return fn(*args, **kwargs)

        return self._run(call())

    @property
    def manager(self) -> ConnectionManager:
        """The async manager (use it only from coroutines run on `loop`)."""
        return self._manager

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The background event loop."""
        return self._loop

    def start(self) -> None:
        """Start every enabled connection."""
        self._run(self._manager.start())

    def stop(self) -> None:
        """Close every connection."""
        self._run(self._manager.stop())

    def close(self) -> None:
        """Stop the manager and the loop thread (idempotent).

        Calls still blocked in other threads (a ``wait_for_state``, an event
        callback calling back in) are woken with a RuntimeError.
        """
        with self._lock:
            if self._closed or self._closing:
                return
            self._closing = True
            thread = self._thread
        if thread is not None:
            self._run(self._manager.stop(), during_close=True)
            with self._lock:
                pending = list(self._inflight)
            for future in pending:
                future.cancel()
            # Let the cancelled calls unwind on the loop before it stops.
            self._run(_settle(), 10, during_close=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            thread.join(timeout=10)
        with self._lock:
            self._closed = True
            self._thread = None
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SyncConnectionManager {self._manager!r}>"

    def register_connection_type(self, type_name: str, cls: RegistrableClass) -> None:
        """Register a driver class under a type name."""
        self._manager.register_connection_type(type_name, cls)

    def add_connection(
        self,
        connection_id: str,
        type: str,
        config: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        enabled: bool = True,
        settings: Mapping[str, Any] | None = None,
        poll: Sequence[Mapping[str, Any]] | None = None,
        watch: Sequence[Mapping[str, Any]] | None = None,
        endpoints: Sequence[Mapping[str, Any]] | None = None,
        isolation: str | Mapping[str, Any] | None = None,
    ) -> AnyConnection:
        """Add a connection (it starts if the manager runs and it is enabled)."""
        return self._call(
            self._manager.add_connection,
            connection_id,
            type,
            config,
            name=name,
            enabled=enabled,
            settings=settings,
            poll=poll,
            watch=watch,
            endpoints=endpoints,
            isolation=isolation,
        )

    def remove_connection(self, connection_id: str) -> None:
        """Stop a connection and forget it."""
        self._run(self._manager.remove_connection(connection_id))

    def start_connection(self, connection_id: str) -> None:
        """Start (or re-enable) one connection."""
        self._run(self._manager.start_connection(connection_id))

    def stop_connection(self, connection_id: str) -> None:
        """Stop one connection."""
        self._run(self._manager.stop_connection(connection_id))

    def restart_connection(self, connection_id: str) -> None:
        """Restart one connection."""
        self._run(self._manager.restart_connection(connection_id))

    def kill_connection(self, connection_id: str) -> None:
        """Stop one connection at once."""
        self._run(self._manager.kill_connection(connection_id))

    def resume(self, connection_id: str) -> None:
        """Bring a suspended or failed connection back."""
        self._run(self._manager.resume(connection_id))

    def release_quarantine(self, connection_id: str, tag: str | None = None) -> list[str]:
        """Poll quarantined tags of a connection again; return those released."""
        return self._run(self._manager.release_quarantine(connection_id, tag))

    def get_connection(self, connection_id: str) -> AnyConnection | None:
        """Return the driver object of a connection, or None."""
        return self._manager.get_connection(connection_id)

    @property
    def connections(self) -> dict[str, AnyConnection]:
        """Every connection's driver by id."""
        return self._manager.connections

    def get_spec(self, connection_id: str) -> ConnectionSpec:
        """Return the resolved config of one connection."""
        return self._manager.get_spec(connection_id)

    def get_state(self, connection_id: str) -> ConnectionState:
        """Return the state of one connection."""
        return self._manager.get_state(connection_id)

    def get_status(self, connection_id: str | None = None) -> dict[str, Any]:
        """Return the status of one connection, or of all."""
        return self._call(self._manager.get_status, connection_id)

    def loop_lag(self) -> dict[str, Any]:
        """Return the manager loop's lag figures (see `ConnectionManager.loop_lag`)."""
        return self._call(self._manager.loop_lag)

    def runtime_status(self) -> dict[str, Any]:
        """Return loop lag and gc policy (see `ConnectionManager.runtime_status`)."""
        return self._call(self._manager.runtime_status)

    # The router is not thread-safe: these run its methods on the loop.

    def load_routes(self, source: str | PathLike[str] | Mapping[str, Any]) -> RouteTableDiff:
        """Load a ``routing.json`` (path or dict) into the manager's router, atomically.

        Raises:
            RouteError: for a bad table; the old one stays.
        """
        return self._call(self._manager.router.load_routes, source)

    def route_data(
        self,
        source_id: str,
        tag: str,
        value: Any,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Route one datapoint from a thread; False if spam protection (or a pause) dropped it."""
        return self._call(self._manager.router.route_data, source_id, tag, value, metadata)

    def get_datapoint(self, address: str) -> DataPoint | None:
        """Return the last datapoint at an address of the data space, or None."""
        return self._call(self._manager.router.data.get, address)

    def drain_routes(self, timeout: float | None = 5.0) -> None:
        """Block until every delivery the router scheduled has finished."""
        self._run(self._manager.router.drain(timeout))

    def on_event(self, event_type: str, callback: EventCallback) -> Unsubscribe:
        """Subscribe to an event type (``"*"`` = all); callbacks run off the loop."""
        return self._call(self._manager.on_event, event_type, callback)

    def on_data(self, listener: DataListener) -> Unsubscribe:
        """Call ``listener(connection_id, tag, value, quality, ts)`` for every datapoint."""
        return self._call(self._manager.on_data, listener)

    def on_health_check(self, listener: HealthCheckListener) -> Unsubscribe:
        """Call ``listener(connection_id, latency_s, ok)`` after every health check."""
        return self._call(self._manager.on_health_check, listener)

    def wait_for_state(
        self,
        connection_id: str,
        state: ConnectionState | str,
        timeout: float | None = None,
    ) -> None:
        """Block until the connection is in ``state``.

        Raises:
            TimeoutError: if it is not within ``timeout`` seconds.
        """
        self._run(self._manager.wait_for_state(connection_id, state, timeout))

    def wait_for_link(
        self, connection_id: str, timeout: float, *, newer_than: int | None = None
    ) -> None:
        """Block until the link is up (a link after number ``newer_than``).

        Raises:
            ConnectionLostError: the supervisor gave up meanwhile, or ``timeout`` passed.
        """
        self._run(self._manager.wait_for_link(connection_id, timeout, newer_than=newer_than))

    def execute_with_retry(
        self,
        connection_id: str,
        op: Callable[[Any], Awaitable[T] | T],
        *,
        retries: int | None = None,
        timeout: float | None = None,
    ) -> T:
        """Run ``op(connection)`` with the manager's retry rules and block for the result."""
        return self._run(
            self._manager.execute_with_retry(connection_id, op, retries=retries, timeout=timeout)
        )

    def mark_tx_drop(self, connection_id: str) -> None:
        """Say a frame broke mid-way: fast-path reconnect."""
        self._call(self._manager.mark_tx_drop, connection_id)

    def safe_reconnect(self, connection_id: str, fast_path: bool = True) -> None:
        """Drop the link and reconnect now."""
        self._run(self._manager.safe_reconnect(connection_id, fast_path))

    def reconnect_connection(self, connection_id: str) -> str:
        """Bring the link back whatever it is doing (see the async twin); return what was done."""
        return self._run(self._manager.reconnect_connection(connection_id))

    def record_activity(self, connection_id: str) -> None:
        """Feed the data watchdog of a connection."""
        self._call(self._manager.record_activity, connection_id)

    def check_config(self, source: str | PathLike[str] | Mapping[str, Any]) -> None:
        """Validate a config as `reload` would, changing nothing (raises `ConfigError`)."""
        self._call(self._manager.check_config, source)

    def reload(self, source: str | PathLike[str] | Mapping[str, Any]) -> ConfigDiff:
        """Apply a new config; only what changed is touched."""
        return self._run(self._manager.reload(source))

    def get_health_monitor(self) -> HealthMonitor:
        """Return the health monitor (its register_* methods are thread-safe)."""
        return self._manager.get_health_monitor()

    def get_connection_pool(self) -> Any:
        """Return the manager's pool (an async object: use it on `loop`)."""
        return self._call(self._manager.get_connection_pool)


async def _settle(turns: int = 10) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)
