"""edgelink: supervised device connections and data routing for edge gateways.

The public API, re-exported here::

    from edgelink import ConnectionManager, Connection, ConnectionState
"""

from edgelink.appcontext import AppContext, ModuleManager
from edgelink.backoff import Backoff, JitterMode
from edgelink.clock import Clock, SystemClock
from edgelink.config import (
    ConfigDiff,
    ConnectionSpec,
    GatewayConfig,
    check_config,
    config_json_schema,
    load_config,
)
from edgelink.connection import BaseConnection, Connection, Stats, SyncConnection
from edgelink.dampening import Dampening, FlapDamper
from edgelink.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    ConnectionHealthError,
    ConnectionLostError,
    ConnectionPoolExhaustedError,
    ConnectTimeout,
    DeviceError,
    DeviceResetError,
    DeviceSleepError,
    EdgelinkError,
    PermanentError,
    ProtocolError,
    ReconnectionError,
    RouteError,
)
from edgelink.events import Event, EventBus, EventType
from edgelink.manager import ConnectionManager, HealthMonitor
from edgelink.pool import ConnectionPool
from edgelink.registry import DriverRegistry
from edgelink.router import DataPoint, DataSpace, LogTarget, MemoryTarget, Router, Target
from edgelink.settings import ConnectionSettings, ManagerSettings
from edgelink.state import ConnectionState, Health, Reason
from edgelink.supervisor import Supervisor
from edgelink.sync import SyncConnectionManager

__version__ = "0.1.0"

#: The seed's name for the state enum.
ConnectionStatus = ConnectionState

__all__ = [
    "__version__",
    "AppContext",
    "AuthError",
    "Backoff",
    "BaseConnection",
    "check_config",
    "Clock",
    "config_json_schema",
    "ConfigDiff",
    "ConfigError",
    "ConnectError",
    "Connection",
    "ConnectionHealthError",
    "ConnectionLostError",
    "ConnectionManager",
    "ConnectionPool",
    "ConnectionPoolExhaustedError",
    "ConnectionSettings",
    "ConnectionSpec",
    "ConnectionState",
    "ConnectionStatus",
    "ConnectTimeout",
    "Dampening",
    "DataPoint",
    "DataSpace",
    "DeviceError",
    "DeviceResetError",
    "DeviceSleepError",
    "DriverRegistry",
    "EdgelinkError",
    "Event",
    "EventBus",
    "EventType",
    "FlapDamper",
    "GatewayConfig",
    "Health",
    "HealthMonitor",
    "JitterMode",
    "load_config",
    "LogTarget",
    "ManagerSettings",
    "MemoryTarget",
    "ModuleManager",
    "PermanentError",
    "ProtocolError",
    "Reason",
    "ReconnectionError",
    "RouteError",
    "Router",
    "Stats",
    "Supervisor",
    "SyncConnection",
    "SyncConnectionManager",
    "SystemClock",
    "Target",
]
