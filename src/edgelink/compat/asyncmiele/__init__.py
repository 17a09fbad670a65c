"""The asyncmiele connection guide's names on edgelink (``connection-optimization-guide.md``).

Code written for the guide runs with ``from asyncmiele import ...`` changed to
``from edgelink.compat.asyncmiele import ...`` and
``asyncmiele.exceptions.connection`` to
``edgelink.compat.asyncmiele.exceptions.connection``. Everything here is a
thin layer on one `edgelink.ConnectionManager`: see `.manager`, `.profile`,
`.resetter` and ``docs/seeds/asyncmiele.md``.

Example:
    async with ConnectionManager(max_connections=10, retry_count=3, retry_delay=2.0) as cm:
        client = await cm.get_client("oven", DeviceProfile("oven", "192.168.1.100"))
        state = await cm.execute_with_retry("oven", lambda: client.get_device_state("oven"))
"""

from edgelink.compat.asyncmiele.exceptions.connection import (
    ConnectionHealthError,
    ConnectionLostError,
    ConnectionPoolExhaustedError,
    DeviceResetError,
    DeviceSleepError,
    ReconnectionError,
)
from edgelink.compat.asyncmiele.manager import (
    ConnectionManager,
    ConnectionState,
    DeviceClient,
    DevicePool,
    HealthMonitor,
)
from edgelink.compat.asyncmiele.profile import DeviceProfile, GuideConfig, load_guide_config
from edgelink.compat.asyncmiele.resetter import DeviceResetter

#: The guide's other names for the parts (its overview lists them so).
ConnectionPool = DevicePool
ConnectionHealthMonitor = HealthMonitor

__all__ = [
    "ConnectionHealthError",
    "ConnectionHealthMonitor",
    "ConnectionLostError",
    "ConnectionManager",
    "ConnectionPool",
    "ConnectionPoolExhaustedError",
    "ConnectionState",
    "DeviceClient",
    "DevicePool",
    "DeviceProfile",
    "DeviceResetError",
    "DeviceResetter",
    "DeviceSleepError",
    "GuideConfig",
    "HealthMonitor",
    "ReconnectionError",
    "load_guide_config",
]
