"""The device table of the registry (SQLAlchemy 2 declarative, the ZKTeco document's model).

A row is one device the gateway keeps a connection to: ``id``, ``name``,
``ip_address``, ``port`` (4370), ``com_password`` (the comm key as text, the
document's type; empty or NULL: none), ``type`` (the edgelink driver,
``zkteco`` by default), ``enabled``, and ``config``: a JSON object of further
driver config keys (``timeout``, ``transport``...) and, under ``settings`` and
``poll``, the connection's settings and poll groups.

`spec_data` turns a row into the entry `edgelink.config.build_spec` reads; it
is the one place that knows how the columns map to a connection.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import JSON, Boolean, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from edgelink.errors import ConfigError

__all__ = ["DEFAULT_PORT", "Base", "Device", "connection_id_of", "spec_data"]

#: The ZK protocol's port.
DEFAULT_PORT: Final = 4370
#: Keys of ``config`` that are no driver config but the connection's own.
_SPEC_KEYS: Final = ("settings", "poll")


class Base(DeclarativeBase):
    """The registry's declarative base: ``Base.metadata`` holds its tables."""


class Device(Base):
    """One device of the registry.

    Example:
        Device(name="Front door", ip_address="192.168.1.201", com_password="1234")
    """

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    ip_address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=DEFAULT_PORT)
    com_password: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)
    type: Mapped[str] = mapped_column(String(64), default="zkteco")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"<Device {self.id} {self.name!r} {self.type} {self.ip_address}:{self.port} {state}>"


def connection_id_of(device_id: int) -> str:
    """The manager's connection id for a device id (``device-7``)."""
    return f"device-{device_id}"


def spec_data(device: Device) -> dict[str, Any]:
    """Return the connection entry (``{"type", "name", "enabled", "config", ...}``) of a row.

    ``ip_address`` and ``port`` become ``host`` and ``port``; a ``com_password``
    becomes ``password`` (a number for ``zkteco``, whose comm key is one).

    Raises:
        ConfigError: naming the device and the column, for a comm key that is
            no number or a ``config`` that is no JSON object.
    """
    where = f"devices[{device.id}]"
    extra = device.config if device.config is not None else {}
    if not isinstance(extra, dict):
        raise ConfigError(f"config must be a JSON object, not {type(extra).__name__}", path=where)
    config: dict[str, Any] = {k: v for k, v in extra.items() if k not in _SPEC_KEYS}
    config["host"] = device.ip_address
    config["port"] = device.port if device.port is not None else DEFAULT_PORT
    kind = device.type or "zkteco"
    key = (device.com_password or "").strip()
    if key:
        if kind == "zkteco":
            try:
                config["password"] = int(key)
            except ValueError:
                raise ConfigError(
                    "com_password must be a number (the device's comm key)",
                    path=f"{where}.com_password",
                ) from None
        else:
            config["password"] = key
    data: dict[str, Any] = {
        "type": kind,
        "name": device.name,
        "enabled": bool(device.enabled) if device.enabled is not None else True,
        "config": config,
    }
    for k in _SPEC_KEYS:
        if k in extra:
            data[k] = extra[k]
    return data
