"""The ``ble`` driver: a Bluetooth LE device over GATT, supervised like every connection.

Config (`edgelink.drivers.configs.BleConfig`; docs/drivers/ble.md)::

    {"address": "AA:BB:CC:DD:EE:FF",              # or the advertised name
     "notify": {"temperature": {"uuid": "2a6e", "format": "i16le", "scale": 0.01}},
     "read":   {"battery": {"uuid": "2a19", "format": "u8"}},
     "write":  {"led": {"uuid": "ff02", "format": "u8"}},
     "interval": 5, "rssi_warning": -90}

- **Connect**: the loop's shared scanner (`edgelink.drivers.ble.scanner`)
  finds the device by address or name; bleak-retry-connector connects
  (``max_attempts`` tries within one connect). Retrying between connects is
  the supervisor's: backoff with jitter, suspension, events.
- **Notifications** are subscriptions on the `SubscriptionLedger`: replayed
  on every new link and confirmed (the CCCD write acknowledged), a refused
  one reported as degraded and retried with a doubling delay.
  `subscribe` / `unsubscribe` change them at run time.
- **Reads** run every ``interval``; **writes** go with response.
- **Health**: a GATT read of the first ``read`` characteristic; without
  one, a notification within ``stale_after`` (3 x interval).
- **RSSI** is watched like a vital sign: the scanner's latest reading of
  the device is the datapoint ``rssi``; below ``rssi_warning`` dBm the
  connection is degraded with the reason (and recovers above it).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from edgelink._tasks import cancel_and_wait
from edgelink.connection import Connection
from edgelink.drivers._subscriptions import Subscription, SubscriptionLedger
from edgelink.drivers.ble.link import BleLink
from edgelink.drivers.ble.scanner import BleScanner, get_scanner, weak_signal
from edgelink.drivers.configs import BleCharacteristic, BleConfig
from edgelink.errors import ConfigError, ConnectError, DeviceError

__all__ = ["BleConnection", "decode_value", "encode_value"]

logger = logging.getLogger(__name__)

_STRUCTS: Final = {
    "u8": struct.Struct("<B"),
    "i8": struct.Struct("<b"),
    "u16le": struct.Struct("<H"),
    "i16le": struct.Struct("<h"),
    "u16be": struct.Struct(">H"),
    "i16be": struct.Struct(">h"),
    "u32le": struct.Struct("<I"),
    "i32le": struct.Struct("<i"),
    "f32le": struct.Struct("<f"),
}


def decode_value(spec: BleCharacteristic, data: bytes) -> Any:
    """Return the value of a characteristic's bytes as ``spec.format`` says.

    Raises:
        DeviceError: if the bytes are too short for the format or not text.
    """
    fmt = spec.format
    if fmt == "raw":
        return data.hex()
    if fmt == "utf8":
        try:
            return data.decode("utf-8").rstrip("\x00")
        except UnicodeDecodeError as exc:
            raise DeviceError(f"{spec.uuid}: not UTF-8 text: {exc}") from None
    packer = _STRUCTS[fmt]
    if len(data) < packer.size:
        raise DeviceError(f"{spec.uuid}: {len(data)} bytes, {fmt} needs {packer.size}")
    (number,) = packer.unpack_from(data)
    return number * spec.scale if spec.scale != 1.0 else number


def encode_value(spec: BleCharacteristic, value: Any) -> bytes:
    """Return the bytes that write ``value`` as ``spec.format`` says.

    Raises:
        ConfigError: if the value does not fit the format (the reason says why).
    """
    fmt = spec.format
    if fmt == "raw":
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        try:
            return bytes.fromhex(str(value))
        except ValueError:
            raise ConfigError(f"{value!r} is not hex bytes (format raw)") from None
    if fmt == "utf8":
        return str(value).encode("utf-8")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{value!r} is not a number (format {fmt})")
    raw = value / spec.scale if spec.scale != 1.0 else value
    packer = _STRUCTS[fmt]
    try:
        return packer.pack(raw if fmt == "f32le" else round(raw))
    except struct.error as exc:
        raise ConfigError(f"{value!r} does not fit {fmt}: {exc}") from None


class BleConnection(Connection):
    """A Bluetooth LE device: notifications, polled reads and writes as datapoints.

    Example:
        manager.add_connection("bt.sensor", "ble", {
            "address": "AA:BB:CC:DD:EE:FF",
            "notify": {"temperature": {"uuid": "2a6e", "format": "i16le", "scale": 0.01}},
        })
        # datapoints bt.sensor.temperature, bt.sensor.rssi
    """

    type_name = "ble"
    config_model = BleConfig
    cfg: BleConfig

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        cfg = self.cfg
        self.stale_after: float = (
            cfg.stale_after if cfg.stale_after is not None else 3 * cfg.interval
        )
        self._scanner: BleScanner | None = None
        self._link: BleLink | None = None
        self._closed_error: BaseException | None = None
        self._poller: asyncio.Task[None] | None = None
        self._replays: set[asyncio.Task[None]] = set()
        self._last_data: float | None = None
        self._reasons: dict[str, str | None] = {"subscriptions": None, "rssi": None}
        self._specs: dict[str, tuple[str, BleCharacteristic]] = {}
        self.ledger = SubscriptionLedger(
            self._replay,
            confirm_within=cfg.confirm_within,
            clock=lambda: self.clock,
            on_degraded=self._on_ledger_degraded,
            name=connection_id,
        )
        for tag, spec in cfg.notify.items():
            self._subscribe(tag, spec)
        #: The last RSSI the scanner reported for the device (dBm).
        self.rssi: int | None = None
        #: Notifications received since the driver was made.
        self.notifications = 0

    def __repr__(self) -> str:
        return f"<BleConnection {self.connection_id} {self.cfg.address} {self.status}>"

    # -- connect / disconnect --------------------------------------------------

    async def connect(self) -> None:
        """Find the device, connect, replay the notifications and start the read loop.

        Raises:
            ConnectTimeout: if the device was not seen or did not answer in time.
            ConnectError: if bleak could not scan or connect (the reason says why).
        """
        await self.disconnect()
        self._closed_error = None
        scanner = get_scanner()
        await scanner.acquire()
        self._scanner = scanner
        link = BleLink(
            self.cfg.address,
            scanner,
            connection_id=self.connection_id,
            on_lost=self._on_lost,
            max_attempts=self.cfg.max_attempts,
            pair=self.cfg.pair,
        )
        self._link = link
        try:
            await link.open(self.cfg.scan_timeout)
        except BaseException:
            await self.disconnect()
            raise
        self._last_data = self.clock.monotonic()
        self._check_rssi()
        self.ledger.link_up()
        poller = asyncio.get_running_loop().create_task(
            self._run_poll(link), name=f"edgelink[{self.connection_id}].ble_poll"
        )
        poller.add_done_callback(self._on_poller_done)
        self._poller = poller

    async def disconnect(self) -> None:
        """Stop reading, disconnect and give the scanner back; idempotent, never raises."""
        self.ledger.link_down()
        poller, self._poller = self._poller, None
        replays, self._replays = self._replays, set()
        for task in (poller, *replays):
            if task is not None and task is not asyncio.current_task():
                try:
                    await cancel_and_wait(task)
                except Exception:  # reported by its done callback
                    logger.debug("%s: a BLE task had failed", self.connection_id, exc_info=True)
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            await scanner.release()

    def is_connected(self) -> bool:
        """True while the GATT link is up and has not been dropped."""
        link = self._link
        return link is not None and link.is_connected() and self._closed_error is None

    async def health_check(self) -> bool:
        """A GATT read of the first ``read`` tag, else a notification within ``stale_after``."""
        link = self._link
        if link is None or not self.is_connected():
            return False
        if self.cfg.read:
            spec = next(iter(self.cfg.read.values()))
            try:
                await link.read(spec.uuid)
            except (DeviceError, ConnectError):
                return False
            return True
        if self.cfg.notify:
            last = self._last_data
            return last is not None and self.clock.monotonic() - last <= self.stale_after
        return True

    # -- data --------------------------------------------------------------

    async def read(self, tag: str) -> Any:
        """Read ``tag`` from the device now (``rssi``: the scanner's latest reading).

        Raises:
            DeviceError: for an unknown tag or a failed read.
            ConnectError: if the link is down.
        """
        if tag == "rssi":
            return self.rssi
        spec = self.cfg.read.get(tag) or self.cfg.notify.get(tag)
        if spec is None:
            raise DeviceError(f"no read or notify tag {tag!r}", connection_id=self.connection_id)
        data = await self._live_link().read(spec.uuid)
        self.update_stats(packets_sent=1, packets_received=1, bytes_received=len(data))
        return decode_value(spec, data)

    async def write(self, tag: str, value: Any) -> None:
        """Write ``value`` to the characteristic of write tag ``tag`` (with response).

        Raises:
            DeviceError: for an unknown tag or a refused write.
            ConfigError: if the value does not fit the tag's format.
            ConnectError: if the link is down.
        """
        spec = self.cfg.write.get(tag)
        if spec is None:
            known = ", ".join(sorted(self.cfg.write)) or "none"
            raise DeviceError(
                f"{tag!r} is not a write tag (write tags: {known})",
                connection_id=self.connection_id,
            )
        data = encode_value(spec, value)
        await self._live_link().write(spec.uuid, data, response=True)
        self.update_stats(packets_sent=1, bytes_sent=len(data))

    def subscribe(self, tag: str, uuid: str, fmt: str = "raw", scale: float = 1.0) -> None:
        """Report notifications of ``uuid`` as ``tag`` from now on (kept over reconnects).

        Raises:
            ConfigError: for a bad UUID or format.
        """
        try:
            spec = BleCharacteristic(uuid=uuid, format=fmt, scale=scale)
        except ValueError as exc:
            raise ConfigError(f"subscribe {tag!r}: {exc}") from None
        self._subscribe(tag, spec)

    def unsubscribe(self, uuid: str) -> None:
        """Stop reporting notifications of ``uuid``."""
        from edgelink.drivers.configs import normalize_ble_uuid

        key = normalize_ble_uuid(uuid)
        if self.ledger.remove(key) is not None:
            self._specs.pop(key, None)
            link = self._link
            if link is not None and self.is_connected():
                self._spawn(link.stop_notify(key))

    def _subscribe(self, tag: str, spec: BleCharacteristic) -> None:
        self._specs[spec.uuid] = (tag, spec)
        self.ledger.add(spec.uuid, tag=tag)

    def _replay(self, entries: Sequence[Subscription]) -> None:
        link = self._link
        if link is None:
            return
        for entry in entries:
            self._spawn(self._start_notify(link, entry.key))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

    async def _start_notify(self, link: BleLink, key: str) -> None:
        tag, spec = self._specs[key]

        def on_bytes(data: bytes) -> None:
            self._on_notify(link, tag, spec, data)

        try:
            await link.start_notify(key, on_bytes)
        except (DeviceError, ConnectError) as exc:
            if link is self._link:
                self.ledger.acknowledged(key, ok=False, error=exc.message)
            return
        if link is self._link:
            self.ledger.acknowledged(key)

    def _on_notify(self, link: BleLink, tag: str, spec: BleCharacteristic, data: bytes) -> None:
        if link is not self._link or self._closed_error is not None:
            return
        self.notifications += 1
        self._last_data = self.clock.monotonic()
        self.update_stats(packets_received=1, bytes_received=len(data))
        try:
            value = decode_value(spec, data)
        except DeviceError as exc:
            self.update_stats(errors=1)
            logger.debug("%s: %s", self.connection_id, exc.message)
            return
        self.report_data(tag, value)

    async def _run_poll(self, link: BleLink) -> None:
        while self._link is link and self.is_connected():
            for tag, spec in self.cfg.read.items():
                try:
                    data = await link.read(spec.uuid)
                except DeviceError as exc:
                    self.update_stats(errors=1)
                    logger.debug("%s: read %s: %s", self.connection_id, tag, exc.message)
                    continue
                except ConnectError:
                    return
                self._last_data = self.clock.monotonic()
                self.update_stats(packets_sent=1, packets_received=1, bytes_received=len(data))
                try:
                    self.report_data(tag, decode_value(spec, data))
                except DeviceError as exc:
                    self.update_stats(errors=1)
                    logger.debug("%s: %s", self.connection_id, exc.message)
            self._check_rssi()
            await self.clock.sleep(self.cfg.interval)

    def _check_rssi(self) -> None:
        scanner, link = self._scanner, self._link
        address = link.address if link is not None else None
        if scanner is None or address is None:
            return
        info = scanner.get(address)
        if info is None or info.rssi is None:
            return
        self.rssi = info.rssi
        self.report_data("rssi", info.rssi)
        reason = weak_signal(info.rssi, self.cfg.rssi_warning)
        if reason != self._reasons["rssi"]:
            self._reasons["rssi"] = reason
            self._update_degraded()

    def _on_ledger_degraded(self, reason: str | None) -> None:
        self._reasons["subscriptions"] = reason
        self._update_degraded()

    def _update_degraded(self) -> None:
        reasons = [r for r in self._reasons.values() if r]
        self.report_degraded("; ".join(reasons) if reasons else None)

    def _live_link(self) -> BleLink:
        link = self._link
        if link is None or not self.is_connected():
            raise ConnectError(
                f"BLE device {self.cfg.address} is not connected", connection_id=self.connection_id
            )
        return link

    def _on_poller_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._fail(task.exception() or RuntimeError("BLE poll task failed"))

    def _on_lost(self, link: BleLink) -> None:
        if link is not self._link:
            return
        self._fail(
            ConnectError(
                f"BLE device {self.cfg.address} disconnected", connection_id=self.connection_id
            )
        )

    def _fail(self, error: BaseException) -> None:
        if self._closed_error is not None:
            return
        self._closed_error = error
        self.connection_lost(error)
