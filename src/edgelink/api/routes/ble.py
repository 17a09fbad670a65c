"""Bluetooth LE: the devices in range (the device browser) and adding one as a connection.

``GET /api/ble/devices`` scans (the loop's shared scanner, kept on for
``linger`` seconds after the last request) and lists what it hears,
strongest first, with the BMS parsers each device's advertisement fits.
``POST /api/ble/devices/{address}/connect`` adds a connection for it
through connections.json (`Gateway.add_connection_entry`: validated,
written atomically, audited, refused during panic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException

from edgelink.api.auth import who_asks
from edgelink.errors import ConfigError
from edgelink.service.ble import ConnectBody, ble_devices, connection_entry
from edgelink.service.gateway import ActionRefusedError

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["router"]


def router(gateway: Gateway) -> APIRouter:
    """Return the BLE routes."""
    routes = APIRouter()

    @routes.get("/api/ble/devices", tags=["ble"])
    async def devices(linger: float = 60.0) -> dict[str, Any]:
        """The devices in range, strongest first (address, name, RSSI and its history, ...)."""
        return await ble_devices(min(max(linger, 1.0), 600.0))

    @routes.post("/api/ble/devices/{address}/connect", tags=["ble"])
    async def connect(address: str, body: ConnectBody) -> dict[str, Any]:
        """Add a ``bms`` connection over BLE for this device (409 during panic or a taken id)."""
        from edgelink.drivers.ble import get_scanner

        info = get_scanner().get(address)
        parsers = info.parsers() if info is not None else []
        try:
            entry = connection_entry(address, body, parsers)
            return await gateway.add_connection_entry(
                body.connection_id, entry, who=who_asks(gateway)
            )
        except ActionRefusedError as exc:
            raise HTTPException(status_code=409, detail=exc.message) from None
        except ConfigError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None

    return routes
