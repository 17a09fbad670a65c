"""One GATT link to one device: found by the shared scanner, connected with bleak-retry-connector.

`BleLink` is what the ``ble`` driver and the ``bms`` driver's BLE transport
hold while connected: it finds the device (`BleScanner.find`, by address or
name), connects with `bleak_retry_connector.establish_connection` (which
rides out BlueZ's transient errors within one connect), and translates
bleak's untyped errors into edgelink's: a device that is not in range or
does not answer is a `edgelink.errors.ConnectTimeout`, any other failure
to connect a `edgelink.errors.ConnectError`, a failed GATT operation on a
live link a `edgelink.errors.DeviceError`. Retrying *between* connects is
the supervisor's (backoff, jitter, suspension), as for every connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from edgelink.drivers.ble._backend import client_options, require_bleak
from edgelink.drivers.ble.scanner import BleDeviceInfo, BleScanner
from edgelink.errors import ConnectError, ConnectTimeout, DeviceError

__all__ = ["BleLink"]

logger = logging.getLogger(__name__)

#: ``on_lost(link)``: the device or the adapter dropped the link.
LostCallback = Callable[["BleLink"], None]


class BleLink:
    """A connected GATT client of one device.

    Example:
        link = BleLink("AA:BB:CC:DD:EE:FF", scanner, connection_id="bt.bms_001", on_lost=...)
        await link.open(timeout=20)
        await link.start_notify(NOTIFY_UUID, on_bytes)
        await link.write(WRITE_UUID, request)
        await link.close()
    """

    def __init__(
        self,
        target: str,
        scanner: BleScanner,
        *,
        connection_id: str,
        on_lost: LostCallback,
        max_attempts: int = 3,
        pair: bool = False,
    ) -> None:
        self.target = target
        self.scanner = scanner
        self.connection_id = connection_id
        self.max_attempts = max_attempts
        self.pair = pair
        self._on_lost = on_lost
        self._client: Any = None
        self._closing = False
        #: The device as the scanner last saw it (address, name, RSSI).
        self.info: BleDeviceInfo | None = None

    def __repr__(self) -> str:
        state = "open" if self.is_connected() else "closed"
        return f"<BleLink {self.target} {state}>"

    @property
    def address(self) -> str | None:
        """The device's address once found."""
        return self.info.address if self.info is not None else None

    def is_connected(self) -> bool:
        """True while bleak says the link is up."""
        client = self._client
        return client is not None and not self._closing and bool(client.is_connected)

    async def open(self, scan_timeout: float) -> None:
        """Find the device (waiting ``scan_timeout`` seconds at most for it) and connect.

        The connect itself is bounded by bleak's own timeout and by whoever
        awaits this (the supervisor's ``connect_timeout``).

        Raises:
            ConnectTimeout: if the device was not seen in time.
            ConnectError: for any other failure (refused, pairing failed, no adapter).
        """
        require_bleak()
        from bleak import BleakClient
        from bleak_retry_connector import establish_connection

        self._closing = False
        info = await self.scanner.find(self.target, timeout=scan_timeout)
        self.info = info
        name = info.name or info.address
        try:
            self._client = await establish_connection(
                BleakClient,
                info.device,
                f"{self.connection_id} ({name})",
                disconnected_callback=self._on_disconnected,
                max_attempts=self.max_attempts,
                pair=self.pair,
                **client_options(),
            )
        except TimeoutError as exc:
            raise ConnectTimeout(
                f"BLE device {name} did not accept a connection",
                connection_id=self.connection_id,
                cause=exc,
            ) from exc
        except Exception as exc:  # bleak's and the retry connector's errors are untyped
            raise ConnectError(
                f"BLE connect to {name} failed: {exc}",
                connection_id=self.connection_id,
                cause=exc,
            ) from exc

    async def close(self) -> None:
        """Disconnect; idempotent, never raises."""
        client, self._client = self._client, None
        self._closing = True
        if client is None:
            return
        try:
            async with asyncio.timeout(5.0):
                await client.disconnect()
        except Exception:  # the device may already be gone
            logger.debug("%s: BLE disconnect failed", self.connection_id, exc_info=True)

    def _on_disconnected(self, client: Any) -> None:
        if client is not self._client or self._closing:
            return
        self._on_lost(self)

    def _live(self) -> Any:
        client = self._client
        if client is None or not client.is_connected:
            raise ConnectError(
                f"BLE device {self.target} is not connected", connection_id=self.connection_id
            )
        return client

    async def start_notify(self, uuid: str, on_bytes: Callable[[bytes], None]) -> None:
        """Subscribe to notifications of characteristic ``uuid``.

        Raises:
            DeviceError: if the device refused (no such characteristic, no notify property).
            ConnectError: if the link is down.
        """
        client = self._live()

        def deliver(_sender: Any, data: bytearray) -> None:
            on_bytes(bytes(data))

        try:
            await client.start_notify(uuid, deliver)
        except Exception as exc:
            raise self._gatt_error("notify on", uuid, exc) from exc

    async def stop_notify(self, uuid: str) -> None:
        """Unsubscribe from ``uuid``; never raises (a dead link has no subscriptions)."""
        client = self._client
        if client is None or not client.is_connected:
            return
        try:
            await client.stop_notify(uuid)
        except Exception:
            logger.debug("%s: stop_notify %s failed", self.connection_id, uuid, exc_info=True)

    async def read(self, uuid: str) -> bytes:
        """Read characteristic ``uuid``.

        Raises:
            DeviceError: if the read failed on a live link.
            ConnectError: if the link is down.
        """
        client = self._live()
        try:
            return bytes(await client.read_gatt_char(uuid))
        except Exception as exc:
            raise self._gatt_error("read", uuid, exc) from exc

    async def write(self, uuid: str, data: bytes, *, response: bool = False) -> None:
        """Write ``data`` to characteristic ``uuid`` (with or without response).

        Raises:
            DeviceError: if the write failed on a live link.
            ConnectError: if the link is down.
        """
        client = self._live()
        try:
            await client.write_gatt_char(uuid, data, response=response)
        except Exception as exc:
            raise self._gatt_error("write", uuid, exc) from exc

    def _gatt_error(self, what: str, uuid: str, exc: Exception) -> Exception:
        if not self.is_connected():
            return ConnectError(
                f"BLE link to {self.target} lost during {what} {uuid}: {exc}",
                connection_id=self.connection_id,
                cause=exc,
            )
        return DeviceError(
            f"BLE {what} {uuid} failed: {exc}", connection_id=self.connection_id, cause=exc
        )
