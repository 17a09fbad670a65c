r"""`SerialPeer`: a simulated serial device behind a socat pty pair, for tests.

It can be unplugged (socat killed: the port vanishes under the driver) and
plugged back in (a new socat on the same paths), hang, push unsolicited
messages and spew garbage. The device speaks the PING/PONG line protocol of
`edgelink.sim.tcp`; see `edgelink.sim.serial` for the parts.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Self

from edgelink.drivers.framing import Framing
from edgelink.sim.serial import SerialDevice, SerialLink

__all__ = ["PtyPeer", "SerialPeer"]


class PtyPeer:
    """What every simulated device behind a socat pty pair offers (`SerialPeer`, `BmsPeer`).

    Subclasses set ``link`` and ``device`` (anything with ``attach``,
    ``detach``, ``send_raw`` and ``requests``).
    """

    link: SerialLink
    device: Any

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.link!r} {self.device!r}>"

    async def __aenter__(self) -> Self:
        await self.plug()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.unplug()

    @property
    def path(self) -> Path:
        """The path the driver opens."""
        return self.link.path

    @property
    def requests(self) -> int:
        """Requests the device received so far."""
        return int(self.device.requests)

    def is_plugged(self) -> bool:
        """Return whether the link (socat) is up."""
        return self.link.is_running()

    async def plug(self) -> None:
        """Create the link (a new socat on the same paths) and attach the device.

        Raises:
            OSError: if socat is missing or cannot create the link.
        """
        await self.link.start()
        self.device.attach()

    async def unplug(self) -> None:
        """Kill socat: the port vanishes under the driver. Idempotent."""
        await self.link.stop()
        self.device.detach()

    def send_raw(self, data: bytes) -> None:
        """Send bytes exactly as given: garbage, partial frames."""
        self.device.send_raw(data)


class SerialPeer(PtyPeer):
    r"""A line-protocol device on the far end of a socat pty pair.

    Example:
        async with SerialPeer(tmp_path / "ttyUSB0", values={"temperature": "21.5"}) as peer:
            manager.add_connection("rs1", "serial", {"port": str(peer.path)})
            await peer.unplug()         # the driver's port vanishes
            await peer.plug()           # ...and comes back on the same path
            peer.send_raw(b"\xff\xfe")  # line noise

    Args:
        path: Where the driver's end of the link appears.
        framing: The framing the device speaks (``line`` with ``\n`` by default).
        values: The device's values; the dict is used as is, so a test may hold it.
        identity: The answer to ``ID?``.
    """

    device: SerialDevice

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        framing: Framing | None = None,
        values: MutableMapping[str, str] | None = None,
        identity: str | None = None,
    ) -> None:
        self.link = SerialLink(path)
        self.device = SerialDevice(self.link.device_path, framing, values=values, identity=identity)

    @property
    def values(self) -> MutableMapping[str, str]:
        """The device's values; tests may read and change them at any time."""
        return self.device.values

    @property
    def respond(self) -> bool:
        """False: requests are counted but never answered (a hung device)."""
        return self.device.respond

    @respond.setter
    def respond(self, value: bool) -> None:
        self.device.respond = value

    def send_frame(self, payload: bytes) -> None:
        """Send one framed message on the device's own initiative."""
        self.device.send_frame(payload)
