"""`DeviceRegistry`: devices kept in SQL, each row one connection of a `ConnectionManager`.

The table is the truth; the manager follows it. A session from
`DeviceRegistry.session` checks every device row it flushes (a bad comm key or
driver config is a `ConfigError` before anything is written) and, once its
transaction commits, brings the connections of exactly the rows it touched in
line: an added row adds (and starts) a connection, a changed one is rebuilt
with the new config, a disabled one stops, a deleted one is removed. Other
connections are not touched. `sync` does the same for every row (or the ids
given), for changes made outside the registry's sessions (bulk statements,
another process), and says what it did.

The registry never reconnects, retries or times anything itself: the
manager's supervisors do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike, fspath
from typing import Any, Final, TypeVar

from sqlalchemy import event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, UOWTransaction

from edgelink.config import ConnectionSpec, build_spec
from edgelink.devices.models import Base, Device, connection_id_of, spec_data
from edgelink.errors import ConfigError
from edgelink.lifecycle import Service
from edgelink.manager import ConnectionManager

__all__ = ["DeviceRegistry", "DeviceSession", "SyncReport", "database_url", "registry_of"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Keys in a session's ``info``: the registry, and device ids flushed or committed.
_REGISTRY: Final = "edgelink.device_registry"
_FLUSHED: Final = "edgelink.devices_flushed"
_PENDING: Final = "edgelink.device_syncs"
_DRIVERS: Final = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def database_url(url: str | PathLike[str] | None) -> str:
    """Return the async SQLAlchemy URL for ``url``.

    None is ``devices.db`` in the working folder; a path is a SQLite file;
    ``sqlite://`` and ``postgresql://`` URLs get their async drivers
    (aiosqlite, asyncpg); a URL naming a driver is kept as it is.

    Raises:
        ConfigError: for text that is no database URL.
    """
    if url is None:
        return "sqlite+aiosqlite:///devices.db"
    text = fspath(url)
    if "://" not in text:
        return f"sqlite+aiosqlite:///{text}"
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"not a database URL: {exc}", path="database_url") from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is not None:
        parsed = parsed.set(drivername=driver)
    return parsed.render_as_string(hide_password=False)


def registry_of(session: AsyncSession) -> DeviceRegistry | None:
    """Return the registry that made ``session`` (None for another session)."""
    registry = session.info.get(_REGISTRY)
    return registry if isinstance(registry, DeviceRegistry) else None


@dataclass(slots=True)
class SyncReport:
    """What a sync did, by device id (each list sorted)."""

    added: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    #: Rows whose connection could not be built, with why; their connection is left as it was.
    errors: dict[int, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed or self.errors)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-friendly data."""
        return {
            "added": list(self.added),
            "changed": list(self.changed),
            "removed": list(self.removed),
            "errors": {str(k): v for k, v in self.errors.items()},
        }


class _DeviceSyncSession(Session):
    """The sync half of `DeviceSession` (the ORM events hang on this class)."""


class DeviceSession(AsyncSession):
    """An `AsyncSession` whose committed device rows the registry's connections follow.

    ``await session.commit()`` returns after the connections of the rows it
    wrote were added, rebuilt, stopped or removed; a transaction committed by
    ``async with session.begin()`` is followed when the session closes.
    """

    sync_session_class = _DeviceSyncSession

    @property
    def registry(self) -> DeviceRegistry:
        """The registry this session belongs to."""
        registry = self.info.get(_REGISTRY)
        if not isinstance(registry, DeviceRegistry):
            raise RuntimeError("this session was not made by a DeviceRegistry")
        return registry

    async def commit(self) -> None:
        """Commit, then wait until the connections follow the rows written."""
        await super().commit()
        await self._await_syncs()

    async def close(self) -> None:
        """Close, after the connections followed what was committed."""
        try:
            await self._await_syncs()
        finally:
            await super().close()

    async def _await_syncs(self) -> None:
        pending: list[asyncio.Future[SyncReport]] = self.info.pop(_PENDING, [])
        for task in pending:
            await task


def _check_flush(session: Session, flush_context: UOWTransaction, instances: object) -> None:
    """Refuse a device row whose connection could not be built, before it is written."""
    registry = session.info.get(_REGISTRY)
    if registry is None:
        return
    for obj in (*session.new, *session.dirty):
        if isinstance(obj, Device):
            registry.check_device(obj)


def _note_flush(session: Session, flush_context: UOWTransaction) -> None:
    flushed: set[int] = session.info.setdefault(_FLUSHED, set())
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, Device) and obj.id is not None:
            flushed.add(obj.id)


def _on_commit(session: Session) -> None:
    registry = session.info.get(_REGISTRY)
    flushed: set[int] | None = session.info.pop(_FLUSHED, None)
    if registry is None or not flushed:
        return
    session.info.setdefault(_PENDING, []).append(registry._sync_soon(flushed))


def _on_rollback(session: Session) -> None:
    # What was flushed is gone with the transaction: nothing to follow.
    session.info.pop(_FLUSHED, None)


event.listen(_DeviceSyncSession, "before_flush", _check_flush)
event.listen(_DeviceSyncSession, "after_flush", _note_flush)
event.listen(_DeviceSyncSession, "after_commit", _on_commit)
event.listen(_DeviceSyncSession, "after_rollback", _on_rollback)


class DeviceRegistry(Service):
    """A SQL table of devices whose connections a `ConnectionManager` keeps.

    Example:
        async with DeviceRegistry("sqlite+aiosqlite:///devices.db") as registry:
            device = await registry.add_device(name="Door", ip_address="192.168.1.201",
                                               com_password="1234")
            status = registry.manager.get_status(registry.connection_id(device.id))

    Args:
        url: A database URL (``postgresql://user@host/db``, ``sqlite:///file``)
            or a SQLite file path; ``devices.db`` if None. See `database_url`.
        manager: The manager to keep the connections in (it may hold others);
            a new one, started and stopped with the registry, if None.
        engine_options: Passed to `create_async_engine` (``pool_size``, ``echo``...).
        create_tables: Create the table at `start` if it does not exist.

    Raises:
        ConfigError: for a URL that is no database URL.
    """

    def __init__(
        self,
        url: str | PathLike[str] | None = None,
        *,
        manager: ConnectionManager | None = None,
        engine_options: Mapping[str, Any] | None = None,
        create_tables: bool = True,
    ) -> None:
        self.url = database_url(url)
        self._own_manager = manager is None
        self.manager: ConnectionManager = manager if manager is not None else ConnectionManager()
        self._engine_options = dict(engine_options or {})
        self._create_tables = create_tables
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[DeviceSession] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Device ids whose connections this registry added to the manager.
        self._owned: set[int] = set()
        # One sync at a time: each reads the rows and applies them as one step,
        # so an older read never overwrites what a newer one applied.
        self._sync_lock = asyncio.Lock()
        # Per device: a sync rebuilding a connection and a service testing or
        # restarting it take turns.
        self._device_locks: dict[int, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[SyncReport]] = set()

    def __repr__(self) -> str:
        state = "running" if self._engine is not None else "stopped"
        url = make_url(self.url).render_as_string(hide_password=True)
        return f"<DeviceRegistry {url} {state} devices={len(self._owned)}>"

    @property
    def engine(self) -> AsyncEngine:
        """The engine (between `start` and `stop`).

        Raises:
            RuntimeError: if the registry is not started.
        """
        if self._engine is None:
            raise RuntimeError("the DeviceRegistry is not started: await start() first")
        return self._engine

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the registry and its manager run on (None before `start`)."""
        return self._loop

    async def start(self) -> None:
        """Open the database, create the table, start the manager and sync every row.

        Raises:
            ConfigError: if the database driver is not installed.
            OSError, sqlalchemy.exc.OperationalError: if the database cannot be reached.
        """
        if self._engine is not None:
            return
        self._loop = asyncio.get_running_loop()
        try:
            engine = create_async_engine(self.url, **self._engine_options)
        except (NoSuchModuleError, ModuleNotFoundError) as exc:
            raise ConfigError(
                f"no async driver for {make_url(self.url).drivername}: {exc};"
                " pip install 'edgelink[devices]'",
                path="database_url",
            ) from None
        try:
            if self._create_tables:
                async with engine.begin() as conn:
                    await conn.run_sync(Base.metadata.create_all)
            if self._own_manager:
                await self.manager.start()
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._sessions = async_sessionmaker(
            engine, class_=DeviceSession, expire_on_commit=False, info={_REGISTRY: self}
        )
        self._arm_leak_warning()
        try:
            await self.sync()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Remove the registry's connections (stop the manager if ours), close the database."""
        engine, self._engine = self._engine, None
        if engine is None:
            return
        self._disarm_leak_warning()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_manager:
            await self.manager.stop()
        else:
            for device_id in sorted(self._owned):
                with contextlib.suppress(KeyError):
                    await self.manager.remove_connection(connection_id_of(device_id))
        self._owned.clear()
        self._sessions = None
        await engine.dispose()

    def session(self) -> DeviceSession:
        """Return a new session (``async with registry.session() as db:``).

        Raises:
            RuntimeError: if the registry is not started.
        """
        if self._sessions is None:
            raise RuntimeError("the DeviceRegistry is not started: await start() first")
        return self._sessions()

    def connection_id(self, device_id: int) -> str:
        """The connection id of a device in the manager."""
        return connection_id_of(device_id)

    def device_ids(self) -> list[int]:
        """The ids of the devices that have a connection, sorted."""
        return sorted(self._owned)

    def device_lock(self, device_id: int) -> asyncio.Lock:
        """The lock a device's connection is rebuilt, tested or restarted under."""
        lock = self._device_locks.get(device_id)
        if lock is None:
            lock = self._device_locks[device_id] = asyncio.Lock()
        return lock

    def check_device(self, device: Device) -> None:
        """Check that a row's connection can be built (the registry does before writing it).

        Raises:
            ConfigError: naming the device and the field at fault.
        """
        data = spec_data(device)
        cid = connection_id_of(device.id) if device.id is not None else "device-new"
        try:
            self.manager.check_config({"connections": {cid: data}})
        except ConfigError as exc:
            name = f"devices[{device.id}]" if device.id is not None else "the new device"
            raise ConfigError(f"{name}: {exc}") from None

    async def run_on_loop(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``fn(*args)`` on the registry's loop, from any thread's loop.

        The manager's state lives on one loop; a caller on another (a worker
        thread with its own loop) gets the result without touching it.
        """
        loop = self._loop
        if loop is None or loop is asyncio.get_running_loop():
            return await fn(*args)
        if loop.is_closed():
            raise RuntimeError("the DeviceRegistry's event loop is closed")

        async def run() -> T:
            return await fn(*args)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))

    # -- rows -----------------------------------------------------------------

    async def add_device(self, **fields: Any) -> Device:
        """Insert a device (the `Device` columns as keywords); its connection is added.

        Raises:
            ConfigError: if its connection could not be built; nothing is written.
        """
        async with self.session() as db:
            device = Device(**fields)
            db.add(device)
            await db.commit()
            return device

    async def update_device(self, device_id: int, **changes: Any) -> Device:
        """Change columns of a device; its connection follows (others are not touched).

        Raises:
            KeyError: for an unknown device id.
            ConfigError: if the new connection could not be built; nothing is written.
        """
        async with self.session() as db:
            device = await db.get(Device, device_id)
            if device is None:
                raise KeyError(f"unknown device {device_id}")
            for key, value in changes.items():
                if key == "id" or not hasattr(Device, key):
                    raise ConfigError(f"{key!r} is no device column", path=f"devices[{device_id}]")
                setattr(device, key, value)
            await db.commit()
            return device

    async def delete_device(self, device_id: int) -> None:
        """Delete a device; its connection is removed.

        Raises:
            KeyError: for an unknown device id.
        """
        async with self.session() as db:
            device = await db.get(Device, device_id)
            if device is None:
                raise KeyError(f"unknown device {device_id}")
            await db.delete(device)
            await db.commit()

    async def get_device(self, device_id: int) -> Device | None:
        """Return a device row (detached), or None."""
        async with self.session() as db:
            return await db.get(Device, device_id)

    async def list_devices(self) -> list[Device]:
        """Return every device row (detached), by id."""
        async with self.session() as db:
            return list((await db.scalars(select(Device).order_by(Device.id))).all())

    # -- sync -----------------------------------------------------------------

    def _sync_soon(self, device_ids: Iterable[int]) -> asyncio.Task[SyncReport]:
        """Start a sync of ``device_ids`` (a session awaits it after its commit)."""
        ids = sorted(device_ids)
        task = asyncio.get_running_loop().create_task(
            self.sync(ids), name=f"edgelink.devices.sync[{','.join(map(str, ids))}]"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def sync(self, device_ids: Collection[int] | None = None) -> SyncReport:
        """Bring the manager in line with the rows (all, or those of ``device_ids``).

        A row without a connection gets one, a changed row's connection is
        rebuilt (a disabled one stops), a connection without a row is removed;
        connections already in line are not touched. A row whose connection
        cannot be built keeps its old connection and is named in the report.

        Raises:
            RuntimeError: if the registry is not started.
        """
        return await self.run_on_loop(self._sync, device_ids)

    async def _sync(self, device_ids: Collection[int] | None) -> SyncReport:
        report = SyncReport()
        async with self._sync_lock:
            rows = await self._load(device_ids)
            targets = set(rows) | (set(device_ids) if device_ids is not None else self._owned)
            for device_id in sorted(targets):
                async with self.device_lock(device_id):
                    await self._apply(device_id, rows.get(device_id), report)
        if report:
            logger.info("device registry sync: %s", report.as_dict())
        return report

    async def _load(self, device_ids: Collection[int] | None) -> dict[int, Device]:
        query = select(Device)
        if device_ids is not None:
            if not device_ids:
                return {}
            query = query.where(Device.id.in_(list(device_ids)))
        async with self.session() as db:
            return {d.id: d for d in (await db.scalars(query)).all()}

    async def _apply(self, device_id: int, row: Device | None, report: SyncReport) -> None:
        manager = self.manager
        cid = connection_id_of(device_id)
        if row is None:
            if device_id in self._owned:
                self._owned.discard(device_id)
                self._device_locks.pop(device_id, None)
                with contextlib.suppress(KeyError):
                    await manager.remove_connection(cid)
                report.removed.append(device_id)
            return
        try:
            data = spec_data(row)
            self.check_device(row)
        except ConfigError as exc:
            report.errors[device_id] = str(exc)
            logger.warning("device %d: connection left as it was: %s", device_id, exc)
            return
        if cid in manager:
            if device_id not in self._owned:
                report.errors[device_id] = f"connection id {cid!r} is taken by another connection"
                logger.warning("device %d: %s", device_id, report.errors[device_id])
                return
            if manager.get_spec(cid) == self._spec_of(cid, data):
                return
            await manager.remove_connection(cid)
            report.changed.append(device_id)
        else:
            report.added.append(device_id)
        manager.add_connection(
            cid,
            data["type"],
            data["config"],
            name=data["name"],
            enabled=data["enabled"],
            settings=data.get("settings"),
            poll=data.get("poll"),
        )
        self._owned.add(device_id)

    def _spec_of(self, cid: str, data: Mapping[str, Any]) -> ConnectionSpec:
        return build_spec(cid, data, self.manager.settings.connection_defaults())
