"""`DeviceConnectionService`: the ZKTeco document's service, on the registry's manager.

The document's service keeps a dict of open connections per service object;
here every device of the registry already has a supervised connection in the
`ConnectionManager`, so the service is a thin view on it, and any number of
service objects (one per request, as ``DeviceConnectionService(db)`` is made
in a FastAPI dependency) share the same links:

- `DeviceConnectionService.get_connection` returns a `DeviceConnection`
  handle when a real request to the device (its driver's health check: the
  ZK driver reads the device clock) passes; a stale link is dropped and the
  supervisor's reconnect awaited; None if the device cannot be reached.
- `DeviceConnectionService.disconnect_device` stops one connection (it stays
  stopped until the next `get_connection`); `disconnect_all` stops them all.
- Operations on a handle go through `ConnectionManager.execute_with_retry`:
  the manager's timeouts, retries and reconnects, none of the service's own.

Thread safety: the manager lives on the registry's event loop. Every
coroutine here may be awaited from another thread's loop as well; the work is
handed to the registry's loop and the caller awaits the result. Concurrent
calls for one device take turns (a per-device lock), calls for different
devices run side by side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from edgelink.devices.models import Device
from edgelink.devices.registry import DeviceRegistry, registry_of
from edgelink.events import Event
from edgelink.state import ConnectionState

__all__ = ["DeviceConnection", "DeviceConnectionService"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Events that end a wait for a link with no: an attempt failed, or the supervisor gave up.
_FAILURES: Final = ("reconnect_failed", "error", "suspended")
#: States in which the supervisor is not trying to connect by itself.
_IDLE: Final = frozenset(
    {ConnectionState.DISCONNECTED, ConnectionState.ERROR, ConnectionState.SUSPENDED}
)


class DeviceConnection:
    """A handle on one device's supervised connection (what `get_connection` returns).

    Driver operations are available by name and run through
    ``execute_with_retry``: ``await conn.device_info()``, ``await
    conn.get_attendance()``. The handle stays valid across reconnects.

    Example:
        conn = await service.get_connection(device)
        if conn is not None:
            info = await conn.device_info()
    """

    __slots__ = ("_registry", "connection_id", "device_id")

    def __init__(self, registry: DeviceRegistry, device_id: int) -> None:
        self._registry = registry
        self.device_id = device_id
        self.connection_id = registry.connection_id(device_id)

    def __repr__(self) -> str:
        state = self._registry.manager.get_state(self.connection_id) if self.exists() else "gone"
        return f"<DeviceConnection device={self.device_id} {self.connection_id} {state}>"

    def exists(self) -> bool:
        """True while the device has a connection in the manager."""
        return self.connection_id in self._registry.manager

    @property
    def driver(self) -> Any:
        """The driver object (a `ZktecoConnection` for ``zkteco``), or None if gone."""
        return self._registry.manager.get_connection(self.connection_id)

    def is_connected(self) -> bool:
        """True while the link is up."""
        return self.exists() and (
            self._registry.manager.get_state(self.connection_id) is ConnectionState.CONNECTED
        )

    def get_status(self) -> dict[str, Any]:
        """The connection's status dict (state, reason, health, stats...)."""
        return self._registry.manager.get_status(self.connection_id)

    async def call(
        self,
        op: Callable[[Any], Awaitable[T] | T],
        *,
        retries: int | None = None,
        timeout: float | None = None,
    ) -> T:
        """Run ``op(driver)`` with the manager's retries (`ConnectionManager.execute_with_retry`).

        Raises:
            ConnectionLostError: when the link does not come back in time.
            DeviceError: when the device says no (never retried).
            KeyError: when the device was deleted from the registry.
        """
        manager = self._registry.manager

        async def run() -> T:
            if not self.exists():
                raise KeyError(f"device {self.device_id} is no longer in the registry")
            return await manager.execute_with_retry(
                self.connection_id, op, retries=retries, timeout=timeout
            )

        return await self._registry.run_on_loop(run)

    async def read(self, tag: str) -> Any:
        """Read a tag of the driver (``time``, ``serial_number``, ``users``...)."""
        return await self.call(lambda c: c.read(tag))

    async def write(self, tag: str, value: Any) -> None:
        """Write a tag of the driver (``time``, ``enabled``)."""
        await self.call(lambda c: c.write(tag, value))

    async def connect(self) -> bool:
        """Bring the link up (`DeviceConnectionService.get_connection`); True if it is up.

        The document's ``if await conn.connect():``. The link itself stays the
        supervisor's: this never opens a second one beside it.
        """
        service = DeviceConnectionService(self._registry)
        return await service.get_connection(self.device_id) is not None

    async def disconnect(self) -> None:
        """Stop this device's connection (`DeviceConnectionService.disconnect_device`)."""
        await DeviceConnectionService(self._registry).disconnect_device(self.device_id)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name.startswith("_"):
            raise AttributeError(name)
        driver = self.driver
        if driver is None or not callable(getattr(driver, name, None)):
            kind = type(driver).__name__ if driver is not None else "no driver"
            raise AttributeError(f"{kind} of device {self.device_id} has no operation {name!r}")

        async def operation(*args: Any, **kwargs: Any) -> Any:
            return await self.call(lambda c: getattr(c, name)(*args, **kwargs))

        operation.__name__ = name
        return operation


class DeviceConnectionService:
    """Connections to the registry's devices, for request handlers and other services.

    Example:
        async with registry.session() as db:
            service = DeviceConnectionService(db)
            conn = await service.get_connection(device)

    Args:
        db: A session from `DeviceRegistry.session` (it names its registry),
            or the registry itself.
        timeout: How long `get_connection` waits for a link to come up;
            the connection's ``connect_timeout`` setting if None.

    Raises:
        TypeError: for a session that no `DeviceRegistry` made.
    """

    def __init__(self, db: AsyncSession | DeviceRegistry, *, timeout: float | None = None) -> None:
        registry: DeviceRegistry | None
        session: AsyncSession | None
        if isinstance(db, DeviceRegistry):
            registry, session = db, None
        else:
            registry, session = registry_of(db), db
        if registry is None:
            raise TypeError(
                "DeviceConnectionService needs a session from DeviceRegistry.session()"
                " (or the registry): this one belongs to no registry"
            )
        self.registry = registry
        self.db = session
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<DeviceConnectionService {self.registry!r}>"

    async def get_connection(self, device: Device | int) -> DeviceConnection | None:
        """Return a handle on a live connection to ``device``, or None if it cannot be reached.

        A connected link is reused if a real request to the device passes (the
        driver's health check); otherwise it is dropped and the supervisor's
        reconnect is awaited. A stopped, failed or suspended connection is
        started again. A disabled device gets None.

        Raises:
            KeyError: for a device that is not in the registry (not committed?).
        """
        device_id = device if isinstance(device, int) else device.id
        return await self.registry.run_on_loop(self._get_connection, device_id)

    async def _get_connection(self, device_id: int) -> DeviceConnection | None:
        registry = self.registry
        manager = registry.manager
        cid = registry.connection_id(device_id)
        if cid not in manager:
            report = await registry.sync([device_id])
            if device_id in report.errors:
                logger.warning(
                    "device %d has no connection: %s", device_id, report.errors[device_id]
                )
                return None
            if cid not in manager:
                raise KeyError(f"device {device_id} is not in the registry (not committed yet?)")
        async with registry.device_lock(device_id):
            if cid not in manager:  # deleted while we waited
                return None
            if not manager.get_spec(cid).enabled:
                logger.info("device %d is disabled: no connection", device_id)
                return None
            sup = manager.get_supervisor(cid)
            generation = sup.link_generation
            state = sup.state
            if state is ConnectionState.CONNECTED:
                if await manager.get_health_monitor().check_now(cid):
                    return DeviceConnection(registry, device_id)
                # Stale: drop the link (if the failed check has not already) and
                # let the supervisor build the next one at once.
                logger.info("device %d: stale link, replacing it", device_id)
                await manager.safe_reconnect(cid, fast_path=True)
            elif state in _IDLE or state is ConnectionState.RECONNECTING:
                # Started if stopped, resumed if failed, retried now if waiting out a backoff.
                await manager.reconnect_connection(cid)
            if await self._await_link(cid, generation + 1):
                return DeviceConnection(registry, device_id)
            logger.warning(
                "device %d not reachable: %s", device_id, manager.get_status(cid)["last_error"]
            )
            return None

    async def _await_link(self, cid: str, generation: int) -> bool:
        """Wait for link number ``generation`` (True), a failed attempt or the timeout (False)."""
        manager = self.registry.manager
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[Any] = loop.create_future()
        # The bus delivers events after they happen: one of an attempt that
        # ended before this wait began must not end it.
        since = manager.clock.time()

        def on_event(ev: Event) -> None:
            if ev.connection_id == cid and ev.ts >= since and not failed.done():
                failed.set_result(ev.type)

        unsubscribe = [manager.on_event(kind, on_event) for kind in _FAILURES]
        sup = manager.get_supervisor(cid)
        link: asyncio.Future[Any] = loop.create_task(
            sup.wait_for_generation(generation), name=f"edgelink.devices[{cid}].await_link"
        )
        timeout = self.timeout if self.timeout is not None else sup.settings.connect_timeout
        try:
            await asyncio.wait({link, failed}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            for off in unsubscribe:
                off()
            link.cancel()
            failed.cancel()
            await asyncio.gather(link, return_exceptions=True)
        return sup.state is ConnectionState.CONNECTED and sup.link_generation >= generation

    async def test_connection(self, device_id: int) -> bool:
        """Send a real request to the device now (its health check); True if it answered."""

        async def check() -> bool:
            cid = self.registry.connection_id(device_id)
            if cid not in self.registry.manager:
                return False
            return await self.registry.manager.get_health_monitor().check_now(cid)

        return await self.registry.run_on_loop(check)

    async def disconnect_device(self, device_id: int) -> None:
        """Stop a device's connection; it stays stopped until the next `get_connection`.

        A device without a connection is ignored, as in the document.
        """
        await self.registry.run_on_loop(self._disconnect, device_id)

    async def _disconnect(self, device_id: int) -> None:
        cid = self.registry.connection_id(device_id)
        async with self.registry.device_lock(device_id):
            if cid in self.registry.manager:
                await self.registry.manager.stop_connection(cid)

    async def disconnect_all(self) -> None:
        """Stop every device connection of the registry (side by side)."""

        async def stop_all() -> None:
            await asyncio.gather(*(self._disconnect(d) for d in self.registry.device_ids()))

        await self.registry.run_on_loop(stop_all)

    def get_status(self, device_id: int) -> dict[str, Any]:
        """The status dict of a device's connection, with ``device_id``.

        Raises:
            KeyError: for a device without a connection.
        """
        status = self.registry.manager.get_status(self.registry.connection_id(device_id))
        return {"device_id": device_id, **status}

    def status(self) -> dict[int, dict[str, Any]]:
        """The status of every device connection, by device id."""
        return {d: self.get_status(d) for d in self.registry.device_ids()}
