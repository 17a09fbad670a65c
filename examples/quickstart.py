"""Quick start: supervise one device, read a value, print its status.

The README's library example, runnable as is: it starts its own simulated
PING/PONG device (`edgelink.testing.PingPongPeer`) on a free loopback port,
so there is something to connect to. With a real device, drop the peer and
put its host and port in ``add_connection``.

Run: ``python examples/quickstart.py``
"""

import asyncio

from edgelink import ConnectionManager, Event
from edgelink.testing import PingPongPeer


def on_disconnected(ev: Event) -> None:
    # Leaving the ``async with`` disconnects too (reason "shutdown"): that is no loss.
    if ev.data.get("reason") != "shutdown":
        print("lost", ev.connection_id)


async def main() -> None:
    async with (
        PingPongPeer(values={"temperature": "21.5"}) as device,
        ConnectionManager(health_check_interval=5) as manager,
    ):
        manager.add_connection("dev1", "tcp", {"host": "127.0.0.1", "port": device.port})
        manager.on_event("disconnected", on_disconnected)
        await manager.wait_for_state("dev1", "connected", timeout=10)
        value = await manager.execute_with_retry("dev1", lambda c: c.read("temperature"))
        print("temperature:", value)
        status = manager.get_status("dev1")
        print(
            f"status: {status['status']} health={status['health']} "
            f"packets_sent={status['stats']['packets_sent']}"
        )
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
