"""The ``bms`` driver: a battery management system read with an `edgelink.bms` parser.

Config keys (see docs/bms.md; the model `edgelink.drivers.configs.BmsConfig`):

- ``parser`` (required): ``ant``, ``daly``, ``jbd`` or ``victron``
- ``transport``: ``serial`` (the default): ``port`` (required), ``baudrate``
  (the parser's: 9600 for Daly and JBD, 19200 for VE.Direct), and the line
  settings of the ``serial`` driver (``bytesize``, ``parity``, ``stopbits``,
  ``exclusive``, ...). ``ble``: ``address`` (the BLE address or name),
  ``scan_timeout``, ``max_attempts``, ``rssi_warning``; Daly, JBD and ANT
  are polled over their BLE module's GATT characteristics (requests written,
  frames notified: `edgelink.bms.BleGatt`); a Victron is read from its
  encrypted advertisements and needs ``encryption_key`` (no GATT link).
- ``interval`` (2.0 s): time between polls; ``response_timeout`` (1.0 s)
- ``stale_after``: health fails after this long without a valid frame
  (default ``3 * interval + response_timeout``)
- ``error_streak`` (3): bad frames in a row that drop the link
- ``max_buffer`` (4096): bytes held while waiting for the rest of a frame

While connected a poll task (``edgelink[<id>].bms_poll``) sends the parser's
requests one at a time, each waiting for its answer at most
``response_timeout``, then sleeps ``interval`` on the owner's clock. VE.Direct
has no requests: the device talks and the driver listens.

Every valid frame is reported at once, each value a datapoint:
``voltage``, ``current``, ``power``, ``soc``, ``cells.<n>``, ``temps.<n>``,
``alarms.<name>``, ``mos.charge``, ``mos.discharge``, ``cycles``,
``capacity.remaining``, ``capacity.full``, ``info.<name>``. Under the
connection id ``bt.bms_001`` that is ``bt.bms_001.voltage`` and so on.

A bad frame (checksum, length, garbage) is counted (``stats.errors`` and
`bad_frames`) and decodes to nothing; ``error_streak`` of them in a row with
no valid frame between is a `ProtocolError` that drops the link. The port's
handling (open in a thread, flush, release) is the ``serial`` driver's
(`edgelink.drivers._serial_port`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from edgelink._tasks import cancel_and_wait
from edgelink.bms import BmsParser, Decoded, decode_instant_readout, get_parser
from edgelink.bms.victron import VICTRON_COMPANY_ID
from edgelink.connection import Connection
from edgelink.drivers._serial_port import PortLink, close_link, open_link, serial_options
from edgelink.drivers.ble._backend import require_bleak
from edgelink.drivers.ble.link import BleLink
from edgelink.drivers.ble.scanner import BleDeviceInfo, BleScanner, get_scanner, weak_signal
from edgelink.drivers.configs import BmsConfig
from edgelink.errors import ConnectError, DeviceError, ProtocolError

__all__ = ["BmsConnection"]

logger = logging.getLogger(__name__)


class BmsConnection(Connection):
    """A BMS on a UART or RS485 adapter: every cell, SOC, temperature and alarm as data.

    Example:
        manager.add_connection(
            "bt.bms_001", "bms", {"parser": "daly", "port": "/dev/ttyUSB0", "interval": 5}
        )
        # datapoints bt.bms_001.voltage, bt.bms_001.cells.1, bt.bms_001.alarms.short_circuit, ...
    """

    type_name = "bms"
    config_model = BmsConfig
    cfg: BmsConfig

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        cfg = self.cfg
        self.parser: BmsParser = get_parser(cfg.parser, max_buffer=cfg.max_buffer)
        self.transport: str = cfg.transport
        #: The serial port, or the BLE address or name: where the BMS is.
        self.port: str = cfg.port if cfg.port is not None else str(cfg.address)
        self.baudrate: int = cfg.baudrate or self.parser.baudrate
        self.interval: float = cfg.interval
        self.response_timeout: float = cfg.response_timeout
        self.stale_after: float = (
            cfg.stale_after
            if cfg.stale_after is not None
            else 3 * cfg.interval + cfg.response_timeout
        )
        self._serial_kwargs = {**serial_options(cfg), "baudrate": self.baudrate}
        self._link: PortLink | None = None
        self._ble: BleLink | None = None
        self._scanner: BleScanner | None = None
        self._unlisten: Callable[[], None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._closed_error: BaseException | None = None
        self._last_valid: float | None = None
        self._streak = 0
        self._weak = False
        #: Valid frames decoded since the driver was made.
        self.good_frames = 0
        #: Bad frames (checksum, length, garbage, device errors) since the driver was made.
        self.bad_frames = 0
        #: Requests the BMS did not answer within ``response_timeout``.
        self.unanswered = 0
        #: Why the last bad frame was bad.
        self.last_bad_frame: str | None = None

    def __repr__(self) -> str:
        return (
            f"<BmsConnection {self.connection_id} {self.cfg.parser} {self.port} {self.status} "
            f"good={self.good_frames} bad={self.bad_frames}>"
        )

    async def connect(self) -> None:
        """Open the port and, for a polled protocol, start polling.

        Raises:
            ConnectError: if the port does not exist, is busy or cannot be configured.
        """
        await self.disconnect()
        self.parser.reset()
        self._closed_error = None
        self._streak = 0
        if self.transport == "ble":
            await self._connect_ble()
            return
        link = PortLink(self._on_bytes, self._on_link_closed)
        self._link = link
        try:
            await open_link(self.port, self._serial_kwargs, link, connection_id=self.connection_id)
        except BaseException:
            if self._link is link:
                self._link = None
            raise
        # Health counts from the moment the port is open: the first answer
        # gets ``stale_after`` like every later one.
        self._last_valid = self.clock.monotonic()
        if self.parser.requests():
            poller = asyncio.get_running_loop().create_task(
                self._run_poll(link), name=f"edgelink[{self.connection_id}].bms_poll"
            )
            poller.add_done_callback(self._on_poller_done)
            self._poller = poller

    async def _connect_ble(self) -> None:
        require_bleak()
        scanner = get_scanner()
        await scanner.acquire()
        self._scanner = scanner
        gatt = self.parser.gatt
        if gatt is None:
            # A Victron: every advertisement carries the readout; nothing to connect to.
            try:
                info = await scanner.find(self.port, timeout=self.cfg.scan_timeout)
            except BaseException:
                await self.disconnect()
                raise
            self._unlisten = scanner.listen(info.address, self._on_advert)
            self._last_valid = self.clock.monotonic()
            self._on_advert(info, None)
            return
        link = BleLink(
            self.port,
            scanner,
            connection_id=self.connection_id,
            on_lost=self._on_ble_lost,
            max_attempts=self.cfg.max_attempts,
        )
        self._ble = link
        try:
            await link.open(self.cfg.scan_timeout)
            await link.start_notify(gatt.notify, lambda data: self._on_bytes(link, data))
        except BaseException:
            await self.disconnect()
            raise
        self._last_valid = self.clock.monotonic()
        poller = asyncio.get_running_loop().create_task(
            self._run_poll(link), name=f"edgelink[{self.connection_id}].bms_poll"
        )
        poller.add_done_callback(self._on_poller_done)
        self._poller = poller

    def _on_advert(self, info: BleDeviceInfo, _adv: Any) -> None:
        if self._closed_error is not None or self._unlisten is None:
            return
        data = info.manufacturer_data.get(VICTRON_COMPANY_ID)
        self._report_rssi(info)
        if data is None:
            return
        key = self.cfg.encryption_key
        assert key is not None  # the model requires it for a Victron over ble
        self.update_stats(bytes_received=len(data))
        try:
            reading = decode_instant_readout(data, key)
        except ProtocolError as exc:
            self._on_bad_frame(exc)
            return
        self._on_frame(Decoded(0, reading, len(data)))

    def _report_rssi(self, info: BleDeviceInfo) -> None:
        if info.rssi is None:
            return
        self.report_data("rssi", info.rssi)
        reason = weak_signal(info.rssi, self.cfg.rssi_warning)
        if (reason is not None) != self._weak:
            self._weak = reason is not None
            self.report_degraded(reason)

    def _on_ble_lost(self, link: BleLink) -> None:
        if link is not self._ble or self._closed_error is not None:
            return
        self._fail(
            ConnectError(f"BLE device {self.port} disconnected", connection_id=self.connection_id)
        )

    async def disconnect(self) -> None:
        """Stop polling and release the port; idempotent, never raises."""
        poller, self._poller = self._poller, None
        link, self._link = self._link, None
        ble, self._ble = self._ble, None
        unlisten, self._unlisten = self._unlisten, None
        self._wake_waiters()
        if poller is not None and poller is not asyncio.current_task():
            try:
                await cancel_and_wait(poller)
            except Exception:  # disconnect never raises; _on_poller_done reported it
                logger.debug("%s: the poll task had failed", self.connection_id, exc_info=True)
        await close_link(link)
        if unlisten is not None:
            unlisten()
        if ble is not None:
            await ble.close()
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            await scanner.release()

    def is_connected(self) -> bool:
        """Return True while the port (or BLE link) is open and has not been dropped."""
        if self._closed_error is not None:
            return False
        if self.transport == "ble":
            if self.parser.gatt is None:  # read from advertisements: the scanner is the link
                return self._unlisten is not None
            return self._ble is not None and self._ble.is_connected()
        link = self._link
        return link is not None and link.is_open()

    async def health_check(self) -> bool:
        """Return True if a valid frame arrived within ``stale_after`` seconds."""
        if not self.is_connected():
            return False
        last = self._last_valid
        return last is not None and self.clock.monotonic() - last <= self.stale_after

    async def read(self, tag: str) -> Any:
        """Return the latest value of ``tag`` (``voltage``, ``cells.3``, ...) from the BMS.

        Raises:
            DeviceError: if the BMS has not reported that value (yet).
        """
        for name, value in self.parser.state.datapoints():
            if name == tag:
                return value
        raise DeviceError(f"the BMS has not reported {tag!r}", connection_id=self.connection_id)

    async def send_data(self, data: bytes) -> None:
        """Send raw bytes (a request frame) to the BMS.

        Raises:
            ConnectError: if the port is not open.
        """
        ble = self._ble
        if ble is not None:
            gatt = self.parser.gatt
            if gatt is None or not self.is_connected():
                raise ConnectError(
                    f"BLE device {self.port} is not connected", connection_id=self.connection_id
                )
            await ble.write(gatt.write, data)
            self.update_stats(packets_sent=1, bytes_sent=len(data))
            return
        link = self._link
        if link is None or link.transport is None or not self.is_connected():
            raise ConnectError(
                f"serial port {self.port} is not open",
                connection_id=self.connection_id,
                cause=self._closed_error,
            )
        link.transport.write(data)
        self.update_stats(packets_sent=1, bytes_sent=len(data))
        await link.drain()

    def _current(self) -> object:
        return self._ble if self.transport == "ble" else self._link

    async def _run_poll(self, link: object) -> None:
        loop = asyncio.get_running_loop()
        while self._current() is link and self.is_connected():
            for request in self.parser.requests():
                key = self.parser.answer_key(request)
                answered: asyncio.Future[None] = loop.create_future()
                self._waiting[key] = answered
                try:
                    await self.send_data(request)
                    async with asyncio.timeout(self.response_timeout):
                        await answered
                except TimeoutError:
                    # Silence is not garbage: the health check sees it
                    # (no valid frame within stale_after).
                    self.unanswered += 1
                    logger.debug("%s: no answer to request 0x%02X", self.connection_id, key)
                except ConnectError:
                    return
                finally:
                    if self._waiting.get(key) is answered:
                        del self._waiting[key]
                if self._current() is not link or not self.is_connected():
                    return
            if isinstance(link, BleLink) and self._scanner is not None and link.address:
                info = self._scanner.get(link.address)
                if info is not None:
                    self._report_rssi(info)
            await self.clock.sleep(self.interval)

    def _on_poller_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug or a surprise from the port: the link cannot be trusted to poll.
        self._fail(task.exception() or RuntimeError("poll task failed"))

    def _on_bytes(self, link: object, data: bytes) -> None:
        if link is not self._current() or self._closed_error is not None:
            return
        self.update_stats(bytes_received=len(data))
        for item in self.parser.feed(data):
            if isinstance(item, Decoded):
                self._on_frame(item)
            else:
                self._on_bad_frame(item)
                if self._closed_error is not None:
                    return

    def _on_frame(self, decoded: Decoded) -> None:
        self.good_frames += 1
        self._streak = 0
        self._last_valid = self.clock.monotonic()
        self.update_stats(packets_received=1)
        for tag, value in decoded.reading.datapoints():
            self.report_data(tag, value)
        waiter = self._waiting.get(decoded.key)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_bad_frame(self, error: ProtocolError | DeviceError) -> None:
        self.bad_frames += 1
        self.last_bad_frame = error.message
        self.update_stats(errors=1)
        if isinstance(error, DeviceError):
            # The BMS said no to one request: the link itself is fine.
            logger.debug("%s: %s", self.connection_id, error.message)
            return
        self._streak += 1
        logger.debug("%s: bad frame: %s", self.connection_id, error.message)
        if self._streak >= self.cfg.error_streak:
            self._fail(
                ProtocolError(
                    f"{self._streak} bad frames in a row from the BMS; last: {error.message}",
                    connection_id=self.connection_id,
                )
            )

    def _fail(self, error: BaseException) -> None:
        """The link cannot go on: close it, wake the poller, tell the supervisor."""
        if self._closed_error is not None:
            return
        self._closed_error = error
        link = self._link
        if link is not None and link.transport is not None and not link.transport.is_closing():
            link.transport.abort()
        self._wake_waiters()
        self.connection_lost(error)

    def _wake_waiters(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.cancel()

    def _on_link_closed(self, link: PortLink, exc: Exception | None) -> None:
        if link is not self._link or self._closed_error is not None:
            return
        self._fail(
            ConnectError(
                f"serial port {self.port} went away ({exc if exc is not None else 'closed'})",
                connection_id=self.connection_id,
                cause=exc,
            )
        )
