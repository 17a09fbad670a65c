"""Loopback peers for tests: `PingPongPeer`, the reference line-protocol device.

The protocol itself lives in `edgelink.sim.tcp` (`answer_request`,
`LineProtocol`); this module gives tests one device they can start, stop,
restart on the same port, hang, slow down and reset.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets

from edgelink.lifecycle import Service
from edgelink.sim.tcp import LineDevice, LineProtocol

__all__ = ["PingPongPeer"]

logger = logging.getLogger(__name__)


class PingPongPeer(Service):
    """A PING/PONG line-protocol device on loopback, for the ``tcp`` driver's tests.

    Speaks the protocol of `edgelink.sim.tcp`: ``PING`` -> ``PONG``,
    ``<tag>=<value>`` -> ``OK``, ``<tag>?`` -> the value or ``ERR unknown
    <tag>``, ``ID?`` -> `identity`, anything else -> ``ERR bad request``.
    Serves hundreds of concurrent clients without a task per client.

    Example:
        async with PingPongPeer(values={"temperature": "21.5"}) as peer:
            manager.add_connection("dev", "tcp", {"host": "127.0.0.1", "port": peer.port})
            peer.respond = False        # the device process hangs
            await peer.restart()        # it comes back, same port
            peer.identity = "rebooted"  # ...as a rebooted device

    Args:
        host: The address to listen on.
        port: The port, 0 for an ephemeral one (kept across `restart`).
        values: Initial values; the dict is used as is, so a test may hold it.
        identity: The answer to ``ID?``; a random hex boot id by default.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        values: dict[str, str] | None = None,
        identity: str | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self._values: dict[str, str] = {} if values is None else values
        self._device = LineDevice(
            secrets.token_hex(8) if identity is None else identity, self._values
        )
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return (
            f"<PingPongPeer {self.host}:{self._port} {state} "
            f"connections={self.connections} requests={self.requests}>"
        )

    @property
    def port(self) -> int:
        """The bound port (the configured one before the first `start`).

        Raises:
            RuntimeError: If the peer was never started and was given port 0.
        """
        if self._port == 0:
            raise RuntimeError("PingPongPeer has no port yet: call start() first")
        return self._port

    @property
    def values(self) -> dict[str, str]:
        """The device's values; tests may read and change them at any time."""
        return self._values

    @property
    def identity(self) -> str:
        """The answer to ``ID?``; set it to simulate a device that rebooted."""
        return self._device.identity

    @identity.setter
    def identity(self, value: str) -> None:
        self._device.identity = value

    @property
    def respond(self) -> bool:
        """False: requests are read and counted but never answered (a hung device)."""
        return self._device.respond

    @respond.setter
    def respond(self, value: bool) -> None:
        self._device.respond = value

    @property
    def response_delay(self) -> float:
        """Seconds between a request and its answer (answers keep their order)."""
        return self._device.response_delay

    @response_delay.setter
    def response_delay(self, value: float) -> None:
        self._device.response_delay = value

    @property
    def connections(self) -> int:
        """Open client links."""
        return len(self._device.links)

    @property
    def requests(self) -> int:
        """Request lines received so far, answered or not."""
        return self._device.requests

    def push(self, lines: list[str]) -> int:
        """Send ``lines`` unasked to every client link, at once (a device reporting by itself).

        ``tag=value`` lines are what the ``tcp`` driver reports as data: many
        of them flood it (spam protection). Returns the links written to.
        """
        data = "".join(f"{line}\n" for line in lines).encode()
        links = list(self._device.links)
        for link in links:
            link.push(data)
        return len(links)

    def is_running(self) -> bool:
        """Return whether the peer is listening."""
        return self._server is not None

    async def start(self) -> None:
        """Listen on the port (the same one again after a `stop`). No-op if running.

        Raises:
            OSError: If the port cannot be bound.
        """
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        # reuse_address: after stop() the port's closed links sit in TIME_WAIT,
        # and restart() must be able to bind it again at once.
        server = await loop.create_server(
            functools.partial(LineProtocol, self._device),
            self.host,
            self._port,
            reuse_address=True,
            backlog=1024,
        )
        self._server = server
        self._device.accepting = True
        self._port = server.sockets[0].getsockname()[1]
        logger.debug("ping-pong peer listening on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        """Stop listening and close every client link. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._device.accepting = False
        self._device.close_links()
        # Closed transports release their sockets on the next loop turn; give
        # them that turn so a caller counting file descriptors sees them gone.
        for _ in range(3):
            if not self._device.links:
                break
            await asyncio.sleep(0)

    async def restart(self) -> None:
        """Stop, then listen again on the same port; values and identity are kept.

        Raises:
            OSError: If the port cannot be bound again.
        """
        await self.stop()
        await self.start()
