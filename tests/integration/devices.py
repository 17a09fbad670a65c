"""Driver subclasses the supervisor tests use against a real PingPongPeer.

They speak the ordinary line protocol; what the device "says" is set through
the peer's values, so every behaviour crosses a real socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from edgelink.drivers.tcp import TcpConnection
from edgelink.errors import AuthError, ConfigError, DeviceError, DeviceSleepError


class ModalDevice(TcpConnection):
    """A tcp device whose health check reads ``mode``: SLEEP sleeps, DENIED is an auth error."""

    type_name = "modal"

    async def health_check(self) -> bool:
        mode = await self.read("mode")
        if mode == "SLEEP":
            raise DeviceSleepError("device sleeps", connection_id=self.connection_id)
        if mode == "DENIED":
            raise AuthError("auth failed: bad credentials", connection_id=self.connection_id)
        return mode == "OK"


class StubbornDevice(TcpConnection):
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


class CrashingDevice(TcpConnection):
    """A driver whose first connect raises a BaseException the supervisor cannot classify."""

    type_name = "crashing"
    crashes = 1

    async def connect(self) -> None:
        if CrashingDevice.crashes > 0:
            CrashingDevice.crashes -= 1
            raise DriverBug("boom")
        await super().connect()


class BatchDevice(TcpConnection):
    """A tcp device with a batched read: one ``read_many`` call per poll round.

    Tags starting with ``bad`` are refused by ``check_tag``; a tag the device
    answers with ``ERR`` maps to its `DeviceError`, as `Connection.read_many`
    promises.
    """

    type_name = "batch"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batches: list[tuple[str, ...]] = []

    def check_tag(self, tag: str) -> None:
        if tag.startswith("bad"):
            raise ConfigError(f"tag {tag!r} is not a tag of this device", path="tag")

    async def read_many(self, tags: Sequence[str]) -> dict[str, Any]:
        self.batches.append(tuple(tags))
        results: dict[str, Any] = {}
        for tag in tags:
            try:
                results[tag] = await self.read(tag)
            except DeviceError as exc:
                results[tag] = exc
        return results


class CrashingPoller(TcpConnection):
    """A driver whose read of ``temperature`` raises a BaseException ``crashes`` times.

    The exception escapes the poller's ``except Exception``: its task dies.
    """

    type_name = "crashing_poller"
    crashes = 1
    good_reads = 0

    async def read(self, tag: str) -> Any:
        if tag == "temperature" and CrashingPoller.crashes > 0:
            CrashingPoller.crashes -= 1
            raise DriverBug("poller boom")
        value = await super().read(tag)
        CrashingPoller.good_reads += 1
        return value
