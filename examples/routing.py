"""Routing: a value from one device, checked and transformed, written to another.

Two simulated PING/PONG devices on loopback: ``sensor`` is polled for its
temperature; a route writes twice the temperature to ``heater``'s setpoint
whenever it is above 20 °C, and logs every reading. The router's data space
and route counters show what happened.

Run: ``python examples/routing.py``
"""

import asyncio
import logging

from edgelink import ConnectionManager
from edgelink.testing import PingPongPeer

ROUTES = {
    "version": "1.0",
    "routes": [
        {
            "id": "sensor_to_heater",
            "from": "sensor.temperature",
            "to": "heater.setpoint",
            "condition": "value > 20 and quality == 'good'",
            "transform": "scale(2) | round(1)",
        },
        {"id": "audit", "from": "sensor.*", "to": "log.audit"},
    ],
}


async def wait_for(predicate, timeout: float = 10.0) -> None:
    """Check ``predicate`` every 50 ms, for at most ``timeout`` seconds."""
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the example's devices did not get there in time")


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("edgelink.router.log").setLevel(logging.INFO)
    async with (
        PingPongPeer(values={"temperature": "21.5"}) as sensor,
        PingPongPeer() as heater,
        ConnectionManager() as manager,
    ):
        manager.add_connection(
            "sensor",
            "tcp",
            {"host": "127.0.0.1", "port": sensor.port},
            poll=[{"tags": ["temperature"], "interval": 0.2}],
        )
        manager.add_connection("heater", "tcp", {"host": "127.0.0.1", "port": heater.port})
        manager.router.load_routes(ROUTES)
        await wait_for(lambda: "setpoint" in heater.values)
        print("heater setpoint:", heater.values["setpoint"])
        sensor.values["temperature"] = "18.0"  # too cold: the condition holds the write back
        await wait_for(lambda: manager.router.route_stats("sensor_to_heater")["filtered"] > 0)
        await manager.router.drain()
        last = manager.router.data.get("sensor.temperature")
        print("last reading:", last.value if last else None)
        stats = manager.router.route_stats("sensor_to_heater")
        print(f"route: passed={stats['passed'] > 0} filtered={stats['filtered'] > 0}")
        print("heater setpoint still:", heater.values["setpoint"])
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
