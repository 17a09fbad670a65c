"""Serial port handling shared by the drivers that own a port (``serial``, ``bms``).

Opening runs in a worker thread (USB adapters take their time) and a
cancelled open closes the port once it is open; stale input is flushed;
`PortLink` hands received bytes and the end of the link to its owner; and
`close_link` releases the port (its exclusive lock included) before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from edgelink.errors import ConnectError

try:
    import serial
    import serial_asyncio
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("serial ports need pyserial-asyncio: pip install 'edgelink[serial]'") from exc

__all__ = ["CLOSE_TIMEOUT", "PortLink", "close_link", "open_link", "serial_options"]

#: How long `close_link` waits for the transport to release the port.
CLOSE_TIMEOUT: Final = 2.0

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


class PortSettings(Protocol):
    """The line settings of a config model (`edgelink.drivers.configs.SerialLineOptions`)."""

    bytesize: int
    parity: str
    stopbits: float
    rtscts: bool
    xonxoff: bool
    exclusive: bool


def serial_options(cfg: PortSettings) -> dict[str, Any]:
    """Return the keyword arguments of ``serial.Serial`` for validated line settings.

    The speed is not among them: each driver has its own default (add ``baudrate``).
    """
    return {
        "bytesize": cfg.bytesize,
        "parity": _PARITIES[cfg.parity],
        "stopbits": _STOPBITS[cfg.stopbits],
        "rtscts": cfg.rtscts,
        "xonxoff": cfg.xonxoff,
        "exclusive": cfg.exclusive,
    }


class PortLink(asyncio.Protocol):
    """The asyncio protocol of one open port: hands bytes and the end to its owner.

    Args:
        on_bytes: Called with the link and each chunk received.
        on_closed: Called with the link and the reason once the port is gone.
    """

    def __init__(
        self,
        on_bytes: Callable[[PortLink, bytes], None],
        on_closed: Callable[[PortLink, Exception | None], None],
    ) -> None:
        self._on_bytes = on_bytes
        self._on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._resume: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; not asserted as asyncio.Transport: uvloop's are no
        # subclasses of it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._on_bytes(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake_writers()
        self._on_closed(self, exc)

    def pause_writing(self) -> None:
        if self._resume is None:
            self._resume = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writers()

    def _wake_writers(self) -> None:
        fut, self._resume = self._resume, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def is_open(self) -> bool:
        """Return True while the transport is up and not closing."""
        return self.transport is not None and not self.transport.is_closing()

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        while self._resume is not None:
            await asyncio.shield(self._resume)


async def open_link(
    port: str, options: dict[str, Any], link: PortLink, *, connection_id: str
) -> None:
    """Open ``port`` (flushing stale input) and attach ``link`` to it.

    Raises:
        ConnectError: if the port does not exist, is busy or cannot be configured.
    """
    ser = await _open_port(port, options, connection_id)
    loop = asyncio.get_running_loop()
    # connection_for_serial schedules connection_made; the transport takes
    # over the Serial object and closes it when the link ends.
    await serial_asyncio.connection_for_serial(loop, lambda: link, ser)
    await asyncio.sleep(0)


async def _open_port(port: str, options: dict[str, Any], connection_id: str) -> serial.Serial:
    # Opening runs in a thread: USB adapters may take their time to open
    # and configure. A cancelled connect closes the port once it is open.
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, _open_blocking, port, options, connection_id)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:

        def close_late(done: asyncio.Future[serial.Serial]) -> None:
            if not done.cancelled() and done.exception() is None:
                done.result().close()

        fut.add_done_callback(close_late)
        raise


def _open_blocking(port: str, options: dict[str, Any], connection_id: str) -> serial.Serial:
    try:
        ser = serial.Serial(port, **options)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise ConnectError(
            f"cannot open serial port {port}: {exc}", connection_id=connection_id, cause=exc
        ) from exc
    try:
        # Bytes that arrived while nobody listened belong to no request.
        ser.reset_input_buffer()
    except (serial.SerialException, OSError) as exc:
        ser.close()
        raise ConnectError(
            f"cannot use serial port {port}: {exc}", connection_id=connection_id, cause=exc
        ) from exc
    return ser


async def close_link(link: PortLink | None) -> None:
    """Abort the link's transport and wait (at most `CLOSE_TIMEOUT`) until the port is released."""
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
