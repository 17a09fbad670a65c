"""Driver registry: connection type names to driver classes.

Built-in drivers and installed plugins (the ``edgelink.drivers`` entry point
group) are found by name; `register` adds one at run time, which is how a user
plugs in a custom type in a few lines::

    manager.register_connection_type("custom_tcp", CustomTCPConnection)
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from edgelink.connection import AnyConnection, BaseConnection, Connection, SyncConnection
from edgelink.errors import ConfigError

__all__ = ["BUILTIN_DRIVERS", "DriverRegistry"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "edgelink.drivers"

#: Built-in drivers by type name: module path and class, imported on first use so
#: a missing extra only matters when its type is used.
BUILTIN_DRIVERS: dict[str, str] = {
    "tcp": "edgelink.drivers.tcp:TcpConnection",
    "serial": "edgelink.drivers.serial:SerialConnection",
    "ads": "edgelink.drivers.ads:AdsConnection",
    "modbus_tcp": "edgelink.drivers.modbus:ModbusTcpConnection",
    "modbus_rtu": "edgelink.drivers.modbus:ModbusRtuConnection",
    "mqtt": "edgelink.drivers.mqtt:MqttConnection",
    "http": "edgelink.drivers.http:HttpConnection",
    "zkteco": "edgelink.drivers.zkteco:ZktecoConnection",
    "bms": "edgelink.drivers.bms:BmsConnection",
    "ble": "edgelink.drivers.ble:BleConnection",
}

DriverClass = type[Connection] | type[SyncConnection]
#: What `DriverRegistry.register` takes: also a `BaseConnection` subclass, which
#: is one of the two once defined (or, undecided, refused at registration).
RegistrableClass = DriverClass | type[BaseConnection]


class DriverRegistry:
    """Maps type names to driver classes. Thread-safe; lookups are cheap after the first."""

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self._classes: dict[str, DriverClass] = {}
        self._lazy: dict[str, str] = dict(BUILTIN_DRIVERS)
        self._load_entry_points = load_entry_points
        self._entry_points_loaded = False
        self._lock = threading.Lock()
        self._plugin_types: dict[str, str] = {}
        #: Default isolation per type (a plugin manifest's ``isolation``).
        self._isolation: dict[str, Any] = {}

    def register(self, type_name: str, cls: RegistrableClass) -> None:
        """Register ``cls`` under ``type_name`` (replacing any earlier one).

        Raises:
            TypeError: if ``cls`` is not a driver class: a `BaseConnection`
                (`Connection` or `SyncConnection`) subclass that defines its methods.
            ValueError: if ``type_name`` is empty.
        """
        if not type_name:
            raise ValueError("type_name must not be empty")
        if not (isinstance(cls, type) and issubclass(cls, Connection | SyncConnection)):
            if isinstance(cls, type) and issubclass(cls, BaseConnection):
                raise TypeError(
                    f"{cls.__qualname__} cannot be registered as {type_name!r}: it defines none "
                    "of connect(), disconnect(), health_check(), read(), write()"
                )
            raise TypeError(
                f"{cls!r} is not a BaseConnection (Connection or SyncConnection) subclass"
            )
        with self._lock:
            self._classes[type_name] = cls

    def unregister(self, type_name: str) -> None:
        """Forget a registered class (a plugin was disabled); built-ins stay known."""
        with self._lock:
            self._classes.pop(type_name, None)
            self._plugin_types.pop(type_name, None)
            self._isolation.pop(type_name, None)

    def mark_plugin(self, type_name: str, plugin: str) -> None:
        """Note that ``type_name`` was registered by ``plugin``."""
        with self._lock:
            self._plugin_types[type_name] = plugin

    def is_plugin(self, type_name: str) -> bool:
        """True if ``type_name`` came from a plugin."""
        return type_name in self._plugin_types

    def set_isolation(self, type_name: str, isolation: Any) -> None:
        """Make ``isolation`` (an `IsolationSpec`, None: none) the default of ``type_name``.

        A connection of that type without an ``isolation`` key of its own runs so
        (a plugin's manifest asks for it).
        """
        with self._lock:
            if isolation is None:
                self._isolation.pop(type_name, None)
            else:
                self._isolation[type_name] = isolation

    def isolation_of(self, type_name: str) -> Any:
        """The default isolation of ``type_name`` (None: in process)."""
        return self._isolation.get(type_name)

    def _discover(self) -> None:
        if self._entry_points_loaded or not self._load_entry_points:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self._lazy.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        """Return every known type name."""
        with self._lock:
            self._discover()
            return sorted(set(self._classes) | set(self._lazy))

    def get(self, type_name: str) -> DriverClass:
        """Return the class registered as ``type_name``.

        Raises:
            ConfigError: for an unknown type, or one whose extra is not installed
                (the message names the ``pip install`` to run).
        """
        with self._lock:
            cls = self._classes.get(type_name)
            if cls is not None:
                return cls
            self._discover()
            target = self._lazy.get(type_name)
        if target is None:
            raise ConfigError(
                f"unknown connection type {type_name!r}; known: {', '.join(self.names())}",
                path="type",
            )
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            extra = module_name.rsplit(".", 1)[-1]
            raise ConfigError(
                f"connection type {type_name!r} needs an extra: pip install 'edgelink[{extra}]'"
                f" ({exc})",
                path="type",
            ) from exc
        loaded: DriverClass = getattr(module, attr)
        self.register(type_name, loaded)
        return loaded

    def create(
        self,
        connection_id: str,
        type_name: str,
        config: Mapping[str, Any] | None = None,
        context: Any = None,
    ) -> AnyConnection:
        """Instantiate a driver (no I/O: constructors only store config)."""
        cls = self.get(type_name)
        return cls(connection_id, dict(config or {}), context)
