"""The public test kit: a manual clock, fault injection and loopback peers.

For edgelink's own tests and for yours::

    from edgelink.testing import FaultMode, FaultProxy, ManualClock, PingPongPeer, eventually

Serial peers (socat pty pairs): `edgelink.testing.serial_peer.SerialPeer` (a
line-protocol device) and `edgelink.testing.bms_peer.BmsPeer` (a Daly, JBD or
Victron BMS).
"""

from edgelink.sim.zkteco import ZkDevice, ZkFault, ZkSimulator
from edgelink.testing.clock import ManualClock
from edgelink.testing.fault_proxy import Direction, FaultMode, FaultProxy
from edgelink.testing.peers import PingPongPeer
from edgelink.testing.waiting import eventually

__all__ = [
    "Direction",
    "FaultMode",
    "FaultProxy",
    "ManualClock",
    "PingPongPeer",
    "ZkDevice",
    "ZkFault",
    "ZkSimulator",
    "eventually",
]
