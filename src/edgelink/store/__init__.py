"""Storage of the service: the SQLite system log and the bridge's uplink buffer."""

from edgelink.store.sqlite import (
    BufferedMessage,
    Database,
    DeadLetters,
    ErrorLogHandler,
    EventLog,
    UplinkBuffer,
)

__all__ = [
    "BufferedMessage",
    "Database",
    "DeadLetters",
    "ErrorLogHandler",
    "EventLog",
    "UplinkBuffer",
]
