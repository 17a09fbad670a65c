"""The tcp driver with the TCP simulator, and an isolated connection's IPC, on uvloop.

``edgelink run --loop uvloop`` runs the gateway on uvloop, whose transports
are no subclasses of asyncio's: nothing on these paths may assume they are.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any

import uvloop

from edgelink import ConnectionManager
from edgelink.isolation.parent import ProcessConnection
from edgelink.sim.tcp import TcpSimulator


def run_on_uvloop(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def test_tcp_driver_and_simulator_and_an_isolated_connection_on_uvloop() -> None:
    """Test a tcp connection in process and one in a child process, both on uvloop."""

    async def main() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with TcpSimulator(2) as sim:
            manager = ConnectionManager(connect_timeout=10.0, request_timeout=5.0)
            manager.add_connection("local", "tcp", {"host": "127.0.0.1", "port": sim.ports[0]})
            manager.add_connection(
                "iso",
                "tcp",
                {"host": "127.0.0.1", "port": sim.ports[1]},
                isolation={"mode": "process", "heartbeat_interval": 0.5},
            )
            async with manager:
                await manager.wait_for_state("local", "connected", timeout=10)
                await manager.wait_for_state("iso", "connected", timeout=15)
                child = manager.get_connection("iso")
                assert isinstance(child, ProcessConnection) and child.pid != os.getpid()
                for cid in ("local", "iso"):
                    value = await manager.execute_with_retry(cid, lambda c: c.read("temperature"))
                    assert value is not None

    run_on_uvloop(main())
