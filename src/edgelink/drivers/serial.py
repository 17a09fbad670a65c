r"""The ``serial`` driver: request/response messages over a serial port (pyserial-asyncio).

Config keys (see docs/drivers/serial.md; the model `edgelink.drivers.configs.SerialConfig`):

- ``port`` (required): the device path (``/dev/ttyUSB0``, ``/dev/serial/by-id/...``)
- ``baudrate`` (9600), ``bytesize`` (8), ``parity`` (``N``), ``stopbits`` (1),
  ``rtscts`` / ``xonxoff`` (false), ``exclusive`` (true: lock the port)
- ``framing``: ``line`` (the default, with ``delimiter``, ``"\n"``) or
  ``length`` (with ``length_prefix``, ``u16be``); ``max_frame`` (4096 bytes);
  see `edgelink.drivers.framing` for the exact rules
- ``frame_timeout`` (1.0 s): how long the rest of a started message may take;
  ``null`` waits forever
- ``health_request`` (``PING``) / ``health_response`` (``PONG``),
  ``identity_request`` (none), ``encoding`` (``utf-8``)

One message out, one message back, matched in order: ``request(b)`` sends a
message and returns the answer's payload; ``read(tag)`` sends ``<tag>?``,
``write(tag, v)`` sends ``<tag>=<v>`` and expects ``OK`` — the line protocol
of the ``tcp`` driver. An answer starting with ``ERR`` is the device saying
no (`DeviceError`, the link stays). Messages the device sends on its own are
reported as data when they read ``tag=value``, other ones wait for
``receive_data()``.

Garbage — a message over ``max_frame``, a length prefix announcing one,
undecodable bytes in ``line`` framing, a message cut off for longer than
``frame_timeout`` — is a `ProtocolError`: the link is closed (the input
buffer flushed) and rebuilt. A port that vanishes (USB adapter unplugged) is
a `ConnectError`; the Supervisor reconnects once it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from edgelink.connection import Connection
from edgelink.drivers._futures import fail_all
from edgelink.drivers._serial_port import PortLink, close_link, open_link, serial_options
from edgelink.drivers.configs import SerialConfig
from edgelink.drivers.framing import FrameError, Framing
from edgelink.errors import ConfigError, ConnectError, DeviceError, ProtocolError

__all__ = ["SerialConnection"]

logger = logging.getLogger(__name__)

#: Unsolicited messages kept for receive_data(); older ones are dropped.
UNSOLICITED_LIMIT = 1000


def _text(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


class SerialConnection(Connection):
    """A device that answers messages on a serial port (RS232, RS485 adapter, USB CDC).

    Example:
        manager.add_connection(
            "bms", "serial", {"port": "/dev/ttyUSB0", "baudrate": 115200, "framing": "line"}
        )
        soc = await manager.execute_with_retry("bms", lambda c: c.read("soc"))
    """

    type_name = "serial"
    config_model = SerialConfig
    cfg: SerialConfig
    endpoint_fields = frozenset({"port", "baudrate"})

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        cfg = self.cfg

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(why, path=f"config.{key}", connection_id=connection_id)

        self.port: str = cfg.port
        self.baudrate: int = cfg.baudrate
        # The model checked the types; this checks that max_frame fits the prefix.
        self.framing = Framing.from_config(
            cfg.model_dump(
                include={"framing", "delimiter", "length_prefix", "max_frame"}, exclude_none=True
            ),
            connection_id=connection_id,
        )
        self.frame_timeout: float | None = cfg.frame_timeout
        self.encoding: str = cfg.encoding
        self.health_request = _text(cfg.health_request)
        self.health_response: str = cfg.health_response.strip()
        ident = cfg.identity_request
        self.identity_request = _text(ident) if ident else None
        for key, payload in (
            ("health_request", self.health_request),
            ("identity_request", self.identity_request),
        ):
            if payload is not None:
                try:
                    self.framing.encode(payload)
                except FrameError as exc:
                    raise bad(key, str(exc)) from None
        self._serial_kwargs: dict[str, Any] = {**serial_options(cfg), "baudrate": cfg.baudrate}

        self._link: PortLink | None = None
        self._decoder = self.framing.decoder()
        self._frame_timer: asyncio.TimerHandle | None = None
        self._pending: deque[asyncio.Future[bytes]] = deque()
        self._unsolicited: deque[bytes] = deque(maxlen=UNSOLICITED_LIMIT)
        self._unsolicited_waiter: asyncio.Future[None] | None = None
        self._request_lock = asyncio.Lock()
        self._closed_error: BaseException | None = None

    def endpoint_changed(self) -> None:
        """Take the device path and baud rate of the endpoint failover chose."""
        self.port = self.cfg.port
        self.baudrate = self.cfg.baudrate
        self._serial_kwargs["baudrate"] = self.cfg.baudrate

    async def connect(self) -> None:
        """Open the port (flushing stale input) and start receiving.

        Raises:
            ConnectError: if the port does not exist, is busy or cannot be configured.
        """
        await self.disconnect()
        link = PortLink(self._on_bytes, self._on_link_closed)
        self._decoder.reset()
        self._closed_error = None
        self._link = link
        try:
            await open_link(self.port, self._serial_kwargs, link, connection_id=self.connection_id)
        except BaseException:
            if self._link is link:
                self._link = None
            raise

    async def disconnect(self) -> None:
        """Close the port and release it; idempotent, never raises."""
        link, self._link = self._link, None
        self._cancel_frame_timer()
        self._fail_pending(ConnectError("connection closed", connection_id=self.connection_id))
        await close_link(link)

    def is_connected(self) -> bool:
        """Return True while the port is open and receiving."""
        link = self._link
        return (
            link is not None
            and link.transport is not None
            and not link.transport.is_closing()
            and self._closed_error is None
        )

    async def health_check(self) -> bool:
        """Send the health request; the answer must be the health response.

        Raises:
            ProtocolError: if the device answered something else (garbage).
        """
        answer = self._decode(await self.request(self.health_request))
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
        return self._decode(await self.request(self.identity_request))

    async def send_data(self, data: bytes) -> None:
        """Send raw bytes, unframed.

        Raises:
            ConnectError: if the port is not open.
        """
        link = self._link
        transport = link.transport if link is not None else None
        if link is None or transport is None or not self.is_connected():
            raise ConnectError(
                f"serial port {self.port} is not open",
                connection_id=self.connection_id,
                cause=self._closed_error,
            )
        transport.write(data)
        self.update_stats(packets_sent=1, bytes_sent=len(data))
        await link.drain()

    async def send_frame(self, payload: bytes) -> None:
        """Send one message, framed.

        Raises:
            ValueError: if the payload cannot be framed (too long, or it
                contains the line delimiter).
            ConnectError: if the port is not open.
        """
        await self.send_data(self._frame(payload))

    async def receive_data(self) -> bytes:
        """Return the payload of the next message the device sent on its own."""
        while not self._unsolicited:
            if not self.is_connected():
                raise ConnectError(
                    f"serial port {self.port} is not open",
                    connection_id=self.connection_id,
                    cause=self._closed_error,
                )
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._unsolicited_waiter = fut
            try:
                await fut
            finally:
                self._unsolicited_waiter = None
        return self._unsolicited.popleft()

    async def request(self, payload: bytes) -> bytes:
        """Send one message and return the payload of the answer.

        One request is on the wire at a time (a serial device, RS485 above
        all, answers one thing after the other). A request abandoned by its
        caller (timeout, cancel) keeps its place, so its late answer is
        discarded rather than handed to the next request.

        Raises:
            ValueError: if the payload cannot be framed.
            ConnectError: if the port is not open or closes before the answer.
            ProtocolError: if the device sent garbage instead of an answer.
        """
        frame = self._frame(payload)
        async with self._request_lock:
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self._pending.append(fut)
            try:
                await self.send_data(frame)
            except BaseException:
                fut.cancel()
                raise
            return await fut

    async def read(self, tag: str) -> str:
        """Send ``<tag>?`` and return the answer.

        Raises:
            ConfigError: if ``tag`` is not a valid tag of the line protocol.
            DeviceError: if the device answered ``ERR ...``.
        """
        self._check_tag(tag)
        answer = self._decode(await self.request(f"{tag}?".encode(self.encoding)))
        if answer.startswith("ERR"):
            raise DeviceError(answer, connection_id=self.connection_id)
        return answer

    async def write(self, tag: str, value: Any) -> None:
        """Send ``<tag>=<value>`` and expect ``OK``.

        Raises:
            ConfigError: if ``tag`` is not a valid tag of the line protocol.
            ValueError: if the value cannot be sent in one message.
            DeviceError: if the device answered anything but ``OK``.
        """
        self._check_tag(tag)
        answer = self._decode(await self.request(f"{tag}={value}".encode(self.encoding)))
        if answer.strip() != "OK":
            raise DeviceError(answer, connection_id=self.connection_id)

    def _frame(self, payload: bytes) -> bytes:
        try:
            return self.framing.encode(payload)
        except FrameError as exc:
            raise ValueError(
                f"[{self.connection_id}] cannot send {payload[:32]!r}: {exc}"
            ) from None

    def _decode(self, payload: bytes) -> str:
        try:
            return payload.decode(self.encoding)
        except UnicodeDecodeError as exc:
            error = ProtocolError(
                f"undecodable answer from device: {payload[:32]!r}",
                connection_id=self.connection_id,
                cause=exc,
            )
            # The stream cannot be trusted any more: drop the link.
            self._fail(error)
            raise error from exc

    def _check_tag(self, tag: str) -> None:
        if (
            not isinstance(tag, str)
            or not tag
            or "?" in tag
            or "=" in tag
            or any(ch.isspace() for ch in tag)
        ):
            raise ConfigError(
                f"tag {tag!r} is not valid: it must be non-empty, without spaces, '=' or '?'",
                path="tag",
                connection_id=self.connection_id,
            )

    def _on_bytes(self, link: PortLink, data: bytes) -> None:
        if link is not self._link or self._closed_error is not None:
            return
        try:
            frames = self._decoder.feed(data)
        except FrameError as exc:
            self.update_stats(bytes_received=len(data))
            self._fail(
                ProtocolError(f"garbage from device: {exc}", connection_id=self.connection_id)
            )
            return
        for frame in frames:
            self.update_stats(packets_received=1, bytes_received=len(frame))
            if self.framing.kind == "line":
                try:
                    frame.decode(self.encoding)
                except UnicodeDecodeError:
                    self._fail(
                        ProtocolError(
                            f"undecodable bytes from device: {frame[:32]!r}",
                            connection_id=self.connection_id,
                        )
                    )
                    return
            self._deliver(frame)
            if self._closed_error is not None:
                return
        if self._decoder.pending and self.frame_timeout is not None:
            if self._frame_timer is None:
                loop = asyncio.get_running_loop()
                self._frame_timer = loop.call_later(self.frame_timeout, self._on_frame_timeout)
        else:
            self._cancel_frame_timer()

    def _on_frame_timeout(self) -> None:
        self._frame_timer = None
        if self._decoder.pending:
            self._fail(
                ProtocolError(
                    f"partial message: {self._decoder.pending} bytes and no end within "
                    f"{self.frame_timeout:g} s",
                    connection_id=self.connection_id,
                )
            )

    def _cancel_frame_timer(self) -> None:
        timer, self._frame_timer = self._frame_timer, None
        if timer is not None:
            timer.cancel()

    def _deliver(self, payload: bytes) -> None:
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_result(payload)
                return
            # An abandoned request's late answer: drop it, keep the order.
            if fut.cancelled():
                return
        try:
            text = payload.decode(self.encoding)
            undecodable = None
        except UnicodeDecodeError as exc:
            text = payload.decode(self.encoding, "replace")
            undecodable = f"undecodable {self.encoding} in {payload[:32]!r}: {exc.reason}"
        tag, sep, value = text.partition("=")
        if sep and tag and not any(ch.isspace() or ch == "\ufffd" for ch in tag):
            if undecodable is None:
                self.report_data(tag, value)
            else:
                # The tag is legible, its value is not: say so, never invent a value.
                self.report_data(tag, None, quality="bad", reason=undecodable)
        else:
            self._unsolicited.append(payload)
            waiter = self._unsolicited_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        """The link cannot go on: close it, fail what waits, tell the supervisor."""
        if self._closed_error is not None:
            return
        self._closed_error = error
        self._cancel_frame_timer()
        link = self._link
        if link is not None and link.transport is not None and not link.transport.is_closing():
            link.transport.abort()
        self._fail_pending(error)
        self.connection_lost(error)

    def _on_link_closed(self, link: PortLink, exc: Exception | None) -> None:
        if link is not self._link or self._closed_error is not None:
            return
        partial = self._decoder.pending
        detail = f"{exc}" if exc is not None else "closed"
        error = ConnectError(
            f"serial port {self.port} went away ({detail})"
            + (f", {partial} bytes of a message lost" if partial else ""),
            connection_id=self.connection_id,
            cause=exc,
        )
        self._fail(error)

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending = self._pending, deque()
        fail_all(pending, error)
        waiter = self._unsolicited_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
