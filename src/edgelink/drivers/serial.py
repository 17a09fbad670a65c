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
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from edgelink.connection import Connection
from edgelink.drivers._futures import fail_all
from edgelink.drivers.configs import SerialConfig
from edgelink.drivers.framing import FrameError, Framing
from edgelink.errors import ConfigError, ConnectError, DeviceError, ProtocolError

try:
    import serial
    import serial_asyncio
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the serial driver needs pyserial-asyncio: pip install 'edgelink[serial]'"
    ) from exc

__all__ = ["SerialConnection"]

logger = logging.getLogger(__name__)

#: Unsolicited messages kept for receive_data(); older ones are dropped.
UNSOLICITED_LIMIT = 1000

#: How long disconnect() waits for the transport to release the port.
CLOSE_TIMEOUT = 2.0

_PARITIES = {
    "N": serial.PARITY_NONE,
    "E": serial.PARITY_EVEN,
    "O": serial.PARITY_ODD,
    "M": serial.PARITY_MARK,
    "S": serial.PARITY_SPACE,
    "NONE": serial.PARITY_NONE,
    "EVEN": serial.PARITY_EVEN,
    "ODD": serial.PARITY_ODD,
    "MARK": serial.PARITY_MARK,
    "SPACE": serial.PARITY_SPACE,
}
_STOPBITS = {1: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2: serial.STOPBITS_TWO}


class _Link(asyncio.Protocol):
    """The asyncio protocol of one open port: hands bytes and the end to the driver."""

    def __init__(self, driver: SerialConnection) -> None:
        self._driver = driver
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._resume: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._driver._on_bytes(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake_writers()
        self._driver._on_link_closed(self, exc)

    def pause_writing(self) -> None:
        if self._resume is None:
            self._resume = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writers()

    def _wake_writers(self) -> None:
        fut, self._resume = self._resume, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        while self._resume is not None:
            await asyncio.shield(self._resume)


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
        self._serial_kwargs: dict[str, Any] = {
            "baudrate": cfg.baudrate,
            "bytesize": cfg.bytesize,
            "parity": _PARITIES[cfg.parity],
            "stopbits": _STOPBITS[cfg.stopbits],
            "rtscts": cfg.rtscts,
            "xonxoff": cfg.xonxoff,
            "exclusive": cfg.exclusive,
        }

        self._link: _Link | None = None
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
        ser = await self._open_port()
        loop = asyncio.get_running_loop()
        link = _Link(self)
        self._decoder.reset()
        self._closed_error = None
        self._link = link
        # connection_for_serial schedules connection_made; the transport takes
        # over the Serial object and closes it when the link ends.
        await serial_asyncio.connection_for_serial(loop, lambda: link, ser)
        await asyncio.sleep(0)

    async def _open_port(self) -> serial.Serial:
        # Opening runs in a thread: USB adapters may take their time to open
        # and configure. A cancelled connect closes the port once it is open.
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, self._open_blocking)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:

            def close_late(done: asyncio.Future[serial.Serial]) -> None:
                if not done.cancelled() and done.exception() is None:
                    done.result().close()

            fut.add_done_callback(close_late)
            raise

    def _open_blocking(self) -> serial.Serial:
        try:
            ser = serial.Serial(self.port, **self._serial_kwargs)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ConnectError(
                f"cannot open serial port {self.port}: {exc}",
                connection_id=self.connection_id,
                cause=exc,
            ) from exc
        try:
            # Bytes that arrived while nobody listened belong to no request.
            ser.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            ser.close()
            raise ConnectError(
                f"cannot use serial port {self.port}: {exc}",
                connection_id=self.connection_id,
                cause=exc,
            ) from exc
        return ser

    async def disconnect(self) -> None:
        """Close the port and release it; idempotent, never raises."""
        link, self._link = self._link, None
        self._cancel_frame_timer()
        self._fail_pending(ConnectError("connection closed", connection_id=self.connection_id))
        if link is None:
            return
        transport = link.transport
        if transport is not None and not transport.is_closing():
            transport.abort()
        if transport is not None:
            # The port is only released (and its exclusive lock dropped) when
            # the transport's connection_lost has run.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.shield(link.closed)

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

    def _on_bytes(self, link: _Link, data: bytes) -> None:
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

    def _on_link_closed(self, link: _Link, exc: Exception | None) -> None:
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
