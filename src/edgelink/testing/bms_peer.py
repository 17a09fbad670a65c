"""`BmsPeer`: a simulated Daly, JBD or Victron BMS behind a socat pty pair, for tests.

It can be unplugged (socat killed: the port vanishes under the driver) and
plugged back in, fall silent, send garbage, cut or corrupt its frames
(`edgelink.sim.bms.BmsFault`) and spew raw bytes. See `edgelink.sim.bms`.
"""

from __future__ import annotations

import os

from edgelink.sim.bms import BmsDevice, BmsFault, BmsModel
from edgelink.sim.serial import SerialLink
from edgelink.testing.serial_peer import PtyPeer

__all__ = ["BmsPeer"]


class BmsPeer(PtyPeer):
    """A simulated BMS on the far end of a socat pty pair.

    Example:
        async with BmsPeer(tmp_path / "ttyUSB0", "daly", BmsModel(cells=32)) as peer:
            manager.add_connection("bt.bms_001", "bms", {"parser": "daly", "port": str(peer.path)})
            peer.fault = BmsFault.GARBAGE   # line noise before every frame
            await peer.unplug()             # the driver's port vanishes
            await peer.plug()               # ...and comes back on the same path

    Args:
        path: Where the driver's end of the link appears.
        kind: ``daly``, ``jbd`` or ``victron``.
        model: The battery; a test may hold it and change its values.
        period: Seconds between VE.Direct block pairs (a real device sends one a second).
    """

    device: BmsDevice

    def __init__(
        self,
        path: str | os.PathLike[str],
        kind: str,
        model: BmsModel | None = None,
        *,
        period: float = 1.0,
    ) -> None:
        self.link = SerialLink(path)
        self.device = BmsDevice(self.link.device_path, kind, model, period=period)

    @property
    def model(self) -> BmsModel:
        """The simulated battery."""
        return self.device.model

    @property
    def fault(self) -> BmsFault | None:
        """How the device misbehaves; None: it behaves."""
        return self.device.fault

    @fault.setter
    def fault(self, value: BmsFault | None) -> None:
        self.device.fault = value
