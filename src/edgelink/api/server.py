"""`ApiServer`: the admin API of a running gateway, served over HTTP by uvicorn.

The gateway does not start its API: the command line does (``edgelink run``,
``edgelink demo``), after `Gateway.start`. The server registers its own stop
with `Gateway.stop_with`, so the gateway's stop (SIGTERM) closes the API first,
within the one stop budget; during panic the API stays up.

Example:
    await gateway.start()
    async with serve(gateway, port=0) as server:
        print(server.url)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from edgelink.api.app import close_app, create_app
from edgelink.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from edgelink.service.gateway import Gateway

__all__ = ["ApiServer", "Mount", "serve"]

logger = logging.getLogger(__name__)

#: Connections the listening socket queues before uvicorn accepts them.
BACKLOG = 128

#: Another face served on the API's app and port (the web UI): called with the
#: app and the gateway before the server starts, it returns its own close
#: (awaited after the server stopped) or None. The API never imports it: the
#: command line hands it over.
Mount = Callable[["FastAPI", "Gateway"], Awaitable[Callable[[], Awaitable[None]] | None]]


class ApiServer:
    """The HTTP server of one gateway's admin API.

    Args:
        gateway: A started gateway.
        port: Override ``api.port`` of ``edgelink.json`` (0 = any free port).
        mounts: Faces to serve beside the API (`Mount`), e.g. `edgelink.ui.mount_ui`.
    """

    def __init__(
        self, gateway: Gateway, *, port: int | None = None, mounts: Sequence[Mount] = ()
    ) -> None:
        self.gateway = gateway
        self._port = port
        self._mounts = tuple(mounts)
        self._closes: list[Callable[[], Awaitable[None]]] = []
        self.address: tuple[str, int] | None = None
        self._app: FastAPI | None = None
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` while serving.

        Raises:
            RuntimeError: when not serving.
        """
        if self.address is None:
            raise RuntimeError("the API server is not serving")
        return f"http://{self.address[0]}:{self.address[1]}"

    def __repr__(self) -> str:
        where = self.url if self.address is not None else "stopped"
        return f"<ApiServer {where}>"

    async def start(self) -> None:
        """Bind, then serve until `stop` (or the gateway's stop).

        Raises:
            ConfigError: naming ``api.port`` when the address cannot be bound.
            RuntimeError: when uvicorn ends during start-up.
        """
        import uvicorn

        gateway = self.gateway
        api = gateway.settings.api
        port = api.port if self._port is None else self._port
        sock = socket.socket(socket.AF_INET6 if ":" in api.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((api.host, port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot listen on {api.host}:{port}: {exc.strerror or exc}",
                file=str(gateway.folder.service if gateway.folder else None),
                path="api.port",
            ) from exc
        sock.listen(BACKLOG)
        sock.setblocking(False)
        self._socket = sock
        self._app = app = create_app(gateway)
        try:
            for mount in self._mounts:
                close = await mount(app, gateway)
                if close is not None:
                    self._closes.append(close)
        except BaseException:
            await self.stop()
            raise
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            # No handlers of uvicorn's own: its records reach ours, which redact.
            log_config=None,
            lifespan="off",
            ws_ping_interval=20.0,
            ws_max_size=api.max_body_bytes,
        )
        server = self._server = _make_server(config)
        task = self._task = asyncio.get_running_loop().create_task(
            server.serve(sockets=[sock]), name="edgelink.api.server"
        )
        gateway.stop_with(self.stop)
        # uvicorn has no start-up future to await; its flag flips within a few ms.
        while not server.started:
            if task.done():
                await self.stop()
                task.result()
                raise RuntimeError("the API server ended during start-up")
            await asyncio.sleep(0.01)
        self.address = gateway.api_address = sock.getsockname()[:2]
        logger.info("API on %s", self.url)

    async def stop(self) -> None:
        """Let uvicorn close its connections and listener, then release all (idempotent)."""
        server, self._server = self._server, None
        task, self._task = self._task, None
        try:
            if server is not None and task is not None:
                server.should_exit = True
                await asyncio.gather(task, return_exceptions=True)
        finally:
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            sock, self._socket = self._socket, None
            if sock is not None:
                sock.close()
            app, self._app = self._app, None
            if app is not None:
                close_app(app)
            while self._closes:
                await self._closes.pop()()
            if self.address is not None and self.gateway.api_address == self.address:
                self.gateway.api_address = None
            self.address = None


@contextlib.asynccontextmanager
async def serve(
    gateway: Gateway, *, port: int | None = None, mounts: Sequence[Mount] = ()
) -> AsyncIterator[ApiServer]:
    """Serve the API of a started ``gateway`` (and ``mounts``) for the ``async with`` block.

    Raises:
        ConfigError: naming ``api.port`` when the address cannot be bound.
    """
    server = ApiServer(gateway, port=port, mounts=mounts)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _make_server(config: Any) -> Any:
    """Return a uvicorn server without its signal handlers: the command line owns the signals."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)
