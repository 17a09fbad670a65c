"""`FaultProxy`: a TCP proxy that injects network and peer faults between a driver and its peer.

The proxy listens on loopback, connects every accepted client (a "link") to
the upstream peer and forwards bytes both ways. Its `FaultMode` and a few
one-shot actions break that on demand, for real, on real sockets:

- ``REFUSE``: accept and reset at once; `FaultProxy.stop_listening` makes the
  port refuse outright, `FaultProxy.start_listening` brings it back on the
  same port.
- ``HALF_OPEN``: accept and then never forward nor close (a peer that hangs,
  a NAT that forgot the flow).
- ``STALL``: existing and new links stop forwarding but stay open.
- ``CORRUPT``: bytes going downstream (to the client) are replaced by garbage.
- `FaultProxy.drop_after`: pass ``n`` more bytes, then reset every link (a
  frame cut in half); `FaultProxy.drop_all`: reset every link now.
- `FaultProxy.set_delay`: latency added to every forwarded chunk.

Every link is a named task owned by the proxy; `FaultProxy.close` resets the
links, awaits those tasks and closes every socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
import socket
import struct
from typing import Final, Literal

from edgelink.lifecycle import Service

__all__ = ["DEFAULT_GARBAGE", "Direction", "FaultMode", "FaultProxy"]

logger = logging.getLogger(__name__)

#: What a chunk going downstream becomes in ``CORRUPT`` mode, by default: not
#: valid UTF-8, and newline-terminated so a line reader sees a whole bad line.
DEFAULT_GARBAGE: Final = b"\x00\xffGARBAGE\n"

#: Which way bytes flow: ``upstream`` is client to peer, ``downstream`` peer to client.
Direction = Literal["downstream", "upstream", "both"]

_UPSTREAM: Final = "upstream"
_DOWNSTREAM: Final = "downstream"
_CHUNK: Final = 65536
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


class FaultMode(enum.StrEnum):
    """How `FaultProxy` treats links; see the module docstring."""

    PASS = "pass"  # noqa: S105 (a mode, not a password)
    REFUSE = "refuse"
    HALF_OPEN = "half_open"
    STALL = "stall"
    CORRUPT = "corrupt"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket abruptly: SO_LINGER 0 turns the close into a RST."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


class _Link:
    __slots__ = ("client", "client_reader", "id", "name", "task", "upstream")

    def __init__(
        self,
        link_id: int,
        name: str,
        client_reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
    ) -> None:
        self.id = link_id
        self.name = name
        self.client_reader = client_reader
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def writers(self) -> list[asyncio.StreamWriter]:
        return [self.client] if self.upstream is None else [self.client, self.upstream]

    def reset(self) -> None:
        for writer in self.writers():
            _reset(writer)

    async def close(self) -> None:
        """Close both sockets (FIN, or RST if data is stuck) and wait until they are gone."""
        writers = self.writers()
        for writer in writers:
            if writer.transport.get_write_buffer_size():
                _reset(writer)
            else:
                writer.close()
        for writer in writers:
            # A link that ended in a reset reports it here; it is already handled.
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class FaultProxy(Service):
    """A loopback TCP proxy to one upstream peer, with faults switched on demand.

    Modes can be switched at any time: ``STALL``, ``CORRUPT`` and the delay
    act on existing links at their next chunk; ``REFUSE`` and ``HALF_OPEN``
    decide what happens to links accepted from then on. When the upstream
    peer cannot be reached the accepted client is reset.

    Example:
        async with PingPongPeer() as peer, FaultProxy("127.0.0.1", peer.port) as proxy:
            manager.add_connection("dev", "tcp", {"host": "127.0.0.1", "port": proxy.port})
            proxy.mode = FaultMode.STALL      # the health check times out
            proxy.mode = FaultMode.PASS
            proxy.drop_after(3)               # the next answer arrives cut: b"PON", then RST
            await proxy.stop_listening()      # reconnects are refused...
            await proxy.start_listening()     # ...until the port is back

    Args:
        upstream_host: The peer's address.
        upstream_port: The peer's port.
        host: The address the proxy listens on.
        port: The port to listen on, 0 for an ephemeral one (kept across
            `stop_listening` / `start_listening`).
        mode: The initial mode.
        corrupt_with: What each downstream chunk becomes in ``CORRUPT`` mode;
            None flips every bit of the chunk instead (same length).
        connect_timeout: Seconds to reach the upstream peer for a new link.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: FaultMode = FaultMode.PASS,
        corrupt_with: bytes | None = DEFAULT_GARBAGE,
        connect_timeout: float = 5.0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.corrupt_with = corrupt_with
        self.connect_timeout = connect_timeout
        self._port = port
        self._mode = FaultMode(mode)
        # Set while data may flow; pumps wait on it before every write.
        self._flowing = asyncio.Event()
        if self._mode is not FaultMode.STALL:
            self._flowing.set()
        self._delay = 0.0
        self._drop_remaining: int | None = None
        self._drop_directions: frozenset[str] = frozenset()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._link_ids = itertools.count(1)
        self._accepted = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._closed = False

    def __repr__(self) -> str:
        listening = "listening" if self.is_listening() else "not-listening"
        return (
            f"<FaultProxy {self.host}:{self._port} -> {self.upstream_host}:{self.upstream_port} "
            f"{listening} mode={self._mode} links={len(self._links)} accepted={self._accepted}>"
        )

    @property
    def port(self) -> int:
        """The port the proxy listens on.

        Raises:
            RuntimeError: If the proxy was never started and was given port 0.
        """
        if self._port == 0:
            raise RuntimeError("FaultProxy has no port yet: call start() first")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` for clients to connect to."""
        return (self.host, self.port)

    @property
    def mode(self) -> FaultMode:
        """The current `FaultMode`; assign to switch it at any time."""
        return self._mode

    @mode.setter
    def mode(self, mode: FaultMode) -> None:
        mode = FaultMode(mode)
        if mode is not self._mode:
            logger.debug("%r: mode %s -> %s", self, self._mode, mode)
        self._mode = mode
        if mode is FaultMode.STALL:
            self._flowing.clear()
        else:
            self._flowing.set()

    @property
    def delay(self) -> float:
        """Seconds added before every forwarded chunk (see `set_delay`)."""
        return self._delay

    @property
    def active_links(self) -> int:
        """Links open now, half-open ones included."""
        return len(self._links)

    @property
    def accepted(self) -> int:
        """Client connections accepted so far, refused ones included."""
        return self._accepted

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded from clients to the peer."""
        return self._bytes_up

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded from the peer to clients (after corruption)."""
        return self._bytes_down

    def is_listening(self) -> bool:
        """Return whether the proxy accepts connections."""
        return self._server is not None

    def set_delay(self, seconds: float) -> None:
        """Delay every forwarded chunk by ``seconds``, in both directions.

        A request/response round trip through the proxy thus grows by about
        twice ``seconds``. Existing links are affected from their next chunk.

        Raises:
            ValueError: If ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"delay must not be negative, got {seconds}")
        self._delay = float(seconds)

    def drop_after(self, n_bytes: int | None, direction: Direction = "downstream") -> None:
        """Reset every link once ``n_bytes`` more bytes have passed in ``direction``.

        Exactly the first ``n_bytes`` are forwarded (counted over all links,
        and over both directions for ``"both"``); the chunk that crosses the
        budget is cut there and every link is reset (RST). One-shot: links
        made afterwards pass normally. ``None`` disarms a pending drop.

        Raises:
            ValueError: If ``n_bytes`` is negative or ``direction`` unknown.
        """
        if n_bytes is None:
            self._drop_remaining = None
            self._drop_directions = frozenset()
            return
        if n_bytes < 0:
            raise ValueError(f"n_bytes must not be negative, got {n_bytes}")
        if direction == "both":
            directions = frozenset((_UPSTREAM, _DOWNSTREAM))
        elif direction in (_UPSTREAM, _DOWNSTREAM):
            directions = frozenset((direction,))
        else:
            raise ValueError(f"direction must be downstream, upstream or both, not {direction!r}")
        self._drop_remaining = n_bytes
        self._drop_directions = directions

    async def start(self) -> None:
        """Start listening (see `start_listening`)."""
        await self.start_listening()

    async def start_listening(self) -> None:
        """Listen (again) on the proxy's port; a no-op while listening.

        Raises:
            OSError: If the port cannot be bound.
            RuntimeError: If the proxy was closed.
        """
        if self._closed:
            raise RuntimeError("FaultProxy is closed")
        if self._server is not None:
            return
        # reuse_address lets the same port be bound again at once, while
        # earlier links still linger in TIME_WAIT.
        self._server = await asyncio.start_server(
            self._accept, self.host, self._port, reuse_address=True, backlog=1024
        )
        self._port = self._server.sockets[0].getsockname()[1]
        logger.debug("%r: listening", self)

    async def stop_listening(self) -> None:
        """Close the listening socket: connecting is refused; existing links stay."""
        server, self._server = self._server, None
        if server is not None:
            # Server.close() closes the listening socket before returning.
            server.close()
            logger.debug("%r: stopped listening", self)

    async def drop_all(self) -> None:
        """Reset every current link (RST both ways) and wait until they are gone.

        The proxy keeps listening.
        """
        tasks = [link.task for link in self._links if link.task is not None]
        self._reset_all()
        if tasks:
            await asyncio.wait(tasks)

    async def stop(self) -> None:
        """Stop listening, reset every link and release every socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.stop_listening()
        await self.drop_all()

    async def close(self) -> None:
        """Stop the proxy for good: the same as `stop` (and `aclose`)."""
        await self.stop()

    def _reset_all(self) -> None:
        # Reset first, so the RST goes out even for a link task that never ran;
        # then cancel, because a pump may wait on a stall or a delay.
        for link in list(self._links):
            link.reset()
            if link.task is not None:
                link.task.cancel()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        mode = self._mode
        if mode is FaultMode.REFUSE or self._closed:
            _reset(writer)
            return
        link_id = next(self._link_ids)
        link = _Link(link_id, f"fault_proxy[{self._port}].link{link_id}", reader, writer)
        self._links.add(link)
        runner = self._run_half_open(link) if mode is FaultMode.HALF_OPEN else self._run_link(link)
        link.task = asyncio.get_running_loop().create_task(runner, name=link.name)
        link.task.add_done_callback(functools.partial(self._link_done, link))

    def _link_done(self, link: _Link, task: asyncio.Task[None]) -> None:
        self._links.discard(link)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("%r: link %d failed", self, link.id, exc_info=exc)

    async def _run_half_open(self, link: _Link) -> None:
        # Never read, never write, never close: the link ends only when the
        # client resets it or the proxy cuts it.
        try:
            with contextlib.suppress(OSError):
                await link.client.wait_closed()
        finally:
            await link.close()

    async def _run_link(self, link: _Link) -> None:
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_reader, up_writer = await asyncio.open_connection(
                        self.upstream_host, self.upstream_port
                    )
            except (OSError, TimeoutError) as exc:
                logger.debug("%r: link %d: upstream unreachable: %s", self, link.id, exc)
                _reset(link.client)
                return
            link.upstream = up_writer
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    self._pump(link, _UPSTREAM, link.client_reader, up_writer),
                    name=f"{link.name}.up",
                )
                group.create_task(
                    self._pump(link, _DOWNSTREAM, up_reader, link.client),
                    name=f"{link.name}.down",
                )
        finally:
            await link.close()

    async def _pump(
        self,
        link: _Link,
        direction: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    # Pass the half-close on; the other direction keeps going.
                    if not writer.is_closing() and writer.can_write_eof():
                        writer.write_eof()
                    return
                if self._delay > 0:
                    await asyncio.sleep(self._delay)
                await self._flowing.wait()
                if direction == _DOWNSTREAM and self._mode is FaultMode.CORRUPT:
                    data = self._corrupt(data)
                data, cut = self._spend_drop_budget(direction, data)
                if data:
                    writer.write(data)
                    if direction == _UPSTREAM:
                        self._bytes_up += len(data)
                    else:
                        self._bytes_down += len(data)
                    await writer.drain()
                if cut:
                    logger.debug("%r: drop_after reached on link %d", self, link.id)
                    self._reset_all()
                    return
        except OSError as exc:
            # One side reset or broke: the other side gets a reset too, as it
            # would from a router in between.
            logger.debug("%r: link %d %s: %s", self, link.id, direction, exc)
            link.reset()

    def _corrupt(self, data: bytes) -> bytes:
        if self.corrupt_with is None:
            return bytes(b ^ 0xFF for b in data)
        return self.corrupt_with

    def _spend_drop_budget(self, direction: str, data: bytes) -> tuple[bytes, bool]:
        remaining = self._drop_remaining
        if remaining is None or direction not in self._drop_directions:
            return data, False
        if len(data) < remaining:
            self._drop_remaining = remaining - len(data)
            return data, False
        self._drop_remaining = None
        self._drop_directions = frozenset()
        return data[:remaining], True
