"""Poll two simulated inverters behind one Modbus TCP gateway, then change a setting.

Runs on its own: it starts the Modbus simulator in this process (two unit ids
on one port, like two inverters behind a gateway), supervises one
``modbus_tcp`` connection per unit (they share one TCP link), polls their
power and battery registers, and writes a power limit.
"""

from __future__ import annotations

import asyncio
from typing import Any

from edgelink import ConnectionManager
from edgelink.drivers.modbus import ModbusTcpConnection
from edgelink.sim.modbus import ModbusSimulator

TAGS = {
    "ir:1:float32": "AC power, W",
    "ir:3*0.1": "AC voltage, V",
    "ir:8*0.1": "battery SoC, %",
    "ir:11:float32": "battery power, W",
}


async def main() -> None:
    async with ModbusSimulator(1, units=2, seed=1) as sim:
        port = sim.ports[0]
        config = {
            "settings": {"health_check_interval": 5},
            "connections": {
                f"inverter_{unit}": {
                    "type": "modbus_tcp",
                    "config": {"host": "127.0.0.1", "port": port, "unit_id": unit},
                    "poll": [{"tags": list(TAGS), "interval": 0.2}],
                }
                for unit in (1, 2)
            },
        }
        latest: dict[tuple[str, str], Any] = {}
        all_in = asyncio.Event()

        def on_data(cid: str, tag: str, value: Any, quality: str, ts: float) -> None:
            latest[(cid, tag)] = value
            if len(latest) == 2 * len(TAGS):
                all_in.set()

        manager = ConnectionManager.from_config(config)
        manager.on_data(on_data)
        async with manager:
            for cid in ("inverter_1", "inverter_2"):
                await manager.wait_for_state(cid, "connected", timeout=10)
            print("connected: inverter_1, inverter_2")
            await asyncio.wait_for(all_in.wait(), 10)
            for cid in ("inverter_1", "inverter_2"):
                for tag, meaning in TAGS.items():
                    print(f"{cid} {tag:<14} {meaning:<17} {latest[(cid, tag)]:.1f}")

            # Limit inverter 1 to 10 % of its 5 kW and read it back.
            await manager.execute_with_retry("inverter_1", lambda c: c.write("hr:0", 10))
            limit = await manager.execute_with_retry("inverter_1", lambda c: c.read("40001"))
            power = await manager.execute_with_retry("inverter_1", lambda c: c.read("ir:1:float32"))
            print(f"power limit: {limit} %, AC power now {power:.0f} W (at most 500)")

            one, two = (manager.get_connection(f"inverter_{u}") for u in (1, 2))
            assert isinstance(one, ModbusTcpConnection)
            assert isinstance(two, ModbusTcpConnection)
            same = one.bus is two.bus
            print(f"one TCP link for both units: {'yes' if same else 'no'}")
            for cid in ("inverter_1", "inverter_2"):
                st = manager.get_status(cid)
                sent = st["stats"]["packets_sent"]
                print(f"{cid}: {st['status']} health={st['health']} requests={sent}")
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
