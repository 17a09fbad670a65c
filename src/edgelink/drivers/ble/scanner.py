"""One Bluetooth LE scanner per event loop, shared by every BLE connection and the browser.

A radio scans for all its users at once: two scanners on one adapter fight
over it (BlueZ refuses the second discovery session or both lose
advertisements). So every user — a ``ble`` connection looking for its
device, a Victron BMS that is read from its advertisements, the admin UI's
device browser, ``GET /api/ble/devices`` — takes the loop's one `BleScanner`
(`get_scanner`) with `BleScanner.acquire` and gives it back with
`BleScanner.release`; the radio scans while anyone holds it (and for
``linger`` seconds after a browser last asked).

What it keeps per device (`BleDeviceInfo`): address, name, RSSI, first and
last seen, manufacturer data, service UUIDs and service data, and the last
`RSSI_HISTORY` RSSI readings. At most ``max_devices`` devices are kept (the
longest unseen is dropped first, counted in ``evicted``); a device not heard
for ``forget_after`` seconds leaves the list of devices in range.

Scanning mode: BlueZ scans passively only with advertisement-monitor
patterns, which a general browser cannot give, so ``scanning_mode="auto"``
scans actively on Linux and passively elsewhere (macOS, Windows).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from edgelink._tasks import cancel_and_wait
from edgelink.bms import identify
from edgelink.drivers.ble._backend import require_bleak, scanner_options
from edgelink.errors import ConnectError, ConnectTimeout

__all__ = [
    "RSSI_HISTORY",
    "AdvertListener",
    "BleDeviceInfo",
    "BleScanner",
    "close_scanner",
    "get_scanner",
    "normalize_address",
    "weak_signal",
]

logger = logging.getLogger(__name__)

#: RSSI readings kept per device.
RSSI_HISTORY: Final = 60

#: ``listener(info, advertisement)``: called on the loop for each advertisement of a device.
AdvertListener = Callable[["BleDeviceInfo", Any], None]


def weak_signal(rssi: int, threshold: int) -> str | None:
    """Return the degraded reason for an RSSI below ``threshold`` dBm, or None."""
    if rssi >= threshold:
        return None
    return f"weak signal: RSSI {rssi} dBm is below {threshold} dBm"


def normalize_address(address: str) -> str:
    """Return a Bluetooth address in the form bleak reports it (``AA:BB:...``, upper case)."""
    return address.strip().upper().replace("-", ":")


@dataclass(slots=True)
class BleDeviceInfo:
    """What the scanner knows about one device in range."""

    address: str
    name: str | None
    rssi: int | None
    first_seen: float
    last_seen: float
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    service_uuids: list[str] = field(default_factory=list)
    service_data: dict[str, bytes] = field(default_factory=dict)
    tx_power: int | None = None
    #: ``(wall time, rssi)`` of the last `RSSI_HISTORY` advertisements.
    rssi_history: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=RSSI_HISTORY)
    )
    #: Advertisements heard from it.
    adverts: int = 0
    #: bleak's `BLEDevice` (what a client connects to).
    device: Any = None

    def parsers(self) -> list[str]:
        """Return the BMS parsers whose signature fits its advertisement (`identify`)."""
        return identify(self.name, self.service_uuids, list(self.manufacturer_data))

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        """Return it JSON-ready (bytes as hex, manufacturer ids as decimal strings)."""
        now = time.time() if now is None else now
        return {
            "address": self.address,
            "name": self.name,
            "rssi": self.rssi,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "age": round(max(0.0, now - self.last_seen), 3),
            "adverts": self.adverts,
            "tx_power": self.tx_power,
            "manufacturer_data": {str(k): v.hex() for k, v in self.manufacturer_data.items()},
            "service_uuids": list(self.service_uuids),
            "service_data": {k: v.hex() for k, v in self.service_data.items()},
            "rssi_history": [[round(t, 3), r] for t, r in self.rssi_history],
            "parsers": self.parsers(),
        }


class BleScanner:
    """The loop's Bluetooth LE scanner: devices in range, their advertisements, and finders.

    Example:
        scanner = get_scanner()
        await scanner.acquire()
        try:
            device = await scanner.find("AA:BB:CC:DD:EE:FF", timeout=20)
        finally:
            await scanner.release()

    Args:
        max_devices: Devices kept at most; the longest unseen goes first.
        forget_after: Seconds after its last advertisement a device leaves `devices`.
        scanning_mode: ``active``, ``passive`` or ``auto`` (see the module doc).
    """

    def __init__(
        self,
        *,
        max_devices: int = 512,
        forget_after: float = 120.0,
        scanning_mode: Literal["auto", "active", "passive"] = "auto",
    ) -> None:
        if max_devices < 1:
            raise ValueError(f"max_devices must be >= 1, got {max_devices!r}")
        self.max_devices = max_devices
        self.forget_after = forget_after
        self.scanning_mode = scanning_mode
        self._devices: OrderedDict[str, BleDeviceInfo] = OrderedDict()
        self._listeners: dict[str, list[AdvertListener]] = {}
        self._finders: list[tuple[str, asyncio.Future[BleDeviceInfo]]] = []
        self._scanner: Any = None
        self._users = 0
        self._browse_until = 0.0
        self._linger: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        #: Devices dropped because `max_devices` were kept.
        self.evicted = 0
        #: Advertisements heard since it was made.
        self.adverts = 0
        #: Scanner starts that failed, and why the last one did.
        self.errors = 0
        self.last_error: str | None = None
        self.started_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"<BleScanner {'running' if self.running else 'stopped'} users={self._users} "
            f"devices={len(self._devices)} adverts={self.adverts}>"
        )

    @property
    def running(self) -> bool:
        """True while the radio scans."""
        return self._scanner is not None

    # -- users ---------------------------------------------------------------

    async def acquire(self) -> None:
        """Start scanning if nobody was; count one more user.

        Raises:
            ConnectError: if there is no adapter or bleak cannot scan (the reason says which).
            ConfigError: if bleak is not installed.
        """
        async with self._lock:
            if self._scanner is None:
                await self._start()
            self._users += 1

    async def release(self) -> None:
        """Count one user less; stop scanning when none is left (and no browser lingers)."""
        async with self._lock:
            self._users = max(0, self._users - 1)
            await self._stop_if_unused()

    async def browse(self, linger: float = 60.0) -> list[dict[str, Any]]:
        """Scan for at least ``linger`` more seconds and return the devices in range (a browser).

        Raises:
            ConnectError: if scanning cannot start.
        """
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._scanner is None:
                await self._start()
            self._browse_until = max(self._browse_until, loop.time() + linger)
            if self._linger is None or self._linger.done():
                self._linger = loop.create_task(self._run_linger(), name="edgelink.ble_linger")
        return self.devices_in_range()

    async def _run_linger(self) -> None:
        loop = asyncio.get_running_loop()
        # The deadline moves when a browser asks again: sleep until it holds.
        while (left := self._browse_until - loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)
        async with self._lock:
            await self._stop_if_unused()

    async def _stop_if_unused(self) -> None:
        loop = asyncio.get_running_loop()
        if self._users or loop.time() < self._browse_until or self._scanner is None:
            return
        await self._stop()

    async def close(self) -> None:
        """Stop scanning whoever holds it (the gateway is stopping)."""
        async with self._lock:
            self._users = 0
            self._browse_until = 0.0
            linger, self._linger = self._linger, None
            await self._stop()
        if linger is not None and linger is not asyncio.current_task():
            await cancel_and_wait(linger)

    # -- the radio -----------------------------------------------------------

    def _mode(self) -> str:
        if self.scanning_mode != "auto":
            return self.scanning_mode
        return "active" if sys.platform.startswith("linux") else "passive"

    async def _start(self) -> None:
        require_bleak()
        from bleak import BleakScanner

        try:
            scanner = BleakScanner(
                detection_callback=self._on_advert,
                scanning_mode=self._mode(),  # type: ignore[arg-type]
                **scanner_options(),
            )
            await scanner.start()
        except Exception as exc:  # bleak's errors are untyped: no adapter, no D-Bus, busy
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise ConnectError(
                f"the Bluetooth scanner could not start ({self.last_error}); is there an "
                "adapter and, on Linux, a running bluetoothd?",
                cause=exc,
            ) from exc
        self._scanner = scanner
        self.started_at = time.time()
        logger.info("BLE scanner started (%s)", self._mode())

    async def _stop(self) -> None:
        scanner, self._scanner = self._scanner, None
        self.started_at = None
        if scanner is None:
            return
        try:
            await scanner.stop()
        except Exception:  # stopping never raises; the adapter may be gone
            logger.debug("BLE scanner stop failed", exc_info=True)
        logger.info("BLE scanner stopped")

    # -- advertisements --------------------------------------------------------

    def _on_advert(self, device: Any, adv: Any) -> None:
        now = time.time()
        address = normalize_address(device.address)
        info = self._devices.get(address)
        name = adv.local_name or device.name
        if info is None:
            info = BleDeviceInfo(address, name, adv.rssi, now, now)
            self._devices[address] = info
            while len(self._devices) > self.max_devices:
                self._devices.popitem(last=False)
                self.evicted += 1
        else:
            self._devices.move_to_end(address)
            if name:
                info.name = name
        info.rssi = adv.rssi
        info.last_seen = now
        info.device = device
        info.adverts += 1
        info.tx_power = adv.tx_power
        if adv.manufacturer_data:
            info.manufacturer_data.update(adv.manufacturer_data)
        if adv.service_uuids:
            known = set(info.service_uuids)
            info.service_uuids.extend(u for u in adv.service_uuids if u not in known)
            del info.service_uuids[:-16]
        if adv.service_data:
            info.service_data.update(adv.service_data)
        if adv.rssi is not None:
            info.rssi_history.append((now, adv.rssi))
        self.adverts += 1
        for listener in tuple(self._listeners.get(address, ())):
            try:
                listener(info, adv)
            except Exception:  # one consumer's bug must not stop the scanner
                logger.exception("BLE advertisement listener for %s failed", address)
        if self._finders:
            self._resolve_finders(info)

    def _resolve_finders(self, info: BleDeviceInfo) -> None:
        keep = []
        for target, fut in self._finders:
            if fut.done():
                continue
            if _fits(info, target):
                fut.set_result(info)
            else:
                keep.append((target, fut))
        self._finders = keep

    def listen(self, address: str, listener: AdvertListener) -> Callable[[], None]:
        """Call ``listener(info, advertisement)`` for each advertisement of ``address``.

        Returns:
            A function that removes the listener.
        """
        key = normalize_address(address)
        self._listeners.setdefault(key, []).append(listener)

        def remove() -> None:
            listeners = self._listeners.get(key)
            if listeners and listener in listeners:
                listeners.remove(listener)
                if not listeners:
                    del self._listeners[key]

        return remove

    async def find(self, target: str, timeout: float) -> BleDeviceInfo:
        """Return the device whose address or name is ``target`` once it advertises.

        A device heard within ``forget_after`` seconds is returned at once.
        The caller must hold the scanner (`acquire`).

        Raises:
            ConnectTimeout: if it did not advertise within ``timeout`` seconds.
        """
        now = time.time()
        for info in reversed(self._devices.values()):
            if _fits(info, target) and now - info.last_seen <= self.forget_after:
                return info
        fut: asyncio.Future[BleDeviceInfo] = asyncio.get_running_loop().create_future()
        entry = (target, fut)
        self._finders.append(entry)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise ConnectTimeout(
                f"BLE device {target!r} not seen in {timeout:g} s (out of range, off, or "
                "connected to another central?)"
            ) from None
        finally:
            if entry in self._finders:
                self._finders.remove(entry)

    def get(self, address: str) -> BleDeviceInfo | None:
        """Return what is known of ``address`` (in range or not), or None."""
        return self._devices.get(normalize_address(address))

    def devices_in_range(self) -> list[dict[str, Any]]:
        """Return the devices heard within ``forget_after`` seconds, strongest first."""
        now = time.time()
        found = [
            info.as_dict(now)
            for info in self._devices.values()
            if now - info.last_seen <= self.forget_after
        ]
        found.sort(key=lambda d: -(d["rssi"] if d["rssi"] is not None else -999))
        return found

    def status(self) -> dict[str, Any]:
        """Return the scanner's state for the API and the UI."""
        return {
            "running": self.running,
            "mode": self._mode(),
            "users": self._users,
            "devices": len(self._devices),
            "max_devices": self.max_devices,
            "evicted": self.evicted,
            "adverts": self.adverts,
            "errors": self.errors,
            "last_error": self.last_error,
            "started_at": self.started_at,
        }


def _fits(info: BleDeviceInfo, target: str) -> bool:
    return info.address == normalize_address(target) or (
        info.name is not None and info.name == target
    )


_SCANNERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BleScanner] = (
    weakref.WeakKeyDictionary()
)


def get_scanner() -> BleScanner:
    """Return the running loop's scanner (made on first use)."""
    loop = asyncio.get_running_loop()
    scanner = _SCANNERS.get(loop)
    if scanner is None:
        scanner = _SCANNERS[loop] = BleScanner()
    return scanner


async def close_scanner() -> None:
    """Stop the running loop's scanner, if one was made (the gateway is stopping)."""
    scanner = _SCANNERS.pop(asyncio.get_running_loop(), None)
    if scanner is not None:
        await scanner.close()
