"""The guide's connection exceptions (``asyncmiele.exceptions.connection``).

They are edgelink's own classes (`edgelink.errors`), not copies: code that
catches ``edgelink.errors.ConnectionLostError`` catches the guide's too, and
every one is an `edgelink.EdgelinkError` with the connection id.

- `ConnectionLostError`: the connection was lost and the retries could not
  get it back (``execute_with_retry``), or it did not come up in time
  (``get_client``).
- `ReconnectionError`: the engine gave up reconnecting (suspended after its
  attempts, or an error retrying cannot help).
- `ConnectionPoolExhaustedError`: ``max_connections`` devices are in use.
- `DeviceResetError`: a reset could not be started or recovered from.
- `ConnectionHealthError`: a health check fails: the operation was not run.
- `DeviceSleepError`: the device sleeps and does not take commands.
"""

from edgelink.errors import (
    ConnectionHealthError,
    ConnectionLostError,
    ConnectionPoolExhaustedError,
    DeviceResetError,
    DeviceSleepError,
    ReconnectionError,
)

__all__ = [
    "ConnectionHealthError",
    "ConnectionLostError",
    "ConnectionPoolExhaustedError",
    "DeviceResetError",
    "DeviceSleepError",
    "ReconnectionError",
]
