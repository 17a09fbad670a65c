"""The MQTT bridge: every datapoint mirrored to a broker for Node-RED, ``/set`` back to devices.

It publishes through one of the configured ``mqtt`` connections, so the link
is supervised like any other (reconnect, health, status):

- every datapoint of the data space goes to ``{base}/{source}/{tag}`` with the
  dots of the tag as ``/`` (``smarthome/plc_1/MAIN/temperature``), payload
  ``{"value", "ts", "quality"}``, retained and with the configured QoS; a
  datapoint that is not good adds ``"reason"`` and ``"since"`` when known
  (a lost link's values are re-published once as ``"quality": "stale"``,
  with the last value and its ``ts``); what MQTT forbids in a level is
  escaped reversibly (`edgelink.bridge.topics`);
- a message to ``{base}/{source}/{tag}/set`` writes its value to that device
  (through `ConnectionManager.execute_with_retry`); the outcome is published
  to ``.../set/result`` as ``{"ok": true, "value": ...}`` or ``{"ok": false,
  "error": ...}``;
- ``{base}/status`` is ``online`` (retained) while the bridge runs and
  ``offline`` after it stops or, as the broker connection's last will, when
  the gateway vanishes;
- what the broker delivers under the base topic is never mirrored back (no
  echo loops);
- datapoints listed in ``bridge.discovery`` are announced to Home Assistant
  (MQTT discovery: a retained sensor config under ``homeassistant/sensor/``)
  on every connect.

While the broker is away, datapoints go to the SQLite `UplinkBuffer` (bounded
by count and age, oldest dropped first and counted) and are flushed in order
when it is back; the live path resumes only once the buffer is empty, so
per-topic order holds. With QoS 1 or 2 a message counts as delivered only
when the broker acknowledged it: messages in flight when the link died go
back into the buffer ahead of newer ones (at-least-once: a message may arrive
twice, never out of order, never not at all). With QoS 0 what sat in the
socket when the link died is lost, as QoS 0 allows.

A message the client or the broker refuses (a topic over MQTT's limit, an
MQTT 5 PUBACK with a failure reason such as 0x87 "not authorized") never
blocks the ones behind it, on the live path or in the flush: it goes to the
SQLite `DeadLetters` table, is counted in ``errors`` and ``dead_letters`` and
evented (``bridge_dead_letter``). With MQTT 3.1.1 a broker cannot refuse a
publish: mosquitto acknowledges a publish its ACL denies and drops it, so the
bridge cannot see it; use ``protocol: "5"`` on the bridge connection to learn
of refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgelink._tasks import cancel_and_wait
from edgelink.bridge.topics import TopicError, decode_address, encode_topic
from edgelink.errors import ConnectError, DeviceError, EdgelinkError
from edgelink.events import Event
from edgelink.lifecycle import Service
from edgelink.router.datapoint import DataPoint, quality_detail
from edgelink.router.wire import WireEncoder
from edgelink.store import BufferedMessage, DeadLetters, UplinkBuffer

if TYPE_CHECKING:
    from edgelink.bridge.settings import BridgeSettings
    from edgelink.manager import ConnectionManager
    from edgelink.router.engine import Router

__all__ = ["MAX_SET_DEPTH", "MqttBridge", "bridge_will"]

logger = logging.getLogger(__name__)

#: ``/set`` topics are subscribed for tags up to this many levels deep
#: (MQTT's ``#`` must end a filter, so ``{base}/+/.../set`` is one filter per depth).
MAX_SET_DEPTH = 10
#: Messages written to SQLite, or flushed from it, per transaction.
BATCH = 500
#: Publishes of one message the broker refused for a passing reason (the first included).
ATTEMPTS = 3
#: MQTT 5 PUBACK reasons that may pass: unspecified error, packet identifier in
#: use, quota exceeded. Such a message is published again at once, up to
#: `ATTEMPTS` times, unless a newer message for its topic went out meanwhile
#: (publishing the old value again would overwrite the newer retained one).
#: Every other failure reason (0x87 not authorized, 0x90 topic name invalid,
#: 0x99 payload format invalid, 0x83 implementation specific, ...) says the
#: same message will be refused again: it is dead-lettered at once, as is a
#: message the client itself cannot send (no retry can change its topic). A
#: full paho queue is not a refusal of one message but back-pressure: the
#: bridge buffers and the flush tries again, nothing is dead-lettered for it.
TRANSIENT_REASONS = frozenset({0x80, 0x91, 0x97})
#: Link losses in a row with the same buffered message unanswered at the head of
#: the flush before it is dead-lettered: a broker may close the connection
#: instead of refusing one message (MQTT 5 allows it), which would otherwise
#: make the flush start over with that message forever. After the first loss
#: the suspect is sent alone, so only its own answer (or none) counts; a loss
#: while others were in flight too is an ordinary outage and starts over at 1.
LINK_LOSSES = 3
#: A topic's ``bridge_dead_letter`` event is recorded at most this often, s.
EVENT_EVERY_S = 60.0


def bridge_will(base_topic: str) -> dict[str, Any]:
    """The last will the bridge's broker connection gets: ``{base}/status`` = offline."""
    return {"topic": f"{base_topic}/status", "payload": "offline", "qos": 1, "retain": True}


class _InFlight:
    __slots__ = ("attempt", "done", "payload", "seq", "topic")

    def __init__(self, topic: str, payload: bytes, seq: int, attempt: int) -> None:
        self.topic = topic
        self.payload = payload
        self.seq = seq
        self.attempt = attempt
        self.done = False


def _queue_full(exc: DeviceError) -> bool:
    return "queue is full" in str(exc)


def _reason(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    text = str(exc)
    return f"{text} (0x{code:02X})" if isinstance(code, int) else text


class MqttBridge(Service):
    """Mirrors the data space to MQTT and takes ``/set`` commands back.

    Args:
        manager: The connection manager (owns the broker connection and the router).
        router: The router whose data space is mirrored.
        settings: The ``bridge`` section of ``edgelink.json``.
        buffer: Where messages wait while the broker is away.
        on_event: ``on_event(kind, **data)`` for what the service should record.
        dead_letters: Where refused messages go (default: a table in the buffer's database).
    """

    def __init__(
        self,
        manager: ConnectionManager,
        router: Router,
        settings: BridgeSettings,
        buffer: UplinkBuffer,
        *,
        on_event: Callable[..., None] | None = None,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        if settings.connection is None:
            raise ValueError("the bridge needs bridge.connection")
        self.connection_id = settings.connection
        self.base = settings.base_topic.rstrip("/")
        self.qos = settings.qos
        self.retain = settings.retain
        self._manager = manager
        self._router = router
        self._buffer = buffer
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetters(buffer.db)
        self._on_event = on_event
        self._echo_prefix = f"{self.connection_id}.{self.base}/"
        self._discovery = tuple(settings.discovery)
        self._discovery_prefix = settings.discovery_prefix.rstrip("/")
        self._encoder = WireEncoder("bridge")
        self._live = False
        self._paused = False
        self._pending: list[tuple[str, bytes]] = []
        self._inflight: deque[_InFlight] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._offs: list[Callable[[], None]] = []
        self._dead: list[tuple[str, bytes, int, bool, str]] = []
        self._dead_evented: dict[str, float] = {}
        self._drops_to_report = 0
        self._seq = 0
        self._topic_seq: dict[str, int] = {}
        self._head_losses = (0, 0)  # (buffer id, link losses in a row with it unanswered)
        self.published = 0
        self.retried = 0
        self.buffered = 0
        self.flushed = 0
        self.set_commands = 0
        self.errors = 0

    @property
    def depth(self) -> int:
        """Messages waiting: in SQLite plus not yet written there."""
        return len(self._buffer) + len(self._pending)

    @property
    def dropped(self) -> int:
        """Messages the bounded buffer dropped (oldest first), ever."""
        return self._buffer.dropped

    def stats(self) -> dict[str, Any]:
        """Counters for the API and metrics."""
        return {
            "connection": self.connection_id,
            "base_topic": self.base,
            "live": self._live,
            "published": self.published,
            "buffered": self.buffered,
            "flushed": self.flushed,
            "depth": self.depth,
            "dropped": self.dropped,
            "in_flight": len(self._inflight),
            "set_commands": self.set_commands,
            "errors": self.errors,
            "retried": self.retried,
            "dead_letters": self.dead_letters.total + len(self._dead),
            "dead_letters_dropped": self.dead_letters.dropped,
        }

    def __repr__(self) -> str:
        mode = "live" if self._live else "buffering"
        return f"<MqttBridge {self.connection_id} {self.base}/# {mode} depth={self.depth}>"

    def topic_for(self, dp: DataPoint) -> str:
        """Return the topic a datapoint is mirrored to.

        Raises:
            TopicError: if the topic would be longer than MQTT allows.
        """
        return encode_topic(self.base, dp.source, dp.tag)

    def state_topic(self, address: str) -> str:
        """Return the topic an address is mirrored to (its source: the longest endpoint).

        Raises:
            TopicError: if the topic would be longer than MQTT allows.
        """
        source, tag = self._router.resolve(address)
        if source is None:
            source, _, tag = address.partition(".")
        return encode_topic(self.base, source, tag)

    def discovery_messages(self) -> list[tuple[str, dict[str, Any]]]:
        """Return the Home Assistant discovery ``(topic, config)`` of each listed datapoint."""
        messages = []
        for entry in self._discovery:
            object_id = "edgelink_" + "".join(
                ch if ch.isalnum() else "_" for ch in entry.address
            ).strip("_")
            try:
                state_topic = self.state_topic(entry.address)
            except TopicError as exc:
                logger.warning("bridge: no discovery for %s: %s", entry.address, exc)
                continue
            config: dict[str, Any] = {
                "name": entry.name or entry.address,
                "unique_id": object_id,
                "object_id": object_id,
                "state_topic": state_topic,
                "value_template": "{{ value_json.value }}",
                "availability_topic": f"{self.base}/status",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
            optional = {
                "unit_of_measurement": entry.unit,
                "device_class": entry.device_class,
                "state_class": entry.state_class,
            }
            config.update({k: v for k, v in optional.items() if v is not None})
            messages.append((f"{self._discovery_prefix}/sensor/{object_id}/config", config))
        return messages

    def _driver(self) -> Any:
        driver = self._manager.get_connection(self.connection_id)
        if driver is None or not hasattr(driver, "publish") or not hasattr(driver, "subscribe"):
            raise ValueError(f"bridge.connection {self.connection_id!r} is not an mqtt connection")
        return driver

    async def start(self) -> None:
        """Subscribe the ``/set`` topics, start mirroring (idempotent).

        Raises:
            ValueError: if the bridge connection is missing or not ``mqtt``.
        """
        if self._task is not None:
            return
        await self._buffer.open()
        await self.dead_letters.open()
        driver = self._driver()
        for depth in range(1, MAX_SET_DEPTH + 1):
            driver.subscribe(f"{self.base}/+/{'+/' * depth}set", qos=1)
        self._offs.append(self._router.data.subscribe("**", self._on_datapoint, changes_only=False))
        self._offs.append(self._manager.on_event("connected", self._on_link_event))
        self._offs.append(self._manager.on_event("disconnected", self._on_link_event))
        self._task = asyncio.get_running_loop().create_task(
            self._run_uplink(), name=f"edgelink[{self.connection_id}].bridge"
        )
        self._arm_leak_warning()
        if self._manager.get_state(self.connection_id) == "connected":
            self._link_up()

    async def stop(self) -> None:
        """Publish ``offline``, stop mirroring; what is pending is kept in SQLite."""
        for off in self._offs:
            off()
        self._offs.clear()
        if self._live:
            with contextlib.suppress(EdgelinkError):
                self._driver().publish(f"{self.base}/status", "offline", qos=0, retain=True)
        self._live = False
        self._requeue_inflight()
        task, self._task = self._task, None
        self._disarm_leak_warning()
        if task is not None:
            await cancel_and_wait(task)
        for write in list(self._writes):
            write.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._store_pending()
        with contextlib.suppress(Exception):
            await self._store_dead()

    def pause(self) -> None:
        """Stop mirroring (panic): datapoints are neither published nor buffered."""
        self._paused = True

    def resume(self) -> None:
        """Mirror again after `pause`."""
        self._paused = False

    def _on_datapoint(self, dp: DataPoint) -> None:
        if dp.address.startswith(self._echo_prefix):
            # The broker delivered this under our base topic: a /set command or
            # our own mirror coming back, never something to mirror again.
            tag = dp.address[len(self.connection_id) + 1 :]
            if tag.endswith("/set"):
                self._on_set(tag, dp.value)
            return
        if self._paused:
            return
        body = {"value": dp.value, "ts": dp.ts, "quality": dp.quality}
        if dp.quality != "good":
            body.update(quality_detail(dp.metadata))
        payload = self._encoder.encode(body, dp.address).encode()
        try:
            topic = self.topic_for(dp)
        except TopicError as exc:
            shown = f"{self.base}/{dp.source}/{dp.tag}"
            self._dead_letter(shown[:1000], payload, self.qos, self.retain, str(exc))
            return
        self._send(topic, payload)

    def _send(self, topic: str, payload: bytes, attempt: int = 1) -> None:
        if self._live:
            try:
                fut = self._driver().publish(topic, payload, qos=self.qos, retain=self.retain)
            except DeviceError as exc:
                if not _queue_full(exc):
                    self._dead_letter(topic, payload, self.qos, self.retain, _reason(exc))
                    return
                # Back-pressure, not a refusal: buffer; the flush resumes when paho has room.
                self._live = False
                self._event("bridge_buffering", depth=self.depth, reason=str(exc))
            except (ConnectError, ValueError):
                self._link_down()
            else:
                self.published += 1
                seq = self._sent(topic)
                if fut is not None:
                    entry = _InFlight(topic, payload, seq, attempt)
                    self._inflight.append(entry)
                    fut.add_done_callback(lambda f, e=entry: self._acked(e, f))
                return
        self._pending.append((topic, payload))
        self.buffered += 1
        self._enforce_cap()
        if len(self._pending) >= BATCH:
            self._wake.set()

    def _sent(self, topic: str) -> int:
        """Note a publish to ``topic``; return its sequence number."""
        self._seq += 1
        self._topic_seq[topic] = self._seq
        return self._seq

    def _enforce_cap(self) -> None:
        """Keep SQLite plus memory within ``max_items``: the oldest go first, counted now.

        Messages wait in memory until the uplink task writes them (up to 0.2 s or
        `BATCH`); bounding only the SQLite rows let ``depth`` overshoot by what sat
        in memory and count those drops late. The bound holds for the sum, always.
        """
        excess = len(self._buffer) + len(self._pending) - self._buffer.max_items
        if excess <= 0:
            return
        # The oldest are in SQLite (except those being flushed), then at the head of memory.
        from_memory = excess - self._buffer.drop_oldest(excess)
        if from_memory:
            del self._pending[:from_memory]
            self._buffer.count_dropped(from_memory)
        self._drops_to_report += excess

    def _acked(self, entry: _InFlight, fut: asyncio.Future[None]) -> None:
        if entry.done:
            return
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or (exc is not None and not isinstance(exc, DeviceError)):
            # The link went down with this message unacknowledged.
            self._link_down()
            return
        entry.done = True
        inflight = self._inflight
        while inflight and inflight[0].done:
            inflight.popleft()
        if exc is not None:
            # The broker refused it (MQTT 5 PUBACK reason >= 0x80); the link is fine.
            self.published -= 1
            if self._may_retry(exc, entry.topic, entry.seq, entry.attempt):
                self.retried += 1  # live: published again now; else it joins the buffer
                self._send(entry.topic, entry.payload, entry.attempt + 1)
            else:
                self._dead_letter(entry.topic, entry.payload, self.qos, self.retain, _reason(exc))

    def _may_retry(self, exc: BaseException, topic: str, seq: int, attempt: int) -> bool:
        """Whether a refused message is published again (see `TRANSIENT_REASONS`)."""
        return (
            getattr(exc, "code", None) in TRANSIENT_REASONS
            and attempt < ATTEMPTS
            and self._topic_seq.get(topic) == seq
        )

    def _dead_letter(self, topic: str, payload: bytes, qos: int, retain: bool, why: str) -> None:
        """Count, log, event and keep a refused message (written by the uplink task)."""
        self.errors += 1
        limit = self.dead_letters.max_rows
        self._dead.append((topic, payload, qos, retain, why))
        if len(self._dead) > limit:
            over = len(self._dead) - limit
            del self._dead[:over]
            self.dead_letters.total += over
            self.dead_letters.dropped += over
        now = time.monotonic()
        last = self._dead_evented.get(topic)
        if last is None or now - last >= EVENT_EVERY_S:
            if len(self._dead_evented) >= 1024:
                self._dead_evented.clear()
            self._dead_evented[topic] = now
            logger.warning("bridge: %s dead-lettered: %s", topic, why)
            self._event("bridge_dead_letter", topic=topic, reason=why)
        self._wake.set()

    def _requeue_inflight(self) -> None:
        """Put unacknowledged messages back, ahead of everything newer."""
        back = [(e.topic, e.payload) for e in self._inflight if not e.done]
        for entry in self._inflight:
            entry.done = True
        self._inflight.clear()
        if back:
            self._pending[:0] = back
            self.buffered += len(back)
            self._enforce_cap()

    async def _on_link_event(self, event: Event) -> None:
        if event.connection_id != self.connection_id:
            return
        if event.type == "connected":
            self._link_up()
        else:
            self._link_down()

    def _link_up(self) -> None:
        with contextlib.suppress(EdgelinkError):
            driver = self._driver()
            driver.publish(f"{self.base}/status", "online", qos=1, retain=True)
            for topic, config in self.discovery_messages():
                driver.publish(topic, json.dumps(config), qos=1, retain=True)
        # Live again only once the buffer is flushed (the uplink task decides).
        self._wake.set()

    def _link_down(self) -> None:
        if self._live:
            self._live = False
            logger.warning("bridge: broker %s away, buffering", self.connection_id)
            self._event("bridge_buffering", depth=self.depth)
        self._requeue_inflight()
        self._wake.set()

    def _event(self, kind: str, **data: Any) -> None:
        if self._on_event is not None:
            self._on_event(kind, **data)

    async def _run_uplink(self) -> None:
        """Write pending messages to SQLite; flush SQLite when the link is up; go live."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._store_pending()
                await self._store_dead()
                if not self._live and self._link_is_up():
                    await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.errors += 1
                logger.exception("bridge uplink failed; retrying")
                await asyncio.sleep(1.0)

    def _link_is_up(self) -> bool:
        return self._manager.get_state(self.connection_id) == "connected" and bool(
            self._driver().is_connected()
        )

    async def _store_pending(self) -> None:
        while self._pending:
            batch = self._pending[:BATCH]
            del self._pending[: len(batch)]
            self._drops_to_report += await self._buffer.put(
                (t, p, self.qos, self.retain) for t, p in batch
            )
        await self._buffer.settle()
        if self._drops_to_report:
            count, self._drops_to_report = self._drops_to_report, 0
            self._event("bridge_dropped", count=count, total=self._buffer.dropped)

    async def store_dead_letters(self) -> None:
        """Write the refused messages noted so far to the dead-letter table."""
        await self._store_dead()

    async def _store_dead(self) -> None:
        if self._dead:
            rows, self._dead = self._dead, []
            try:
                await self.dead_letters.add(rows)
            except BaseException:
                self._dead[:0] = rows
                raise

    async def _flush(self) -> None:
        driver = self._driver()
        while True:
            batch = await self._buffer.peek(BATCH)
            if not batch:
                if self._pending:
                    await self._store_pending()
                    continue
                self._live = True
                logger.info("bridge: broker %s back, live", self.connection_id)
                return
            if self._head_losses[0] == batch[0].id:
                # Suspected: sent alone, so that its own answer (or none) decides.
                batch = batch[:1]
            done, stop = await self._flush_batch(driver, batch)
            if done:
                await self._buffer.ack(done[-1].id)
            await self._store_pending()
            if stop:
                return  # link down or paho's queue full: the next wake goes on from here

    async def _flush_batch(
        self, driver: Any, batch: list[BufferedMessage]
    ) -> tuple[list[BufferedMessage], bool]:
        """Publish a batch from SQLite and wait for the broker's answers.

        A refused message is dead-lettered (after up to `ATTEMPTS` publishes for a
        passing reason) and counts as done: it never blocks the ones behind it.
        If the link goes down meanwhile, what the broker answered before (a
        leading run of the batch) is done all the same: a broker that drops the
        connection after refusing a message (mosquitto 2.0 does with
        ``max_queued_messages 0``) cannot make the flush start over forever. A
        message left unanswered at the head by a link loss is suspected and sent
        alone next time; unanswered `LINK_LOSSES` times in a row, it is
        dead-lettered too (a broker may disconnect instead of answering).

        Returns:
            The leading messages of the batch that are done, and whether the flush
            must stop (the link went down, or paho's queue is full).
        """
        todo = [(msg, 1) for msg in batch]
        outcome: dict[int, BaseException | None] = {}  # id -> None (delivered) or the refusal
        stop = lost = False
        while todo and not stop:
            sent: list[tuple[BufferedMessage, int, int, asyncio.Future[None] | None]] = []
            for msg, attempt in todo:
                try:
                    fut = driver.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
                except ConnectError:
                    stop = lost = True
                    break
                except DeviceError as exc:
                    if _queue_full(exc):
                        stop = True
                        break
                    outcome[msg.id] = exc  # the client cannot send it: no retry helps
                    continue
                sent.append((msg, attempt, self._sent(msg.topic), fut))
            waiting = [fut for *_, fut in sent if fut is not None]
            answers = iter(await asyncio.gather(*waiting, return_exceptions=True))
            todo = []
            for msg, attempt, seq, fut in sent:
                error = next(answers) if fut is not None else None
                if error is None:
                    outcome[msg.id] = None
                elif not isinstance(error, DeviceError):
                    stop = lost = True  # unanswered: the link went down first
                elif not stop and self._may_retry(error, msg.topic, seq, attempt):
                    self.retried += 1
                    todo.append((msg, attempt + 1))
                else:
                    outcome[msg.id] = error
            if lost:
                break
        done = []
        for msg in batch:
            if msg.id not in outcome:
                break
            done.append(msg)
        if lost and len(done) < len(batch):
            head = batch[len(done)]
            alone = len(batch) == 1
            losses = self._head_losses[1] + 1 if alone and self._head_losses[0] == head.id else 1
            self._head_losses = (head.id, losses)
            if losses >= LINK_LOSSES:
                outcome[head.id] = ConnectError(
                    f"the link went down {losses} times with this message unanswered"
                )
                done.append(head)
        for msg in done:
            error = outcome[msg.id]
            if error is None:
                self.published += 1
                self.flushed += 1
            else:
                self._dead_letter(msg.topic, msg.payload, msg.qos, msg.retain, _reason(error))
        return done, stop

    def _on_set(self, topic: str, value: Any) -> None:
        parts = topic[len(self.base) + 1 :].split("/")
        if len(parts) < 3:
            return
        try:
            source, tag = decode_address(parts[:-1])
        except ValueError as exc:
            self._set_result(f"{topic}/result", {"ok": False, "error": f"bad topic: {exc}"})
            return
        if isinstance(value, dict) and "value" in value:
            value = value["value"]
        self.set_commands += 1
        task = asyncio.get_running_loop().create_task(
            self._write(source, tag, value, f"{topic}/result"),
            name=f"edgelink[{source}].bridge_set",
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, source: str, tag: str, value: Any, result_topic: str) -> None:
        result: dict[str, Any]
        if source not in self._manager:
            result = {"ok": False, "error": f"unknown connection {source!r}"}
        else:
            try:
                await self._manager.execute_with_retry(source, lambda c: c.write(tag, value))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is reported back
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            else:
                result = {"ok": True, "value": value}
        if not result["ok"]:
            logger.warning("bridge: set %s.%s failed: %s", source, tag, result["error"])
        self._set_result(result_topic, result)

    def _set_result(self, result_topic: str, result: dict[str, Any]) -> None:
        with contextlib.suppress(EdgelinkError):
            self._driver().publish(
                result_topic, json.dumps(result, default=str), qos=1, retain=False
            )
