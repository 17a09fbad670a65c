"""A simulated Bluetooth radio for the ``ble`` driver's tests, plugged in below bleak's public API.

There is no Bluetooth adapter on a CI machine (no ``/dev/vhci`` either), so
the radio is simulated at bleak's own backend boundary: `FakeRadio.backends`
returns a `bleak.backends.scanner.BaseBleakScanner` and a
`bleak.backends.client.BaseBleakClient` subclass, and `FakeRadio.installed`
hands them to every `bleak.BleakScanner` / `bleak.BleakClient` edgelink makes
(`edgelink.drivers.ble.use_backend`). What runs for real: the driver, the
shared scanner, bleak's public classes (characteristic lookup, notification
wrapping, disconnect callbacks) and bleak-retry-connector. What is simulated:
the radio itself — advertisements, GATT tables, notifications, the air.

Peripherals:

- `FakePeripheral`: a GATT device with characteristics (read, write,
  notify), an RSSI, advertisement data, and faults (out of range, refusing
  connections, refusing a notification, dropping the link).
- `BmsPeripheral`: a Daly, JBD or ANT BMS's BLE module: requests written to
  its write characteristic are answered by the same protocol simulator the
  pty tests use (`edgelink.sim.bms.BmsResponder`), sent back as
  notifications cut to the BLE payload size (20 bytes), as real modules do.
- `VictronAdvertiser`: a SmartShunt's encrypted instant-readout advertisements.

Example:
    radio = FakeRadio()
    bms = radio.add(BmsPeripheral("C0:00:00:00:00:01", "jbd", BmsModel()))
    with radio.installed():
        async with radio.running():
            manager.add_connection("bt.bms_001", "bms",
                                   {"parser": "jbd", "transport": "ble", "address": bms.address})
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar, cast

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError

from edgelink.bms import get_parser
from edgelink.bms.victron import VICTRON_COMPANY_ID
from edgelink.drivers.ble import use_backend
from edgelink.drivers.configs import normalize_ble_uuid
from edgelink.sim.bms import BmsModel, BmsResponder, victron_advertisement

__all__ = ["BmsPeripheral", "FakePeripheral", "FakeRadio", "VictronAdvertiser"]

#: Bytes per notification (the default ATT MTU of 23 minus 3).
BLE_PAYLOAD: int = 20


class FakePeripheral:
    """A simulated BLE device: advertisements, a GATT table and faults.

    Args:
        address: Its Bluetooth address.
        name: Its advertised local name.
        rssi: The signal the scanner reports (dBm); tests change it.
        characteristics: UUID -> properties (``read``, ``write``,
            ``write-without-response``, ``notify``) in one service.
        service: The service UUID the characteristics live in (advertised).
    """

    def __init__(
        self,
        address: str,
        name: str | None = None,
        *,
        rssi: int = -60,
        characteristics: dict[str, list[str]] | None = None,
        service: str = "0000ffe0-0000-1000-8000-00805f9b34fb",
        manufacturer_data: dict[int, bytes] | None = None,
    ) -> None:
        self.address = address.upper()
        self.name = name
        self.rssi = rssi
        self.service = normalize_ble_uuid(service)
        self.characteristics = {
            normalize_ble_uuid(u): list(props) for u, props in (characteristics or {}).items()
        }
        self.manufacturer_data: dict[int, bytes] = dict(manufacturer_data or {})
        #: Values a read returns (tests set them; writes store here too).
        self.values: dict[str, bytes] = {}
        #: False: it neither advertises nor accepts connections (out of range, off).
        self.in_range = True
        #: False: connect attempts fail (a device busy with another central).
        self.accepts_connections = True
        #: Characteristics whose notification subscription is refused.
        self.refuse_notify: set[str] = set()
        #: Connections accepted, and how many times a link was set up.
        self.connects = 0
        self.reads = 0
        self.writes: list[tuple[str, bytes]] = []
        self.paired = False
        self._client: _Client | None = None
        self._subscribers: dict[str, Callable[[bytearray], None]] = {}

    def __repr__(self) -> str:
        state = "connected" if self.connected else "idle"
        return f"<FakePeripheral {self.address} {self.name!r} {state} rssi={self.rssi}>"

    @property
    def connected(self) -> bool:
        """True while a central holds a link to it."""
        return self._client is not None

    @property
    def subscribed(self) -> set[str]:
        """The characteristics the central listens to now."""
        return set(self._subscribers)

    def advertisement(self) -> AdvertisementData:
        """Return what it advertises now."""
        return AdvertisementData(
            local_name=self.name,
            manufacturer_data=dict(self.manufacturer_data),
            service_data={},
            service_uuids=[self.service],
            tx_power=None,
            rssi=self.rssi,
            platform_data=(),
        )

    def notify(self, uuid: str, data: bytes) -> bool:
        """Send a notification if the central subscribed ``uuid``; return whether it went out."""
        callback = self._subscribers.get(normalize_ble_uuid(uuid))
        if callback is None:
            return False
        asyncio.get_running_loop().call_soon(callback, bytearray(data))
        return True

    def drop(self) -> None:
        """Drop the link from the device's side (it rebooted, walked away)."""
        client, self._client = self._client, None
        self._subscribers.clear()
        if client is not None:
            client.link_lost()

    def on_write(self, uuid: str, data: bytes) -> None:
        """Handle a write; stores the value (subclasses answer)."""
        self.values[uuid] = data

    # -- called by the client backend ----------------------------------------------

    def _attach(self, client: _Client) -> None:
        if not self.in_range:
            raise BleakDeviceNotFoundError(
                self.address, f"Device with address {self.address} was not found"
            )
        if not self.accepts_connections or self._client is not None:
            raise BleakError(f"{self.address}: le-connection-abort-by-local")
        self._client = client
        self.connects += 1

    def _detach(self, client: _Client) -> None:
        if self._client is client:
            self._client = None
            self._subscribers.clear()


class BmsPeripheral(FakePeripheral):
    """A BMS's BLE module (Daly, JBD or ANT): requests in, frames out as notifications.

    Args:
        address: Its Bluetooth address.
        kind: ``daly``, ``jbd`` or ``ant``.
        model: The battery (`edgelink.sim.bms.BmsModel`); tests change it.
        name: Its advertised name (a typical one for the kind by default).
    """

    NAMES: ClassVar[dict[str, str]] = {
        "daly": "DL-40D63C2101F5",
        "jbd": "xiaoxiang BMS",
        "ant": "ANT-BLE16ZMUB",
    }

    def __init__(
        self, address: str, kind: str, model: BmsModel | None = None, *, name: str | None = None
    ) -> None:
        gatt = get_parser(kind).gatt
        if gatt is None:
            raise ValueError(f"{kind!r} has no GATT link (a Victron advertises)")
        props: dict[str, list[str]] = {gatt.notify: ["notify"]}
        props.setdefault(gatt.write, []).extend(["write", "write-without-response"])
        super().__init__(
            address, name or self.NAMES.get(kind), characteristics=props, service=gatt.service
        )
        self.kind = kind
        self.gatt = gatt
        self.model = model or BmsModel()
        self.responder = BmsResponder(kind, self.model)
        #: True: requests are taken but never answered.
        self.silent = False
        #: Bytes put before every answer (noise on the UART behind the module).
        self.garbage = b""

    def on_write(self, uuid: str, data: bytes) -> None:
        """Answer a request written to the module, one notification per 20 bytes."""
        super().on_write(uuid, data)
        if uuid != self.gatt.write:
            return
        self.responder.model = self.model
        for frame in self.responder.feed(data):
            if self.silent:
                continue
            frame = self.garbage + frame
            for at in range(0, len(frame), BLE_PAYLOAD):
                self.notify(self.gatt.notify, frame[at : at + BLE_PAYLOAD])


class VictronAdvertiser(FakePeripheral):
    """A Victron SmartShunt: its battery state in encrypted instant-readout advertisements."""

    def __init__(
        self, address: str, key: str, model: BmsModel | None = None, *, name: str = "SmartShunt"
    ) -> None:
        super().__init__(address, name, service="0000fe00-0000-1000-8000-00805f9b34fb")
        self.key = key
        self.model = model or BmsModel()
        self.nonce = 0

    def advertisement(self) -> AdvertisementData:
        """Return a fresh record (a new nonce each time, as the device does)."""
        self.nonce = (self.nonce + 1) & 0xFFFF
        self.manufacturer_data = {
            VICTRON_COMPANY_ID: victron_advertisement(self.model, self.key, self.nonce)
        }
        return super().advertisement()


class FakeRadio:
    """The air: peripherals that advertise to scanners and accept clients.

    Args:
        advert_interval: Seconds between two advertisements of each peripheral.
    """

    def __init__(self, advert_interval: float = 0.05) -> None:
        self.advert_interval = advert_interval
        self.peripherals: dict[str, FakePeripheral] = {}
        self.scanners: set[_Scanner] = set()
        #: Scanner starts (to check that connections share one).
        self.scans_started = 0
        #: False: scanners fail to start (no adapter).
        self.adapter_present = True
        self._task: asyncio.Task[None] | None = None

    def add(self, peripheral: FakePeripheral) -> Any:
        """Put a peripheral on the air; return it."""
        self.peripherals[peripheral.address] = peripheral
        return peripheral

    def backends(self) -> tuple[type[BaseBleakScanner], type[BaseBleakClient]]:
        """Return bleak backend classes bound to this radio."""
        radio = self

        class Scanner(_Scanner):
            pass

        class Client(_Client):
            pass

        Scanner.radio = radio
        Client.radio = radio
        return Scanner, Client

    @contextlib.contextmanager
    def installed(self) -> Iterator[FakeRadio]:
        """Make edgelink's scanners and clients use this radio inside the block."""
        scanner, client = self.backends()
        with use_backend(scanner, client):
            yield self

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeRadio]:
        """Advertise every ``advert_interval`` seconds inside the block."""
        self._task = asyncio.get_running_loop().create_task(self._advertise())
        try:
            yield self
        finally:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def advertise_once(self) -> None:
        """Send one advertisement of every peripheral in range to every scanner."""
        for peripheral in list(self.peripherals.values()):
            if not peripheral.in_range:
                continue
            adv = peripheral.advertisement()
            for scanner in list(self.scanners):
                scanner.hear(peripheral, adv)

    async def _advertise(self) -> None:
        while True:
            self.advertise_once()
            await asyncio.sleep(self.advert_interval)


class _Scanner(BaseBleakScanner):
    radio: FakeRadio

    def __init__(
        self,
        detection_callback: Any,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self.scanning_mode = scanning_mode

    async def start(self) -> None:
        if not self.radio.adapter_present:
            raise BleakError("No Bluetooth adapters found.")
        self.seen_devices = {}
        self.radio.scanners.add(self)
        self.radio.scans_started += 1

    async def stop(self) -> None:
        self.radio.scanners.discard(self)

    def hear(self, peripheral: FakePeripheral, adv: AdvertisementData) -> None:
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        device = self.create_or_update_device(
            peripheral.address, peripheral.address, peripheral.name, peripheral, adv
        )
        self.call_detection_callbacks(device, adv)


class _Client(BaseBleakClient):
    radio: FakeRadio

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        kwargs.pop("services", None)
        for key in ("bluez", "winrt", "pair", "_is_retry_client"):
            kwargs.pop(key, None)
        kwargs.setdefault("disconnected_callback", None)
        kwargs.setdefault("timeout", 10.0)
        super().__init__(address_or_ble_device, **kwargs)
        self._peripheral: FakePeripheral | None = None

    @property
    def name(self) -> str:
        peripheral = self.radio.peripherals.get(self.address.upper())
        return (peripheral.name if peripheral else None) or self.address

    @property
    def mtu_size(self) -> int:
        return BLE_PAYLOAD + 3

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        peripheral = self.radio.peripherals.get(self.address.upper())
        if peripheral is None:
            raise BleakDeviceNotFoundError(
                self.address, f"Device with address {self.address} was not found"
            )
        await asyncio.sleep(0)
        peripheral._attach(self)
        self._peripheral = peripheral
        if pair:
            peripheral.paired = True
        services = BleakGATTServiceCollection()
        service = BleakGATTService(None, 1, peripheral.service)
        services.add_service(service)
        for handle, (uuid, props) in enumerate(peripheral.characteristics.items(), start=2):
            services.add_characteristic(
                BleakGATTCharacteristic(
                    None,
                    handle,
                    uuid,
                    cast(Any, props),
                    lambda: BLE_PAYLOAD,
                    service,
                )
            )
        self.services = services

    async def disconnect(self) -> None:
        peripheral, self._peripheral = self._peripheral, None
        if peripheral is not None:
            peripheral._detach(self)

    def link_lost(self) -> None:
        self._peripheral = None
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        self._live().paired = True

    async def unpair(self) -> None:
        self._live().paired = False

    @property
    def is_connected(self) -> bool:
        return self._peripheral is not None

    def _live(self) -> FakePeripheral:
        if self._peripheral is None:
            raise BleakError("Not connected")
        return self._peripheral

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, **kwargs: Any
    ) -> bytearray:
        peripheral = self._live()
        if "read" not in characteristic.properties:
            raise BleakError(f"{characteristic.uuid}: read not permitted")
        peripheral.reads += 1
        return bytearray(peripheral.values.get(characteristic.uuid, b""))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, **kwargs: Any
    ) -> bytearray:
        raise BleakError("the simulated radio has no descriptors")

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        peripheral = self._live()
        props = characteristic.properties
        if "write" not in props and "write-without-response" not in props:
            raise BleakError(f"{characteristic.uuid}: write not permitted")
        peripheral.writes.append((characteristic.uuid, bytes(data)))
        peripheral.on_write(characteristic.uuid, bytes(data))

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        raise BleakError("the simulated radio has no descriptors")

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        peripheral = self._live()
        if (
            "notify" not in characteristic.properties
            or characteristic.uuid in peripheral.refuse_notify
        ):
            raise BleakError(f"{characteristic.uuid}: notify not permitted")
        peripheral._subscribers[characteristic.uuid] = callback

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        if self._peripheral is not None:
            self._peripheral._subscribers.pop(characteristic.uuid, None)
