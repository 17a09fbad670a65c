"""`DeviceResetter`: the guide's reset handling, on the engine's device identity and ``on_reset``.

edgelink notices a reset itself: when a link comes up, the supervisor asks
the driver for the device's identity (``identity()``: serial and boot id,
e.g. the ``tcp`` driver's ``identity_request``); an identity that differs
from the last link's is a reset: a ``device_reset`` event, and the driver's
``on_reset()`` re-provisions the device before the link counts as up
(`edgelink.errors.DeviceResetError` if it fails). The resetter answers the
guide's questions from that:

- `DeviceResetter.detect_factory_reset`: did the engine see a reset of the
  device since the last recovery, or does the device answer with an identity
  other than the one of its current link now?
- `DeviceResetter.recover_from_reset`: reconnect the device, so that the
  engine runs ``on_reset`` on the new link, and hand back its client.
- `DeviceResetter.initiate_reset`: the driver's own ``reset()``, for a
  driver that can reset its device.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from edgelink.errors import DeviceResetError, EdgelinkError
from edgelink.events import Event

if TYPE_CHECKING:
    from edgelink.compat.asyncmiele.manager import ConnectionManager, DeviceClient
    from edgelink.compat.asyncmiele.profile import DeviceProfile

__all__ = ["DeviceResetter"]

logger = logging.getLogger(__name__)


class DeviceResetter:
    """Detects and recovers from device resets (the guide's ``DeviceResetter``).

    Args:
        manager: The manager of the devices; without one, the manager of the
            first client the resetter is given.
    """

    def __init__(self, manager: ConnectionManager | None = None) -> None:
        self._manager = manager
        #: Devices the engine saw reset since their last recovery.
        self._reset_seen: set[str] = set()
        self._watching: weakref.WeakSet[Any] = weakref.WeakSet()
        if manager is not None:
            self._watch(manager)

    def _watch(self, manager: ConnectionManager) -> None:
        if manager in self._watching:
            return
        self._watching.add(manager)

        def on_reset(event: Event) -> None:
            if event.connection_id is not None:
                self._reset_seen.add(event.connection_id)

        manager.engine.on_event("device_reset", on_reset)

    def _manager_of(self, client: DeviceClient | None) -> ConnectionManager:
        if client is not None:
            owner: ConnectionManager = client._owner
            if self._manager is None:
                self._manager = owner
            self._watch(owner)
            return owner
        if self._manager is None:
            raise DeviceResetError(
                "DeviceResetter has no manager yet: pass DeviceResetter(manager) "
                "or call detect_factory_reset(client, ...) first"
            )
        return self._manager

    async def detect_factory_reset(self, client: DeviceClient, device_id: str) -> bool:
        """Whether the device was reset: seen by the engine, or a new identity now.

        Raises:
            DeviceResetError: the driver reports no identity, so a reset
                cannot be told (configure it: e.g. ``identity_request`` of ``tcp``).
        """
        manager = self._manager_of(client)
        if device_id in self._reset_seen:
            return True
        sup = manager.engine.get_supervisor(device_id)
        try:
            now = await client.get_device_ident(device_id)
        except (EdgelinkError, OSError, TimeoutError) as exc:
            raise DeviceResetError(
                f"cannot ask the device who it is: {exc}", connection_id=device_id, cause=exc
            ) from exc
        if now is None:
            raise DeviceResetError(
                f"the {sup.type_name} driver reports no identity, so a reset cannot be "
                "told (give it one: the tcp driver's identity_request, a driver's identity())",
                connection_id=device_id,
            )
        return sup.identity is not None and now != sup.identity

    async def recover_from_reset(
        self, device_id: str, profile: DeviceProfile | None = None
    ) -> tuple[bool, DeviceClient | None]:
        """Reconnect the device so that the engine re-provisions it (``on_reset``).

        Returns:
            ``(True, client)`` once the device's new link is up, else
            ``(False, None)`` (why is logged and in the connection's status).
        """
        manager = self._manager_of(None)
        try:
            if profile is not None:
                await manager.get_client(device_id, profile)  # a new profile: a new connection
            client = await manager.reconnect(device_id)
        except (EdgelinkError, KeyError) as exc:
            logger.warning("recovering %s from its reset failed: %s", device_id, exc)
            return False, None
        self._reset_seen.discard(device_id)
        return True, client

    async def initiate_reset(self, client: DeviceClient, device_id: str) -> None:
        """Ask the device to reset, through its driver's ``reset()``.

        Raises:
            DeviceResetError: the driver has no ``reset()``, or it failed.
        """
        self._manager_of(client)
        sup = client._owner.engine.get_supervisor(device_id)
        if not callable(getattr(sup.connection, "reset", None)):
            raise DeviceResetError(
                f"the {sup.type_name} driver cannot reset its device (it has no reset())",
                connection_id=device_id,
            )
        try:
            await client._on_link(lambda adapter: adapter.call(lambda conn: conn.reset()))
        except (EdgelinkError, OSError, TimeoutError) as exc:
            raise DeviceResetError(
                f"the reset failed: {exc}", connection_id=device_id, cause=exc
            ) from exc
