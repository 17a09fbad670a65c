"""Bluetooth LE: the ``ble`` driver, the shared scanner, and GATT links (bleak).

- `BleConnection` (type ``ble``): a GATT device's notifications, reads and
  writes as datapoints, supervised like every connection.
- `BleScanner` / `get_scanner`: one scanner per event loop for all users
  (connections, the device browser, ``GET /api/ble/devices``).
- `BleLink`: one connected GATT client (also the ``bms`` driver's BLE transport).
- `use_backend`: plug bleak backend classes in (the test kit's simulated radio).

Needs the ``ble`` extra (``bleak``, ``bleak-retry-connector``). See docs/drivers/ble.md.
"""

from edgelink.drivers.ble._backend import use_backend
from edgelink.drivers.ble.connection import BleConnection, decode_value, encode_value
from edgelink.drivers.ble.link import BleLink
from edgelink.drivers.ble.scanner import BleDeviceInfo, BleScanner, get_scanner

__all__ = [
    "BleConnection",
    "BleDeviceInfo",
    "BleLink",
    "BleScanner",
    "decode_value",
    "encode_value",
    "get_scanner",
    "use_backend",
]
