"""The BLE device browser's service functions, shared by the API and the admin UI.

`ble_devices` scans (the loop's shared scanner) and lists what it hears;
`connection_entry` turns a device and the browser's choices into a
connections.json entry that `Gateway.add_connection_entry` adds.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from edgelink.errors import ConfigError, ConnectError

__all__ = ["ConnectBody", "ble_devices", "connection_entry"]

_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ConnectBody(BaseModel):
    """Body of ``POST /api/ble/devices/{address}/connect``."""

    connection_id: str = Field(min_length=1, max_length=128, description="e.g. bt.bms_001")
    parser: Literal["ant", "daly", "jbd", "victron"] | None = Field(
        default=None, description="read it as this BMS (default: the one it was identified as)"
    )
    encryption_key: str | None = Field(
        default=None, max_length=64, description="a Victron's instant-readout key"
    )
    interval: float = Field(default=5.0, gt=0, le=3600)


async def ble_devices(linger: float = 60.0) -> dict[str, Any]:
    """Return the scanner's state and the devices in range (scanning for ``linger`` s more).

    Without bleak or an adapter the list is empty and ``error`` says why.
    """
    from edgelink.drivers.ble import get_scanner

    scanner = get_scanner()
    try:
        devices = await scanner.browse(linger=linger)
        error = None
    except (ConnectError, ConfigError) as exc:
        devices, error = [], exc.message
    return {"scanner": scanner.status(), "devices": devices, "error": error}


def connection_entry(address: str, body: ConnectBody, parsers: list[str]) -> dict[str, Any]:
    """Return the connections.json entry that reads a device at ``address``.

    Raises:
        ConfigError: if the connection id is not valid or the parser cannot be told.
    """
    if not _ID.match(body.connection_id):
        raise ConfigError("letters, digits, '_', '.', '-' only", path="connection_id")
    parser = body.parser or (parsers[0] if parsers else None)
    if parser is None:
        raise ConfigError("the device was not identified as a BMS: choose a parser", path="parser")
    config: dict[str, Any] = {
        "parser": parser,
        "transport": "ble",
        "address": address,
        "interval": body.interval,
    }
    if body.encryption_key is not None:
        config["encryption_key"] = body.encryption_key
    return {
        "type": "bms",
        "config": config,
        # A BLE connect (scan and GATT setup) takes seconds, not the default 3.
        "settings": {"connect_timeout": 30.0},
    }
