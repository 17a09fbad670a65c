"""The registry, the service, the zkteco driver and its simulator on uvloop (the service may run it)."""

from __future__ import annotations

import asyncio

import uvloop

from device_registry.registry_kit import FAST, row
from edgelink import ConnectionManager
from edgelink.devices import DeviceConnectionService, DeviceRegistry
from edgelink.drivers.zk_protocol import Command
from edgelink.drivers.zkteco import ZktecoConnection
from edgelink.testing import ZkDevice, ZkSimulator


def test_driver_and_simulator_on_uvloop() -> None:
    """Test a TCP session and a polite close with uvloop's transports (no asyncio.Transport)."""

    async def main() -> None:
        async with ZkSimulator() as sim:
            conn = ZktecoConnection("door", {"host": "127.0.0.1", "port": sim.port})
            await conn.connect()
            assert type(conn._transport).__module__.startswith("uvloop")
            assert await conn.read("user_count") == 10
            await conn.disconnect()
            async with asyncio.timeout(5):
                while sim.connections:
                    await asyncio.sleep(0.01)
            assert sim.count(Command.EXIT) == 1

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_registry_and_service_on_uvloop(db_url: str) -> None:
    """Test that rows become connections and get_connection answers on a uvloop loop."""

    async def main() -> None:
        async with (
            ZkSimulator(device=ZkDevice(comm_key=4242)) as sim,
            ConnectionManager(**FAST) as manager,
            DeviceRegistry(db_url, manager=manager) as registry,
        ):
            device = await registry.add_device(**row(sim))
            conn = await DeviceConnectionService(registry).get_connection(device)
            assert conn is not None
            assert (await conn.device_info())["platform"] == "ZEM560_TFT"

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
