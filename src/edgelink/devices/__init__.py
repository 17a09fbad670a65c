"""Devices kept in SQL and the ZKTeco document's connection service (docs/devices.md).

- `DeviceRegistry`: a table of devices (SQLAlchemy 2 async; SQLite by
  default, PostgreSQL by URL) whose connections a `ConnectionManager` keeps
  in line with the rows.
- `DeviceConnectionService`: ``get_connection(device)``,
  ``disconnect_device(id)``, ``disconnect_all()`` and status, on those connections.
- `Device`: the table's model.

Needs the ``devices`` extra: ``pip install 'edgelink[devices]'``.
"""

try:
    import sqlalchemy as _sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"edgelink.devices needs SQLAlchemy: pip install 'edgelink[devices]' ({exc})"
    ) from exc

from edgelink.devices.models import Base, Device, connection_id_of
from edgelink.devices.registry import (
    DeviceRegistry,
    DeviceSession,
    SyncReport,
    database_url,
    registry_of,
)
from edgelink.devices.service import DeviceConnection, DeviceConnectionService

__all__ = [
    "Base",
    "Device",
    "DeviceConnection",
    "DeviceConnectionService",
    "DeviceRegistry",
    "DeviceSession",
    "SyncReport",
    "connection_id_of",
    "database_url",
    "registry_of",
]
