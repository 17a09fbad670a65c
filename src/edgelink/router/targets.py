"""Where routed datapoints go: the `Target` interface and the built-in targets.

A target is anything with ``async def send(self, tag, dp)``. The router calls
it from one delivery task per target, in order, so a target never sees two
sends at once and a slow or failing target delays only itself. A target that
can take many datapoints at once also implements `Target.send_batch`.

Built in: `LogTarget` (``log.<name>``), `MemoryTarget` (tests, benchmarks),
and the connection-write target the router makes for each connection. The
MQTT bridge and webhooks implement `Target` too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from edgelink.lifecycle import AsyncResource
from edgelink.router.datapoint import DataPoint

__all__ = [
    "DirectWriter",
    "LogTarget",
    "MemoryTarget",
    "SendsData",
    "Target",
    "WriteNowait",
    "Writer",
]

#: ``writer(connection_id, tag, value)``: how the router writes to a connection.
Writer = Callable[[str, str, Any], Awaitable[None]]

#: ``write(tag, value)``: a connection's write that awaits nothing (it queues, as
#: the mqtt driver's `publish`); None, or the future of the peer's acknowledgement.
WriteNowait = Callable[[str, Any], "asyncio.Future[None] | None"]

#: ``direct_writer(connection_id)``: the connection's `WriteNowait` while it is
#: connected and its driver has one, else None (the router then takes `Writer`).
DirectWriter = Callable[[str], WriteNowait | None]


@runtime_checkable
class SendsData(Protocol):
    """What the router needs of a target: one async ``send``."""

    async def send(self, tag: str, dp: DataPoint) -> None:
        """Deliver one datapoint."""


class Target(AsyncResource):
    """Base class of targets: implement `send`; `send_batch` if many at once are cheaper.

    ``tag`` is the address at the target without its endpoint (for
    ``mqtt.broker_local.alarms/critical`` routed to the target registered as
    ``mqtt.broker_local``: ``alarms/critical``). ``dp`` is the routed datapoint:
    the source's address, timestamp, quality and source, the route's
    transformed value, and in ``dp.path`` the routes it passed.

    Example:
        class Webhook(Target):
            async def send(self, tag: str, dp: DataPoint) -> None:
                await client.post(url, json={"tag": tag, **dp.as_dict()})

        router.add_target("webhook.alerts", Webhook())

    Attributes:
        echo: True if what this target receives comes back into the router
            (a device write that the device then reports, an MQTT publish the
            broker connection receives again). The loop guard then recognizes
            the echo and carries its route path along.
    """

    echo: ClassVar[bool] = False

    async def send(self, tag: str, dp: DataPoint) -> None:
        """Deliver one datapoint. Raise to report a failure (counted on the route)."""
        raise NotImplementedError

    async def send_batch(self, items: Sequence[tuple[str, DataPoint]]) -> None:
        """Deliver several datapoints in order (default: `send` each).

        An exception counts as a failure of every datapoint in ``items``.
        """
        for tag, dp in items:
            await self.send(tag, dp)

    async def aclose(self) -> None:
        """Release what the target holds (called when it is removed)."""


class LogTarget(Target):
    """``log.<name>``: write every datapoint it gets to the ``edgelink.router.log.<name>`` logger.

    Args:
        name: The log's name (``system`` for ``log.system``).
        level: The logging level of the records.
    """

    def __init__(self, name: str, level: int = logging.INFO) -> None:
        self.name = name
        self.level = level
        self.logger = logging.getLogger(f"edgelink.router.log.{name}")

    async def send(self, tag: str, dp: DataPoint) -> None:
        """Write one record with the datapoint's fields as ``extra``."""
        self.logger.log(
            self.level,
            "%s = %r (quality=%s, route=%s)",
            dp.address,
            dp.value,
            dp.quality,
            dp.path[-1] if dp.path else None,
            extra={
                "address": dp.address,
                "value": dp.value,
                "quality": dp.quality,
                "source": dp.source,
                "route": dp.path[-1] if dp.path else None,
                "target_tag": tag,
                "dp_ts": dp.ts,
            },
        )

    async def send_batch(self, items: Sequence[tuple[str, DataPoint]]) -> None:
        """Log each item (a batch saves the per-item await)."""
        if not self.logger.isEnabledFor(self.level):
            return
        for tag, dp in items:
            await self.send(tag, dp)

    def __repr__(self) -> str:
        return f"<LogTarget {self.name} level={logging.getLevelName(self.level)}>"


class MemoryTarget(Target):
    """Keeps what it receives, in order: for tests and benchmarks.

    Attributes:
        items: Every ``(tag, datapoint)`` received, oldest first.
        fail: Set to an exception to make every send raise it.
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, DataPoint]] = []
        self.fail: BaseException | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def values(self) -> list[Any]:
        """The values received, oldest first."""
        return [dp.value for _, dp in self.items]

    def last(self, tag: str | None = None) -> DataPoint | None:
        """The last datapoint received (for ``tag``, if given)."""
        for t, dp in reversed(self.items):
            if tag is None or t == tag:
                found: DataPoint = dp
                return found
        return None

    async def send(self, tag: str, dp: DataPoint) -> None:
        """Keep one datapoint."""
        if self.fail is not None:
            raise self.fail
        self.items.append((tag, dp))
        self._wake()

    async def send_batch(self, items: Sequence[tuple[str, DataPoint]]) -> None:
        """Keep many at once."""
        if self.fail is not None:
            raise self.fail
        self.items.extend(items)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        if not self._waiters:
            return
        keep = []
        for count, fut in self._waiters:
            if len(self.items) >= count:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((count, fut))
        self._waiters = keep

    async def wait_for(self, count: int = 1, timeout: float | None = 5.0) -> None:
        """Return once at least ``count`` datapoints have arrived.

        Raises:
            TimeoutError: if they do not within ``timeout`` seconds.
        """
        if len(self.items) >= count:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((count, fut))
        async with asyncio.timeout(timeout):
            await fut

    def clear(self) -> None:
        """Forget what was received."""
        self.items.clear()

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"<MemoryTarget items={len(self.items)}>"


class ConnectionTarget(Target):
    """Writes to a connection through the writer the manager hands the router.

    Its deliveries come back when the device reports the new value, so it is
    an echo target. While the connection is up and its driver writes without
    awaiting (``write_nowait``, as the mqtt driver's publish), the router
    hands it a whole batch in one loop turn through `direct` instead.
    """

    echo = True

    def __init__(
        self,
        connection_id: str,
        writer: Callable[[], Writer | None],
        direct: Callable[[], DirectWriter | None] | None = None,
    ) -> None:
        self.connection_id = connection_id
        self._writer = writer
        self._direct = direct

    def direct(self) -> WriteNowait | None:
        """The connection's non-blocking write while it is connected, else None."""
        lookup = self._direct() if self._direct is not None else None
        return None if lookup is None else lookup(self.connection_id)

    def check(self, tag: str, value: Any) -> None:
        """Refuse what is never written.

        Raises:
            ValueError: for an empty tag or a null value (a failed read).
        """
        if not tag:
            raise ValueError(f"a write to connection {self.connection_id!r} needs a tag")
        if value is None:
            # A failed read reports null; writing "None" to a device is never meant.
            raise ValueError(f"nothing to write to {self.connection_id}.{tag}: the value is null")

    async def send(self, tag: str, dp: DataPoint) -> None:
        """Write ``dp.value`` to ``tag`` of the connection.

        Raises:
            RuntimeError: if the router has no writer (it runs without a manager).
            ValueError: for an empty tag or a null value (a failed read).
        """
        writer = self._writer()
        if writer is None:
            raise RuntimeError(
                f"cannot write to {self.connection_id!r}: the router has no connection writer"
            )
        self.check(tag, dp.value)
        await writer(self.connection_id, tag, dp.value)

    def __repr__(self) -> str:
        return f"<ConnectionTarget {self.connection_id}>"
