"""FastAPI dependency injection for the device registry (the document's ``api/dependencies.py``).

The app's lifespan runs one `DeviceRegistry` (its database and the
connection manager keeping every device's link); request handlers get a
database session and a `DeviceConnectionService` through ``Depends``:

    from fastapi import Depends, FastAPI
    from edgelink.integrations.fastapi import device_lifespan, get_db, get_device_connection_service

    app = FastAPI(lifespan=device_lifespan("postgresql://edge@db/devices"))

    @app.get("/devices/{device_id}/info")
    async def info(device_id: int,
                   service: DeviceConnectionService = Depends(get_device_connection_service)):
        conn = await service.get_connection(device_id)
        return await conn.device_info() if conn else None

The session is a `DeviceSession`: rows a handler commits are followed by the
connections before ``commit()`` returns. A service object per request costs
nothing: every one works on the same registry and the same links.

Needs the ``service`` and ``devices`` extras.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from os import PathLike
from typing import Annotated, Any, Final

try:
    from fastapi import Depends, FastAPI, Request
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"edgelink.integrations.fastapi needs FastAPI: pip install 'edgelink[service]' ({exc})"
    ) from exc

from edgelink.devices import DeviceConnectionService, DeviceRegistry, DeviceSession
from edgelink.manager import ConnectionManager

__all__ = [
    "STATE_KEY",
    "device_lifespan",
    "get_db",
    "get_device_connection_service",
    "get_device_registry",
]

#: The name of the registry in ``app.state`` and in the lifespan state.
STATE_KEY: Final = "device_registry"

Lifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[dict[str, Any]]]


def device_lifespan(
    url: str | PathLike[str] | None = None,
    *,
    manager: ConnectionManager | None = None,
    registry: DeviceRegistry | None = None,
    engine_options: Mapping[str, Any] | None = None,
) -> Lifespan:
    """Return a lifespan that starts a `DeviceRegistry` with the app and stops it after.

    Args:
        url: The database (see `edgelink.devices.database_url`); ignored if
            ``registry`` is given.
        manager: The manager to keep the connections in; the registry's own if None.
        registry: A registry to run instead of making one.
        engine_options: Passed to SQLAlchemy's engine.

    The registry is ``app.state.device_registry`` while the app runs. To run
    it inside a lifespan of your own: ``async with device_lifespan(url)(app):``.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        running = registry or DeviceRegistry(url, manager=manager, engine_options=engine_options)
        async with running:
            setattr(app.state, STATE_KEY, running)
            try:
                yield {STATE_KEY: running}
            finally:
                with contextlib.suppress(AttributeError):
                    delattr(app.state, STATE_KEY)

    return lifespan


def get_device_registry(request: Request) -> DeviceRegistry:
    """Provide the app's registry (``Depends(get_device_registry)``).

    Raises:
        RuntimeError: if the app runs without `device_lifespan`.
    """
    registry = getattr(request.app.state, STATE_KEY, None)
    if not isinstance(registry, DeviceRegistry):
        raise RuntimeError(
            "no device registry: create the app with FastAPI(lifespan=device_lifespan(...))"
        )
    return registry


async def get_db(
    registry: Annotated[DeviceRegistry, Depends(get_device_registry)],
) -> AsyncIterator[DeviceSession]:
    """Provide a database session for one request, closed after it (``Depends(get_db)``)."""
    async with registry.session() as db:
        yield db


def get_device_connection_service(
    db: Annotated[DeviceSession, Depends(get_db)],
) -> DeviceConnectionService:
    """Provide the `DeviceConnectionService` (``Depends(get_device_connection_service)``)."""
    return DeviceConnectionService(db)
