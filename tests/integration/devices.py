"""Driver subclasses the supervisor tests use against a real PingPongPeer.

They speak the ordinary line protocol; what the device "says" is set through
the peer's values, so every behaviour crosses a real socket.
"""

from __future__ import annotations

import asyncio

from edgelink.drivers.tcp import TCPConnection
from edgelink.errors import DeviceSleepError, PermanentError


class ModalDevice(TCPConnection):
    """A tcp device whose health check reads ``mode``: SLEEP sleeps, DENIED is an auth error."""

    type_name = "modal"

    async def health_check(self) -> bool:
        mode = await self.read("mode")
        if mode == "SLEEP":
            raise DeviceSleepError("device sleeps", connection_id=self.connection_id)
        if mode == "DENIED":
            raise PermanentError("auth failed: bad credentials", connection_id=self.connection_id)
        return mode == "OK"


class StubbornDevice(TCPConnection):
    """A driver bug: connect() swallows cancellation and hangs once ``hang`` is set."""

    type_name = "stubborn"
    hang = False

    async def connect(self) -> None:
        if StubbornDevice.hang:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3.0
            cancelled = False
            while loop.time() < deadline and StubbornDevice.hang:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    cancelled = True  # the bug under test: ignored for a while
            if cancelled:
                raise asyncio.CancelledError
        await super().connect()


class DriverBug(BaseException):
    """Escapes ``except Exception``: what a badly broken driver could throw."""


class CrashingDevice(TCPConnection):
    """A driver whose first connect raises a BaseException the supervisor cannot classify."""

    type_name = "crashing"
    crashes = 1

    async def connect(self) -> None:
        if CrashingDevice.crashes > 0:
            CrashingDevice.crashes -= 1
            raise DriverBug("boom")
        await super().connect()
