"""The asyncmiele guide's `ConnectionManager`, its client, health monitor and pool, on the engine.

One engine underneath: each device is one supervised edgelink connection of
an `edgelink.ConnectionManager` (``self.engine``), which connects, health-checks,
reconnects with exponential backoff and jitter, and suspends after its
attempts. This layer only translates:

- the guide's arguments to engine settings: ``connection_timeout`` is the
  connect and request timeout, ``health_check_interval`` the engine's,
  ``retry_delay`` the first reconnect delay (doubling from there, the
  "exponential backoff for retries"), ``retry_count`` the retries of
  `ConnectionManager.execute_with_retry` (and ``max_connections`` the most
  devices at once);
- ``execute_with_retry(device_id, operation)``: the engine's, with a
  zero-argument ``operation``; the engine's outcomes in the guide's names;
- states: `ConnectionState` holds the engine's states and health values
  (``UNHEALTHY`` among them) under one enum.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from os import PathLike
from typing import Any

from edgelink.compat.asyncmiele.profile import DeviceProfile, load_guide_config
from edgelink.errors import (
    ConfigError,
    ConnectionHealthError,
    ConnectionLostError,
    ConnectionPoolExhaustedError,
    ReconnectionError,
)
from edgelink.events import Unsubscribe
from edgelink.lifecycle import Service
from edgelink.manager import ConnectionManager as EngineManager
from edgelink.state import ConnectionState as EngineState
from edgelink.state import Health

__all__ = ["ConnectionManager", "ConnectionState", "DeviceClient", "DevicePool", "HealthMonitor"]


#: The engine's states in which it stopped trying.
_GIVEN_UP = (EngineState.SUSPENDED, EngineState.ERROR)


class ConnectionState(enum.StrEnum):
    """A device's state as the guide's callbacks get it: the engine's states and health."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    SLEEPING = "sleeping"
    ERROR = "error"
    SUSPENDED = "suspended"
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


StateCallback = Callable[[str, ConnectionState], Awaitable[None] | None]


class HealthMonitor:
    """The guide's health monitor: state callbacks and custom checks of the engine's monitor."""

    def __init__(self, engine: EngineManager) -> None:
        self._monitor = engine.get_health_monitor()

    def register_state_callback(self, device_id: str, callback: StateCallback) -> Unsubscribe:
        """Call ``callback(device_id, new_state)`` on every state and health change.

        ``new_state`` is a `ConnectionState`: ``CONNECTED``, ``RECONNECTING``,
        ``SUSPENDED``... for the link, ``HEALTHY``, ``DEGRADED``, ``UNHEALTHY``
        for its health checks. ``device_id`` ``"*"`` means every device.
        """
        if asyncio.iscoroutinefunction(callback):

            async def relay_async(cid: str, new: Any) -> None:
                await callback(cid, ConnectionState(str(new)))

            return self._monitor.register_state_callback(device_id, relay_async)

        def relay(cid: str, new: Any) -> None:
            callback(cid, ConnectionState(str(new)))

        return self._monitor.register_state_callback(device_id, relay)

    def register_health_check(
        self, device_id: str, check: Callable[[], Awaitable[bool]]
    ) -> Unsubscribe:
        """Add ``check`` (async, returns bool) to the device's periodic health checks."""
        return self._monitor.register_health_check(device_id, check)

    async def check_now(self, device_id: str) -> bool:
        """Run the device's health checks now; return whether they passed."""
        return await self._monitor.check_now(device_id)


class DeviceClient:
    """What `ConnectionManager.get_client` returns: one device's live connection.

    Each call is one attempt on the current link (wrap it in
    ``execute_with_retry`` for retries); the driver's own methods are
    reachable as attributes (``client.request(...)`` on a ``tcp`` device).
    """

    def __init__(self, owner: ConnectionManager, profile: DeviceProfile) -> None:
        self._owner = owner
        self.profile = profile
        self.device_id = profile.device_id

    @property
    def connection(self) -> Any:
        """The edgelink driver object of the device's connection."""
        return self._owner.engine.get_connection(self.device_id)

    async def _on_link(
        self, call: Callable[[Any], Awaitable[Any]], timeout: float | None = None
    ) -> Any:
        """One attempt through the connection's driver adapter, under the request timeout."""
        sup = self._owner.engine.get_supervisor(self.device_id)
        async with asyncio.timeout(timeout or sup.settings.request_timeout):
            return await call(sup.adapter)

    async def read(self, tag: str) -> Any:
        """Read one tag from the device."""
        return await self._on_link(lambda adapter: adapter.call(lambda conn: conn.read(tag)))

    async def write(self, tag: str, value: Any) -> None:
        """Write one tag to the device."""
        await self._on_link(lambda adapter: adapter.call(lambda conn: conn.write(tag, value)))

    async def get_device_ident(self, device_id: str | None = None) -> str | None:
        """Ask the device who it is (the driver's identity: changes when it resets)."""
        self._check_id(device_id)
        identity: str | None = await self._on_link(lambda adapter: adapter.identity())
        return identity

    async def get_device_state(self, device_id: str | None = None) -> dict[str, Any]:
        """The device's state, asked of the device now.

        ``values``: the profile's ``state_tags``, each read once (without
        state tags, the driver's health check proves the device answers);
        ``state`` and ``health``: the connection's.
        """
        self._check_id(device_id)
        sup = self._owner.engine.get_supervisor(self.device_id)
        values = {tag: await self.read(tag) for tag in self.profile.state_tags}
        if not self.profile.state_tags and not await self._on_link(
            lambda adapter: adapter.health_check(), sup.settings.health_check_timeout
        ):
            raise ConnectionHealthError(
                "the device failed its health check", connection_id=self.device_id
            )
        return {
            "device_id": self.device_id,
            "state": str(sup.state),
            "health": str(sup.health),
            "values": values,
        }

    def _check_id(self, device_id: str | None) -> None:
        if device_id is not None and device_id != self.device_id:
            raise ConfigError(
                f"this client is device {self.device_id!r}'s, not {device_id!r}: "
                f"get_client({device_id!r}) for that one"
            )

    def __getattr__(self, name: str) -> Any:
        connection = self.connection
        if connection is None:
            raise AttributeError(name)
        return getattr(connection, name)

    def __repr__(self) -> str:
        return f"<DeviceClient {self.device_id} {self.profile.type}>"


class DevicePool:
    """The guide's connection pool: the devices the manager holds a connection for.

    ``len(pool)``: devices with a connection (at most ``max_connections``);
    ``active_connections``: those running an operation now;
    ``idle_connections``: connected ones that are not.
    """

    def __init__(self, owner: ConnectionManager) -> None:
        self._owner = owner

    def __len__(self) -> int:
        return len(self._owner._clients)

    @property
    def max_size(self) -> int:
        """The most devices at once (``max_connections``)."""
        return self._owner.max_connections

    @property
    def active_connections(self) -> int:
        """Devices running an operation now."""
        return sum(1 for n in self._owner._busy.values() if n > 0)

    @property
    def idle_connections(self) -> int:
        """Connected devices running no operation."""
        engine = self._owner.engine
        return sum(
            1
            for cid in self._owner._clients
            if self._owner._busy.get(cid, 0) == 0 and engine.get_state(cid) is EngineState.CONNECTED
        )

    def stats(self) -> dict[str, int]:
        """The three figures and the bound, as a dict."""
        return {
            "size": len(self),
            "max_size": self.max_size,
            "active": self.active_connections,
            "idle": self.idle_connections,
        }

    def __repr__(self) -> str:
        return f"<DevicePool {self.stats()}>"


class ConnectionManager(Service):
    """The guide's manager of device connections, on one edgelink `ConnectionManager`.

    Args:
        max_connections: Most devices with a connection at once; a new device
            beyond it takes the place of the least recently used one that runs
            no operation, else `ConnectionPoolExhaustedError`.
        connection_timeout: Seconds to connect, per request, and to wait for
            a link in ``get_client`` and between retries.
        health_check_interval: Seconds between health checks of each device.
        retry_count: Retries of ``execute_with_retry`` after a failure of the link.
        retry_delay: Seconds before the first reconnect; each further one
            doubles it (with jitter), up to ``8 x retry_delay``.
        engine_settings: Further edgelink settings (``reconnect_max_attempts``,
            ``health_check_failures``, ...) for every device.
        clock: The engine's clock (`edgelink.testing.ManualClock` in tests).

    Raises:
        ConfigError: for a setting out of range, naming it.
    """

    def __init__(
        self,
        max_connections: int = 10,
        connection_timeout: float = 10.0,
        health_check_interval: float = 60.0,
        retry_count: int = 3,
        retry_delay: float = 2.0,
        *,
        engine_settings: Mapping[str, Any] | None = None,
        clock: Any = None,
    ) -> None:
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigError(
                f"must be at least 1, got {max_connections!r}", path="max_connections"
            )
        if not isinstance(retry_count, int) or retry_count < 0:
            raise ConfigError(f"must be 0 or more, got {retry_count!r}", path="retry_count")
        for name, value in (
            ("connection_timeout", connection_timeout),
            ("health_check_interval", health_check_interval),
            ("retry_delay", retry_delay),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"must be a number above 0, got {value!r}", path=name)
        self.max_connections = max_connections
        self.connection_timeout = float(connection_timeout)
        self.health_check_interval = float(health_check_interval)
        self.retry_count = retry_count
        self.retry_delay = float(retry_delay)
        settings: dict[str, Any] = {
            "connect_timeout": self.connection_timeout,
            "request_timeout": self.connection_timeout,
            "health_check_timeout": self.connection_timeout,
            "health_check_interval": self.health_check_interval,
            "reconnect_initial_delay": self.retry_delay,
            "reconnect_multiplier": 2.0,
            "reconnect_max_delay": 8 * self.retry_delay,
            "max_connections": max_connections,
            **(engine_settings or {}),
        }
        self.engine = EngineManager(clock=clock, **settings)
        self._clients: OrderedDict[str, DeviceClient] = OrderedDict()
        self._busy: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._monitor = HealthMonitor(self.engine)
        self._pool = DevicePool(self)

    @classmethod
    def from_config(
        cls, source: str | PathLike[str] | Mapping[str, Any], **overrides: Any
    ) -> tuple[ConnectionManager, dict[str, DeviceProfile]]:
        """The manager and the device profiles of the guide's config file.

        Returns:
            The manager (``connection_settings``, then ``overrides``) and the
            profiles by device id.

        Raises:
            ConfigError: naming the file and the JSON path of what is wrong.
        """
        config = load_guide_config(source if isinstance(source, Mapping) else str(source))
        manager = cls(**{**config.connection_settings, **overrides})
        return manager, {p.device_id: p for p in config.devices}

    async def start(self) -> None:
        """Start the engine (devices added before start connect now)."""
        await self.engine.start()

    async def stop(self) -> None:
        """Stop every device's connection and the engine."""
        await self.engine.stop()

    async def get_client(
        self, device_id: str, profile: DeviceProfile | None = None
    ) -> DeviceClient:
        """The client of a device, once its connection is up.

        The first call for a device (with its ``profile``) adds its connection;
        a later one returns the same client (a new, different profile replaces
        the connection).

        Raises:
            ConnectionPoolExhaustedError: ``max_connections`` devices are busy.
            ConnectionLostError: the device did not connect within ``connection_timeout``.
            ReconnectionError: the engine gave up on it (suspended, or an error
                retrying cannot help, such as a refused login).
            ConfigError: no profile for a new device, or a bad one.
        """
        async with self._lock:
            client = self._clients.get(device_id)
            if client is not None and profile is not None and profile != client.profile:
                await self._drop(device_id)
                client = None
            if client is None:
                if profile is None:
                    raise ConfigError(f"device {device_id!r} is new: give its DeviceProfile")
                if profile.device_id != device_id:
                    raise ConfigError(
                        f"the profile is device {profile.device_id!r}'s, not {device_id!r}"
                    )
                await self._make_room()
                self.engine.add_connection(
                    device_id,
                    profile.type,
                    profile.connection_config(),
                    settings=dict(profile.settings),
                )
                client = DeviceClient(self, profile)
                self._clients[device_id] = client
            self._clients.move_to_end(device_id)
        await self._wait_up(device_id)
        return client

    async def _make_room(self) -> None:
        if len(self._clients) < self.max_connections:
            return
        for cid in self._clients:  # least recently used first
            if self._busy.get(cid, 0) == 0:
                await self._drop(cid)
                return
        raise ConnectionPoolExhaustedError(
            f"all {self.max_connections} connections run an operation (max_connections)"
        )

    async def _drop(self, device_id: str) -> None:
        self._clients.pop(device_id, None)
        self._busy.pop(device_id, None)
        await self.engine.remove_connection(device_id)

    async def remove_client(self, device_id: str) -> None:
        """Close a device's connection and forget it (its profile too)."""
        async with self._lock:
            if device_id in self._clients:
                await self._drop(device_id)

    async def _wait_up(self, device_id: str, newer_than: int | None = None) -> None:
        sup = self.engine.get_supervisor(device_id)
        if newer_than is None and sup.state is EngineState.CONNECTED:
            return
        if sup.state in _GIVEN_UP:
            raise self._given_up(device_id)
        try:
            await self.engine.wait_for_link(
                device_id, self.connection_timeout, newer_than=newer_than
            )
        except ConnectionLostError as exc:
            if sup.state in _GIVEN_UP:
                raise self._given_up(device_id, exc) from exc
            raise

    async def reconnect(self, device_id: str) -> DeviceClient:
        """Drop the device's link and wait for a new one (resets are handled on it).

        Raises:
            ConnectionLostError, ReconnectionError: as `get_client`.
            KeyError: for a device without a client.
        """
        client = self._clients[device_id]
        generation = self.engine.get_supervisor(device_id).link_generation
        await self.engine.reconnect_connection(device_id)
        await self._wait_up(device_id, newer_than=generation)
        return client

    def _given_up(self, device_id: str, cause: BaseException | None = None) -> ReconnectionError:
        sup = self.engine.get_supervisor(device_id)
        return ReconnectionError(
            f"gave up reconnecting: {sup.state} ({sup.reason}); last error: {sup.last_error}",
            connection_id=device_id,
            cause=cause,
        )

    async def execute_with_retry(self, device_id: str, operation: Callable[[], Any]) -> Any:
        """Run ``operation()`` and on a failure of the link retry on the next link.

        ``operation`` takes no arguments and returns a value or an awaitable
        (``lambda: client.get_device_state(device_id)``); a blocking one runs
        in a worker thread for a blocking driver. Retried ``retry_count``
        times after failures of the link; between tries the engine
        reconnects with its backoff (``retry_delay``, doubling). A device's
        "no" (`edgelink.errors.DeviceError`) and errors of the operation
        itself propagate at once.

        Raises:
            ConnectionHealthError: the device's last health check failed (its
                link is degraded or lost by it): not run.
            ReconnectionError: the engine gave up reconnecting.
            ConnectionLostError: the retries are used up, or no new link
                came within ``connection_timeout``.
            KeyError: for a device without a client (``get_client`` first).
        """
        if device_id not in self._clients:
            raise KeyError(f"no client for device {device_id!r}: get_client() first")
        sup = self.engine.get_supervisor(device_id)
        if sup.state in _GIVEN_UP:
            raise self._given_up(device_id)
        if sup.state is EngineState.CONNECTED and (
            sup.health is Health.UNHEALTHY or sup.health_failures
        ):
            raise ConnectionHealthError(
                f"health check failing ({sup.health_failures} in a row): "
                f"{sup.last_error or 'the device answers badly'}",
                connection_id=device_id,
            )
        self._busy[device_id] = self._busy.get(device_id, 0) + 1
        try:
            return await self.engine.execute_with_retry(
                device_id,
                lambda _conn: operation(),
                retries=self.retry_count,
                timeout=self.connection_timeout,
            )
        except ConnectionLostError as exc:
            if sup.state in _GIVEN_UP:
                raise self._given_up(device_id, exc) from exc
            raise
        finally:
            with contextlib.suppress(KeyError):
                self._busy[device_id] -= 1

    def get_health_monitor(self) -> HealthMonitor:
        """The health monitor: state callbacks and custom health checks."""
        return self._monitor

    def get_connection_pool(self) -> DevicePool:
        """The pool of device connections (size, active, idle)."""
        return self._pool

    def get_status(self, device_id: str | None = None) -> dict[str, Any]:
        """The engine's status of one device, or of all by id."""
        return self.engine.get_status(device_id)

    def __repr__(self) -> str:
        return f"<asyncmiele ConnectionManager devices={len(self._clients)} {self._pool.stats()}>"
