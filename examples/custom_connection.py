"""A custom connection type: an async driver for a line-protocol device, registered by name.

A driver only speaks the protocol: open and close the link, answer a health
check with a real request, read and write tags. It never sleeps, retries or
decides states; the manager's supervisor does all of that. This one talks to
a simulated PING/PONG device (`edgelink.testing.PingPongPeer`) that the
example starts on a free loopback port.

Run: ``python examples/custom_connection.py``
"""

import asyncio
import contextlib
from typing import Any

from edgelink import ConnectError, Connection, ConnectionManager, DeviceError
from edgelink.testing import PingPongPeer


class LineDevice(Connection):
    """One request line out, one answer line back (``PING`` -> ``PONG``, ``tag?`` -> value)."""

    type_name = "line_device"

    def __init__(self, connection_id: str, config: Any, context: Any = None) -> None:
        super().__init__(connection_id, config, context)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        # The health check and user requests share one socket: one request at a time.
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_connection(
                self.config["host"], self.config["port"]
            )
        except OSError as exc:
            raise ConnectError(str(exc), connection_id=self.connection_id) from exc

    async def disconnect(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def is_connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def health_check(self) -> bool:
        return await self.request("PING") == "PONG"

    async def read(self, tag: str) -> str:
        return await self.request(f"{tag}?")

    async def write(self, tag: str, value: Any) -> None:
        answer = await self.request(f"{tag}={value}")
        if answer != "OK":
            raise DeviceError(answer, connection_id=self.connection_id)

    async def request(self, line: str) -> str:
        """Send one line and return the answer line."""
        async with self._lock:
            if self._reader is None or self._writer is None:
                raise ConnectError("not connected", connection_id=self.connection_id)
            data = (line + "\n").encode()
            self._writer.write(data)
            await self._writer.drain()
            answer = await self._reader.readline()
            if not answer:
                raise ConnectError("device closed the link", connection_id=self.connection_id)
        self.update_stats(
            packets_sent=1, bytes_sent=len(data), packets_received=1, bytes_received=len(answer)
        )
        return answer.decode().strip()


async def main() -> None:
    async with PingPongPeer(values={"temperature": "21.5"}) as device:
        manager = ConnectionManager(health_check_interval=2, connect_timeout=2)
        manager.register_connection_type("line_device", LineDevice)
        manager.add_connection(
            "sensor_1", "line_device", {"host": "127.0.0.1", "port": device.port}, name="Sensor 1"
        )
        manager.on_event("connected", lambda ev: print("connected:", ev.connection.connection_id))
        async with manager:
            await manager.wait_for_state("sensor_1", "connected", timeout=10)
            await manager.events.drain()  # let the "connected" callback print first
            await manager.execute_with_retry("sensor_1", lambda c: c.write("setpoint", 42))
            setpoint = await manager.execute_with_retry("sensor_1", lambda c: c.read("setpoint"))
            print("setpoint:", setpoint)
            try:
                await manager.execute_with_retry("sensor_1", lambda c: c.write("bad tag", 1))
            except DeviceError as exc:
                # The device said no: the link stays up and nothing is retried.
                print("device said no:", exc)
            status = manager.get_status("sensor_1")
            print(
                f"status: {status['type']} {status['status']} "
                f"packets_sent={status['stats']['packets_sent']}"
            )
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
