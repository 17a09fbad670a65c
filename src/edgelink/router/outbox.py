"""The outboxes: one queue and one delivery task per target, with delivery deadlines.

A connection whose driver writes without awaiting (the mqtt driver's publish)
takes the direct path while it is connected: a datapoint for an idle outbox
is written at once (`Delivery._write_now`: the driver batches its socket
writes per loop turn), what queued behind a running delivery is written in
one callback (`Delivery._flush_direct`); no task, coroutine or deadline per
datapoint. A connection that is down, a write that finds the
link gone and a write that waits for an acknowledgement go on in a delivery
task (``execute_with_retry`` through the writer, one ack wait per batch).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from edgelink._deadline import DeadlineWheel
from edgelink._tasks import cancel_and_wait
from edgelink.errors import ConnectError, EdgelinkError
from edgelink.router.datapoint import DataPoint
from edgelink.router.quarantine import Quarantine
from edgelink.router.table import LOG_EVERY
from edgelink.router.targets import ConnectionTarget, SendsData, Target, WriteNowait

#: One logger for the whole router (its records keep the name they always had).
logger = logging.getLogger("edgelink.router.engine")

_Item = tuple[str, DataPoint]
#: What the direct path left: (items awaiting an acknowledgement, items for the writer).
_Left = tuple[list[tuple[_Item, "asyncio.Future[None]"]], list[_Item]]


class Outbox:
    """The queue and delivery task of one target."""

    __slots__ = (
        "_last_log",
        "batched",
        "direct",
        "dropped",
        "echo",
        "endpoint",
        "errors",
        "failing",
        "idle",
        "kind",
        "last_error",
        "limit",
        "queue",
        "sent",
        "target",
        "task",
    )

    def __init__(self, endpoint: str, target: SendsData, kind: str, limit: int) -> None:
        self.endpoint = endpoint
        self.target = target
        self.kind = kind
        self.queue: list[tuple[str, DataPoint]] = []
        self.task: asyncio.Task[None] | None = None
        self.idle = True
        send_batch = getattr(type(target), "send_batch", None)
        self.batched = send_batch is not None and send_batch is not Target.send_batch
        #: A connection's target: its batches go through its non-blocking write when it has one.
        self.direct = target if isinstance(target, ConnectionTarget) else None
        self.echo = bool(getattr(target, "echo", False))
        self.limit = limit
        self.sent = 0
        self.errors = 0
        self.dropped = 0
        self.failing = False
        self.last_error: str | None = None
        self._last_log = -LOG_EVERY

    def address_of(self, tag: str) -> str:
        """The full address of ``tag`` at this endpoint."""
        return f"{self.endpoint}.{tag}" if tag else self.endpoint

    def trim(self) -> None:
        """Drop the oldest tenth of the queue (counted): the queue is over its limit."""
        # Over the limit: the oldest tenth goes, so trimming is amortized O(1).
        cut = max(1, self.limit // 10)
        del self.queue[:cut]
        self.dropped += cut

    def stats(self) -> dict[str, Any]:
        """The outbox's counters (`Router.target_stats`)."""
        return {
            "endpoint": self.endpoint,
            "kind": self.kind,
            "sent": self.sent,
            "errors": self.errors,
            "dropped": self.dropped,
            "pending": len(self.queue),
            "failing": self.failing,
            "last_error": self.last_error,
        }


class Delivery(Quarantine):
    """The Router's delivery of its outboxes (a part of `Router`)."""

    # Set by Router.__init__ (see `Quarantine`).
    _outboxes: dict[str, Outbox]
    _retired: set[Outbox]
    _deadlines: DeadlineWheel
    delivery_timeout: float | None

    def _delivery_failed(
        self, ob: Outbox, items: list[tuple[str, DataPoint]], exc: BaseException
    ) -> None:
        ob.errors += len(items)
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        ob.last_error = text
        if not isinstance(exc, EdgelinkError | OSError | TimeoutError):
            # The handler crashed on these datapoints (not a link or device failure).
            now = self._monotonic()
            for source in {dp.source for _, dp in items}:
                self._strike_source(source, f"target {ob.endpoint}: {text}", now)
        by_id = self._table.by_id
        for _, dp in items:
            if dp.path:
                route = by_id.get(dp.path[-1])
                if route is not None:
                    route.delivery_errors += 1
                    route.last_error = f"delivery to {ob.endpoint}: {text}"
        now = self._monotonic()
        if not ob.failing or now - ob._last_log >= LOG_EVERY:
            ob._last_log = now
            logger.warning(
                "target %s: delivery failed (%d so far): %s", ob.endpoint, ob.errors, text
            )
        ob.failing = True

    def _delivery_ok(self, ob: Outbox) -> None:
        ob.failing = False
        logger.info("target %s: deliveries work again", ob.endpoint)

    def _start(self, ob: Outbox) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: drain() starts it
        ob.idle = False
        if ob.direct is not None:
            loop.call_soon(self._flush_direct, ob)
        else:
            self._start_task(ob, None)

    def _write_now(self, ob: Outbox, item: _Item) -> None:
        """Write one datapoint to an idle connection's outbox at once (the direct path).

        The driver's non-blocking write only queues (the mqtt driver sends
        what a loop turn queued in one socket write, in the same turn when a
        received message caused it), so no loop turn is spent waiting for a
        batch here. What the write leaves (an acknowledgement to await, a
        link that is down) goes on in a delivery task, as a batch's would.
        """
        left = self._write_direct(ob, [item])
        if left is None:
            return
        if left[0]:
            self._start_task(ob, left)
        else:
            ob.queue.extend(left[1])
            self._start(ob)

    def _start_task(self, ob: Outbox, left: _Left | None) -> None:
        ob.idle = False
        ob.task = asyncio.get_running_loop().create_task(
            self._run_outbox(ob, left), name=f"edgelink.router[{ob.endpoint}].deliver"
        )

    def _flush_direct(self, ob: Outbox) -> None:
        """Write what a loop turn queued for a connection, at once (scheduled by `_start`)."""
        if ob.task is not None:
            return  # drain() started a task meanwhile: it delivers the queue
        left = None
        if ob.queue:
            batch, ob.queue = ob.queue, []
            left = self._write_direct(ob, batch)
        if left is not None:
            self._start_task(ob, left)
        elif ob.queue:
            self._start_task(ob, None)  # a subscriber queued more while it ran
        else:
            ob.idle = True
            self._retired.discard(ob)

    def _write_direct(self, ob: Outbox, batch: list[_Item]) -> _Left | None:
        """Write ``batch`` through the connection's non-blocking write; return what is left.

        None when everything is settled; else the writes awaiting an
        acknowledgement and the items the writer must take (all of them if
        the link is down: ``execute_with_retry`` waits for it).
        """
        assert ob.direct is not None
        write: WriteNowait | None = ob.direct.direct()
        if write is None:
            return [], batch
        check = ob.direct.check
        acks: list[tuple[_Item, asyncio.Future[None]]] = []
        sent = 0
        for i, item in enumerate(batch):
            tag, dp = item
            try:
                value = dp[1]
                check(tag, value)
                ack = write(tag, value)
            except ConnectError:
                # The link went down under us: the writer retries on the next one.
                ob.sent += sent
                return acks, batch[i:]
            except Exception as exc:  # noqa: BLE001 - a failing write fails alone
                self._delivery_failed(ob, [item], exc)
                continue
            if ack is None:
                sent += 1
            else:
                acks.append((item, ack))
        if sent:
            ob.sent += sent
            if ob.failing:
                self._delivery_ok(ob)
        return (acks, []) if acks else None

    async def _settle(self, ob: Outbox, left: _Left) -> None:
        """Wait for the acknowledgements of direct writes (one wait per batch), then the rest."""
        acks, rest = left
        if acks:
            retry: list[_Item] = []
            try:
                await asyncio.wait([ack for _, ack in acks], timeout=self.delivery_timeout)
            except asyncio.CancelledError:
                ob.dropped += sum(1 for _, ack in acks if not ack.done()) + len(rest)
                raise
            ok = 0
            for item, ack in acks:
                if not ack.done():
                    self._delivery_failed(ob, [item], TimeoutError("no acknowledgement in time"))
                elif ack.cancelled():
                    self._delivery_failed(ob, [item], ConnectError("the write was cancelled"))
                elif (exc := ack.exception()) is None:
                    ok += 1
                elif isinstance(exc, ConnectError):
                    retry.append(item)  # the link went before the ack: the writer sends again
                else:
                    self._delivery_failed(ob, [item], exc)
            if ok:
                ob.sent += ok
                if ob.failing:
                    self._delivery_ok(ob)
            rest = retry + rest
        if rest:
            await self._deliver(ob, rest)

    async def _run_outbox(self, ob: Outbox, left: _Left | None = None) -> None:
        try:
            if left is not None:
                await self._settle(ob, left)
            while ob.queue:
                batch, ob.queue = ob.queue, []
                if ob.direct is None:
                    await self._deliver(ob, batch)
                    continue
                left = self._write_direct(ob, batch)
                if left is not None:
                    await self._settle(ob, left)
        finally:
            ob.task = None
            ob.idle = True
            if not ob.queue:
                # A removed target is forgotten once it has delivered what it had.
                self._retired.discard(ob)

    async def _deliver(self, ob: Outbox, batch: list[tuple[str, DataPoint]]) -> None:
        target = ob.target
        timeout = self.delivery_timeout
        deadline = self._deadlines.timeout
        if ob.batched:
            try:
                with deadline(timeout):
                    await target.send_batch(batch)  # type: ignore[attr-defined]
            except asyncio.CancelledError:
                ob.dropped += len(batch)
                raise
            except Exception as exc:  # noqa: BLE001 - a failing target fails alone
                self._delivery_failed(ob, batch, exc)
                return
            ob.sent += len(batch)
            if ob.failing:
                self._delivery_ok(ob)
            return
        send = target.send
        done = 0
        try:
            for tag, dp in batch:
                try:
                    with deadline(timeout):
                        await send(tag, dp)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a failing target fails alone
                    self._delivery_failed(ob, [(tag, dp)], exc)
                else:
                    ob.sent += 1
                    if ob.failing:
                        self._delivery_ok(ob)
                done += 1
        except asyncio.CancelledError:
            ob.dropped += len(batch) - done
            raise

    def _all_outboxes(self) -> list[Outbox]:
        return [*self._outboxes.values(), *self._retired]

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every scheduled delivery has finished (and what those scheduled).

        Raises:
            TimeoutError: if deliveries are still running after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                busy = [ob for ob in self._all_outboxes() if ob.queue or ob.task is not None]
                if not busy:
                    return
                for ob in busy:
                    if ob.task is None:
                        self._start_task(ob, None)
                tasks = [ob.task for ob in busy if ob.task is not None]
                await asyncio.wait(tasks)

    async def aclose(self) -> None:
        """Cancel every delivery still running; what was queued is dropped (and counted)."""
        outboxes = self._all_outboxes()
        tasks = [ob.task for ob in outboxes if ob.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            await cancel_and_wait(task)
        for ob in outboxes:
            ob.dropped += len(ob.queue)
            ob.queue = []
            ob.idle = True
        self._retired.clear()
