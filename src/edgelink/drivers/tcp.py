r"""The ``tcp`` driver: a line protocol over TCP (PING/PONG health, ``tag=value`` writes).

Config keys:

- ``host`` (required), ``port`` (required, 1..65535)
- ``health_request`` (``"PING\n"``) and ``health_response`` (``"PONG"``)
- ``identity_request``: a request whose answer identifies the device's boot
  (e.g. ``"ID?\n"``); a changed answer after a reconnect is a device reset
- ``encoding`` (``"utf-8"``), ``max_line`` (65536 bytes)
- ``keepalive_idle`` / ``keepalive_interval`` / ``keepalive_count`` (10/5/3 s),
  ``tcp_user_timeout`` (15 s)

One line out, one line back: ``request(b)`` sends a line and returns the answer
line; ``read(tag)`` sends ``<tag>?``, ``write(tag, v)`` sends ``<tag>=<v>``
and expects ``OK``. An answer starting with ``ERR`` is the device saying no
(`DeviceError`, the link stays). Lines the device sends on its own
(``tag=value``) are reported as data; other unsolicited lines wait for
``receive_data()``. A reader task owns the socket's read side, so a peer that
closes or resets is noticed at once, not at the next health check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from edgelink.connection import Connection
from edgelink.drivers._socket import tune_tcp_socket
from edgelink.errors import ConfigError, ConnectError, DeviceError, ProtocolError

__all__ = ["TCPConnection"]

logger = logging.getLogger(__name__)

#: Unsolicited lines kept for receive_data(); older ones are dropped.
UNSOLICITED_LIMIT = 1000


def _line(value: Any, key: str) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    else:
        raise ConfigError(f"must be a string, got {type(value).__name__}", path=f"config.{key}")
    return data if data.endswith(b"\n") else data + b"\n"


class TCPConnection(Connection):
    """A line-protocol TCP device, e.g. the PING/PONG simulator of `edgelink.sim`.

    Example:
        manager.add_connection("dev1", "tcp", {"host": "127.0.0.1", "port": 9000})
        answer = await manager.execute_with_retry("dev1", lambda c: c.read("temperature"))
    """

    type_name = "tcp"

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        cfg = self.config
        host = cfg.get("host")
        if not isinstance(host, str) or not host:
            raise ConfigError(
                "host is required (a non-empty string)",
                path="config.host",
                connection_id=connection_id,
            )
        port = cfg.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(
                f"port must be an integer 1..65535, got {port!r}",
                path="config.port",
                connection_id=connection_id,
            )
        self.host: str = host
        self.port: int = port
        self.health_request = _line(cfg.get("health_request", "PING\n"), "health_request")
        self.health_response: str = str(cfg.get("health_response", "PONG")).strip()
        ident = cfg.get("identity_request")
        self.identity_request = _line(ident, "identity_request") if ident else None
        self.encoding: str = cfg.get("encoding", "utf-8")
        self.max_line: int = int(cfg.get("max_line", 65536))
        self._tune = {
            "keepalive_idle": int(cfg.get("keepalive_idle", 10)),
            "keepalive_interval": int(cfg.get("keepalive_interval", 5)),
            "keepalive_count": int(cfg.get("keepalive_count", 3)),
            "user_timeout": float(cfg.get("tcp_user_timeout", 15.0)),
        }
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: deque[asyncio.Future[bytes]] = deque()
        self._unsolicited: deque[bytes] = deque(maxlen=UNSOLICITED_LIMIT)
        self._unsolicited_waiter: asyncio.Future[None] | None = None
        self._write_lock = asyncio.Lock()
        self._closed_error: BaseException | None = None

    # ------------------------------------------------------------------ link

    async def connect(self) -> None:
        """Open the TCP connection and start the reader."""
        await self.disconnect()
        try:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, limit=self.max_line
            )
        except OSError as exc:
            raise ConnectError(
                f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}",
                connection_id=self.connection_id,
                cause=exc,
            ) from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            tune_tcp_socket(sock, **self._tune)  # type: ignore[arg-type]
        self._reader, self._writer = reader, writer
        self._closed_error = None
        self._reader_task = asyncio.get_running_loop().create_task(
            self._run_reader(reader), name=f"edgelink[{self.connection_id}].reader"
        )

    async def disconnect(self) -> None:
        """Close the connection; idempotent, never raises."""
        task, self._reader_task = self._reader_task, None
        writer, self._writer = self._writer, None
        self._reader = None
        self._fail_pending(ConnectError("connection closed", connection_id=self.connection_id))
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def is_connected(self) -> bool:
        """Return True while the socket is open and the reader runs."""
        return (
            self._writer is not None
            and not self._writer.is_closing()
            and self._reader_task is not None
            and not self._reader_task.done()
        )

    async def health_check(self) -> bool:
        """Send the health request; the answer must be the health response.

        Raises:
            ProtocolError: if the device answered something else (garbage).
        """
        answer = (await self.request(self.health_request)).decode(self.encoding, "replace")
        if answer.strip() != self.health_response:
            raise ProtocolError(
                f"health check: expected {self.health_response!r}, got {answer[:64]!r}",
                connection_id=self.connection_id,
            )
        return True

    async def identity(self) -> str | None:
        """Ask the device who it is (``identity_request``), if configured."""
        if self.identity_request is None:
            return None
        return (await self.request(self.identity_request)).decode(self.encoding, "replace")

    # ------------------------------------------------------------ data plane

    async def send_data(self, data: bytes) -> None:
        """Send raw bytes.

        Raises:
            ConnectError: if the link is down or the write fails.
        """
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectError(
                "not connected", connection_id=self.connection_id, cause=self._closed_error
            )
        async with self._write_lock:
            try:
                writer.write(data)
                await writer.drain()
            except OSError as exc:
                raise ConnectError(
                    f"write failed: {exc}", connection_id=self.connection_id, cause=exc
                ) from exc
        self.update_stats(packets_sent=1, bytes_sent=len(data))

    async def receive_data(self) -> bytes:
        """Return the next line the device sent on its own (without the newline)."""
        while not self._unsolicited:
            if not self.is_connected():
                raise ConnectError(
                    "not connected", connection_id=self.connection_id, cause=self._closed_error
                )
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._unsolicited_waiter = fut
            try:
                await fut
            finally:
                self._unsolicited_waiter = None
        return self._unsolicited.popleft()

    async def request(self, data: bytes) -> bytes:
        """Send one line and return the answer line (without the newline).

        Answers are matched to requests in order. A request abandoned by its
        caller (timeout, cancel) keeps its place, so its late answer is
        discarded rather than handed to the next request.

        Raises:
            ConnectError: if the link is down or goes down before the answer.
            ProtocolError: if the answer is not a valid line.
        """
        if not data.endswith(b"\n"):
            data += b"\n"
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending.append(fut)
        try:
            await self.send_data(data)
        except BaseException:
            fut.cancel()
            raise
        return await fut

    async def read(self, tag: str) -> str:
        """Send ``<tag>?`` and return the answer.

        Raises:
            DeviceError: if the device answered ``ERR ...``.
        """
        answer = (await self.request(f"{tag}?\n".encode(self.encoding))).decode(self.encoding)
        if answer.startswith("ERR"):
            raise DeviceError(answer, connection_id=self.connection_id)
        return answer

    async def write(self, tag: str, value: Any) -> None:
        """Send ``<tag>=<value>`` and expect ``OK``.

        Raises:
            DeviceError: if the device answered anything but ``OK``.
        """
        answer = (await self.request(f"{tag}={value}\n".encode(self.encoding))).decode(
            self.encoding
        )
        if answer.strip() != "OK":
            raise DeviceError(answer, connection_id=self.connection_id)

    # ---------------------------------------------------------------- reader

    async def _run_reader(self, reader: asyncio.StreamReader) -> None:
        error: BaseException
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    error = ConnectError(
                        "peer closed the connection"
                        + (f" mid-line ({len(exc.partial)} bytes)" if exc.partial else ""),
                        connection_id=self.connection_id,
                    )
                    if exc.partial:
                        error = ProtocolError(str(error.message), connection_id=self.connection_id)
                    break
                except asyncio.LimitOverrunError:
                    error = ProtocolError(
                        f"line longer than {self.max_line} bytes",
                        connection_id=self.connection_id,
                    )
                    break
                except OSError as exc:
                    error = ConnectError(
                        f"read failed: {exc}", connection_id=self.connection_id, cause=exc
                    )
                    break
                self.update_stats(packets_received=1, bytes_received=len(line))
                body = line.rstrip(b"\r\n")
                try:
                    body.decode(self.encoding)
                except UnicodeDecodeError:
                    error = ProtocolError(
                        f"undecodable bytes from device: {body[:32]!r}",
                        connection_id=self.connection_id,
                    )
                    break
                self._deliver(body)
        except asyncio.CancelledError:
            raise
        self._closed_error = error
        self._fail_pending(error)
        self.connection_lost(error)

    def _deliver(self, body: bytes) -> None:
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_result(body)
                return
            # An abandoned request's late answer: drop it, keep the order.
            if fut.cancelled():
                return
        text = body.decode(self.encoding)
        tag, sep, value = text.partition("=")
        if sep and tag and " " not in tag:
            self.report_data(tag, value)
        else:
            self._unsolicited.append(body)
            waiter = self._unsolicited_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending = self._pending, deque()
        for fut in pending:
            if not fut.done():
                fut.set_exception(error)
                # Nobody may be waiting any more; don't log "never retrieved".
                fut.exception()
        waiter = self._unsolicited_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
