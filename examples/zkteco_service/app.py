"""A device service for ZKTeco terminals: the ZKTeco document's service as a FastAPI app.

Devices live in SQL (SQLite file by default, PostgreSQL by URL); each has a
supervised connection that follows its row. Handlers get the database session
and the `DeviceConnectionService` by dependency injection.

Run it against simulated terminals::

    edgelink sim zkteco --port 4370 --password 1234 &
    DEVICES_DATABASE_URL=sqlite:///devices.db uvicorn app:app --port 8000
    curl -X POST localhost:8000/devices -H 'content-type: application/json' \\
         -d '{"name": "Door", "ip_address": "127.0.0.1", "port": 4370, "com_password": "1234"}'
    curl localhost:8000/devices/1/info
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from edgelink import ConfigError, ConnectionLostError, DeviceError
from edgelink.devices import (
    Device,
    DeviceConnection,
    DeviceConnectionService,
    DeviceRegistry,
    DeviceSession,
)
from edgelink.integrations.fastapi import (
    device_lifespan,
    get_db,
    get_device_connection_service,
    get_device_registry,
)

DATABASE_URL = os.environ.get("DEVICES_DATABASE_URL", "sqlite:///devices.db")

app = FastAPI(title="ZKTeco device service", lifespan=device_lifespan(DATABASE_URL))

Db = Annotated[DeviceSession, Depends(get_db)]
Service = Annotated[DeviceConnectionService, Depends(get_device_connection_service)]
Registry = Annotated[DeviceRegistry, Depends(get_device_registry)]


class DeviceIn(BaseModel):
    """A device as the API takes it."""

    name: str = Field(min_length=1, max_length=100)
    ip_address: str
    port: int = Field(default=4370, ge=1, le=65535)
    com_password: str | None = None
    type: str = "zkteco"
    enabled: bool = True
    config: dict[str, Any] = Field(default_factory=dict)


class DeviceChange(BaseModel):
    """The columns a PATCH may change."""

    name: str | None = None
    ip_address: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    com_password: str | None = None
    enabled: bool | None = None
    config: dict[str, Any] | None = None


def device_out(device: Device, service: DeviceConnectionService) -> dict[str, Any]:
    """A device row with its connection's state (the comm key is never shown)."""
    try:
        status = service.get_status(device.id)
    except KeyError:
        status = {"status": None, "reason": None}
    return {
        "id": device.id,
        "name": device.name,
        "ip_address": device.ip_address,
        "port": device.port,
        "type": device.type,
        "enabled": device.enabled,
        "status": status["status"],
        "reason": status["reason"],
    }


@app.exception_handler(ConfigError)
async def bad_device(request: Request, exc: ConfigError) -> JSONResponse:
    """A row whose connection cannot be built: 422 with the reason."""
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def load(db: DeviceSession, device_id: int) -> Device:
    device = await db.get(Device, device_id)
    if device is None:
        raise HTTPException(404, f"no device {device_id}")
    return device


async def connect(service: DeviceConnectionService, device: Device) -> DeviceConnection:
    conn = await service.get_connection(device)
    if conn is None:
        status = service.get_status(device.id)
        raise HTTPException(503, f"device {device.id} not reachable ({status['reason']})")
    return conn


@app.post("/devices", status_code=201)
async def create_device(body: DeviceIn, db: Db, service: Service) -> dict[str, Any]:
    """Add a device: its connection starts before the answer."""
    device = Device(**body.model_dump())
    db.add(device)
    await db.commit()
    return device_out(device, service)


@app.get("/devices")
async def list_devices(db: Db, service: Service) -> list[dict[str, Any]]:
    """Every device with its connection's state."""
    devices = (await db.scalars(select(Device).order_by(Device.id))).all()
    return [device_out(d, service) for d in devices]


@app.patch("/devices/{device_id}")
async def change_device(
    device_id: int, body: DeviceChange, db: Db, service: Service
) -> dict[str, Any]:
    """Change a device: only its connection follows."""
    device = await load(db, device_id)
    for key, value in body.model_dump(exclude_unset=True).items():
        setattr(device, key, value)
    await db.commit()
    return device_out(device, service)


@app.delete("/devices/{device_id}", status_code=204)
async def delete_device(device_id: int, db: Db) -> None:
    """Delete a device and its connection."""
    await db.delete(await load(db, device_id))
    await db.commit()


@app.get("/devices/{device_id}/status")
async def device_status(device_id: int, db: Db, service: Service) -> dict[str, Any]:
    """The connection's status (state, reason, health, counters)."""
    await load(db, device_id)
    return service.get_status(device_id)


@app.get("/devices/{device_id}/info")
async def device_info(device_id: int, db: Db, service: Service) -> dict[str, Any]:
    """Firmware, serial number, platform and table sizes, read from the device."""
    conn = await connect(service, await load(db, device_id))
    try:
        info: dict[str, Any] = await conn.device_info()
    except (ConnectionLostError, DeviceError) as exc:
        raise HTTPException(503, str(exc)) from None
    return info


@app.get("/devices/{device_id}/time")
async def device_time(device_id: int, db: Db, service: Service) -> dict[str, Any]:
    """The device's clock."""
    conn = await connect(service, await load(db, device_id))
    return {"time": await conn.read("time")}


@app.post("/devices/{device_id}/disconnect")
async def disconnect(device_id: int, db: Db, service: Service) -> dict[str, Any]:
    """Close a device's link until it is asked for again."""
    await load(db, device_id)
    await service.disconnect_device(device_id)
    return service.get_status(device_id)


@app.post("/devices/disconnect-all")
async def disconnect_all(service: Service) -> dict[str, Any]:
    """Close every device link."""
    await service.disconnect_all()
    return {str(k): v["status"] for k, v in service.status().items()}


@app.post("/devices/sync")
async def sync(registry: Registry) -> dict[str, Any]:
    """Bring the connections in line with rows changed outside this app."""
    return (await registry.sync()).as_dict()


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
