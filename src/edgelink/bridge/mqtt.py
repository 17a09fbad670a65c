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

That is the default payload mode. ``bridge.mode``, ``bridge.deadband``,
``bridge.heartbeat_s``, ``bridge.min_interval_s`` and the per-connection rules
of ``bridge.modes`` (`edgelink.bridge.modes`) send one message per poll group
to ``{base}/{source}``, hold back values inside a deadband, and limit each
topic's rate; the ``/set`` back-path stays per tag in every mode.

The uplink is one ordered pipeline (see `MqttBridge`): datapoints join a
bounded memory queue (``bridge.buffer.memory_items``; past it the oldest go,
counted and evented) that goes to the broker in one batch per loop turn while
the link is up. Only what the broker does not take (the link is down, or it
takes less than arrives) goes to the SQLite `UplinkBuffer` (bounded by count
and age, oldest dropped first and counted); when the link is back it is
drained, oldest first, while newer datapoints wait in memory, and the live
path resumes once it is empty, so per-topic order holds. With QoS 1 or 2 a
message counts as delivered only when the broker acknowledged it: messages
in flight when the link died go back into the buffer ahead of newer ones
(at-least-once: a message may arrive twice, never out of order, never not at
all). With QoS 0 what sat in the
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
from edgelink.bridge.modes import PayloadModes
from edgelink.bridge.topics import TopicError, decode_address, encode_group_topic, encode_topic
from edgelink.errors import ConnectError, DeviceError, EdgelinkError
from edgelink.events import Event
from edgelink.lifecycle import Service
from edgelink.router.datapoint import DataPoint, quality_detail
from edgelink.router.wire import WireEncoder
from edgelink.store import BufferedMessage, DeadLetters, UplinkBuffer

if TYPE_CHECKING:
    from edgelink.bridge.settings import BridgeSettings
    from edgelink.clock import Clock
    from edgelink.manager import ConnectionManager
    from edgelink.router.engine import Router

__all__ = ["MAX_SET_DEPTH", "MqttBridge", "bridge_will"]

logger = logging.getLogger(__name__)

#: ``/set`` topics are subscribed for tags up to this many levels deep
#: (MQTT's ``#`` must end a filter, so ``{base}/+/.../set`` is one filter per depth).
MAX_SET_DEPTH = 10
#: Messages drained from SQLite per transaction (and the memory queue's wake-up mark).
BATCH = 500
#: Messages moved from memory to SQLite per transaction.
SPILL = 2000
#: Live QoS 1/2 messages unanswered at most (the rest wait in memory).
WINDOW = 1000
#: QoS 0: packets paho may hold unwritten before the bridge waits for the socket.
BACKLOG = 2000
#: While the link is down, memory keeps what arrives this long before SQLite
#: takes it (a start or a short blip never touches SQLite), s; past half the
#: memory bound SQLite takes it at once.
SPILL_AFTER = 1.0
#: Topics remembered per address (the topic cache) and per topic (the last
#: sequence number, for retries); past it the memory starts over.
TOPIC_CACHE = 65536
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


#: The payload modes' counters while none is configured.
_NO_MODES: dict[str, int] = {
    "suppressed": 0,
    "coalesced": 0,
    "group_messages": 0,
    "mode_state": 0,
    "mode_state_evicted": 0,
}


class _InFlight:
    """A live QoS 1/2 message the broker has not answered yet."""

    __slots__ = ("attempt", "payload", "seq", "topic")

    def __init__(self, topic: str, payload: bytes, seq: int, attempt: int) -> None:
        self.topic = topic
        self.payload = payload
        self.seq = seq
        self.attempt = attempt


def _queue_full(exc: DeviceError) -> bool:
    return "queue is full" in str(exc)


def _reason(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    text = str(exc)
    return f"{text} (0x{code:02X})" if isinstance(code, int) else text


class MqttBridge(Service):
    """Mirrors the data space to MQTT and takes ``/set`` commands back.

    The uplink is one ordered pipeline: a datapoint becomes a message
    (`_message`), joins the bounded memory queue (`_enqueue`) and, while the
    bridge is live, goes to the broker in one batch per loop turn (`_pump`).
    SQLite holds only what the broker has not taken: the uplink task
    (`_run_uplink`) moves the memory queue there while the link is down or the
    broker cannot keep up, and drains it, oldest first, when the link is up,
    while newer messages wait behind in memory; live again once it is empty.
    Everything in SQLite is older than everything in memory, so per-topic
    order holds (a retained value is never overwritten by an older one).

    Args:
        manager: The connection manager (owns the broker connection and the router).
        router: The router whose data space is mirrored.
        settings: The ``bridge`` section of ``edgelink.json``.
        buffer: Where messages wait while the broker is away.
        on_event: ``on_event(kind, **data)`` for what the service should record.
        dead_letters: Where refused messages go (default: a table in the buffer's database).
        clock: The clock of the payload modes' heartbeats and rate limits
            (default: the manager's).
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
        clock: Clock | None = None,
    ) -> None:
        if settings.connection is None:
            raise ValueError("the bridge needs bridge.connection")
        self.connection_id = settings.connection
        self.base = settings.base_topic.rstrip("/")
        self.qos = settings.qos
        self.retain = settings.retain
        #: Messages in memory (queued, in flight, waiting to go back) at most.
        self.memory_items = settings.buffer.memory_items
        self._manager = manager
        self._router = router
        self._buffer = buffer
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetters(buffer.db)
        self._on_event = on_event
        self._echo_prefix = f"{self.connection_id}.{self.base}/"
        self._discovery = tuple(settings.discovery)
        self._discovery_prefix = settings.discovery_prefix.rstrip("/")
        self._encoder = WireEncoder("bridge")
        self._topics: dict[str, str] = {}
        self._settings = settings
        self._clock = clock if clock is not None else manager.clock
        #: The payload modes (None: the default, each datapoint its own message at once).
        self.modes: PayloadModes | None = None
        self._message_of: Callable[[DataPoint], tuple[str, bytes] | None] = self._message
        self._live = False
        self._paused = False
        # The pipeline: memory queue -> broker (live) or SQLite (not taken).
        self._queue: deque[tuple[str, bytes]] = deque()
        self._inflight: dict[int, _InFlight] = {}  # by packet id, in the order sent
        self._front: list[tuple[str, bytes]] = []  # unanswered, older than SQLite's rows
        self._window = max(1, min(WINDOW, self.memory_items // 2))
        self._high = max(1, self.memory_items // 2)  # live, over this: the broker lags
        self._link: tuple[Any, int] = (None, 0)  # (driver, link id) the in-flight went on
        self._pump_due = False
        self._up = False
        self._down_since = time.monotonic()  # the link is not up yet
        self._loop: asyncio.AbstractEventLoop | None = None
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
        """Messages waiting: in SQLite plus in memory (in flight not counted)."""
        return len(self._buffer) + len(self._queue) + len(self._front)

    @property
    def queued(self) -> int:
        """Messages in memory: queued, in flight, waiting to go back (at most `memory_items`)."""
        return len(self._queue) + len(self._inflight) + len(self._front)

    @property
    def dropped(self) -> int:
        """Messages dropped by a full queue (memory or SQLite, oldest first), ever."""
        return self._buffer.dropped

    def stats(self) -> dict[str, Any]:
        """Counters for the API and metrics."""
        modes = self.modes
        return {
            "connection": self.connection_id,
            "base_topic": self.base,
            "live": self._live,
            "published": self.published,
            "buffered": self.buffered,
            "flushed": self.flushed,
            "depth": self.depth,
            "queued": self.queued,
            "memory_items": self.memory_items,
            "dropped": self.dropped,
            "in_flight": len(self._inflight),
            "set_commands": self.set_commands,
            "errors": self.errors,
            "retried": self.retried,
            "dead_letters": self.dead_letters.total + len(self._dead),
            "dead_letters_dropped": self.dead_letters.dropped,
            "mode": "rules" if self._settings.modes else self._settings.mode,
            **(modes.stats() if modes is not None else _NO_MODES),
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

    def _state_of(self, address: str) -> tuple[str, str]:
        """Return the topic and Home Assistant value template of an address (by its mode)."""
        if self.modes is not None:
            source, tag = self._router.resolve(address)
            if source is None:
                source, _, tag = address.partition(".")
            if self.modes.policy(source, tag).group:
                key = json.dumps(tag)
                return encode_group_topic(
                    self.base, source
                ), f"{{{{ value_json['values'][{key}] }}}}"
        return self.state_topic(address), "{{ value_json.value }}"

    def discovery_messages(self) -> list[tuple[str, dict[str, Any]]]:
        """Return the Home Assistant discovery ``(topic, config)`` of each listed datapoint."""
        messages = []
        for entry in self._discovery:
            object_id = "edgelink_" + "".join(
                ch if ch.isalnum() else "_" for ch in entry.address
            ).strip("_")
            try:
                state_topic, template = self._state_of(entry.address)
            except TopicError as exc:
                logger.warning("bridge: no discovery for %s: %s", entry.address, exc)
                continue
            config: dict[str, Any] = {
                "name": entry.name or entry.address,
                "unique_id": object_id,
                "object_id": object_id,
                "state_topic": state_topic,
                "value_template": template,
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
        if driver is None or not hasattr(driver, "send") or not hasattr(driver, "subscribe"):
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
        self._loop = asyncio.get_running_loop()
        if not self._settings.plain and self.modes is None:
            self.modes = PayloadModes(
                self._settings,
                self.base,
                clock=self._clock,
                loop=self._loop,
                encoder=self._encoder,
                point_message=self._message,
                emit=self._enqueue,
                dead_letter=self._mode_dead_letter,
            )
            self._message_of = self.modes.message
        self._offs.append(self._router.data.subscribe("**", self._on_datapoint, changes_only=False))
        self._offs.append(self._manager.on_event("connected", self._on_link_event))
        self._offs.append(self._manager.on_event("disconnected", self._on_link_event))
        self._task = self._loop.create_task(
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
        if self.modes is not None:
            self.modes.flush()  # what waits for its group or interval goes to SQLite too
        self._requeue_inflight()
        task, self._task = self._task, None
        self._disarm_leak_warning()
        if task is not None:
            await cancel_and_wait(task)
        for write in list(self._writes):
            write.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._store_front()
            await self._spill(len(self._queue))
        with contextlib.suppress(Exception):
            await self._store_dead()
        with contextlib.suppress(ValueError):
            driver = self._driver()
            if driver.ack_listener == self._on_ack:
                driver.ack_listener = None

    def pause(self) -> None:
        """Stop mirroring (panic): datapoints are neither published nor buffered."""
        self._paused = True

    def resume(self) -> None:
        """Mirror again after `pause`."""
        self._paused = False

    # ------------------------------------------------------------ the hot path

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
        message = self._message_of(dp)
        if message is not None:
            self._enqueue(message[0], message[1])

    def _message(self, dp: DataPoint) -> tuple[str, bytes] | None:
        """Return the ``(topic, payload)`` of a datapoint (one message per datapoint).

        The payload modes (`PayloadModes.message`: one message per poll group,
        a deadband, a rate limit) take this step's place when configured: they
        may return None and `_enqueue` messages later, through this method for
        a datapoint's own message. A datapoint without a valid topic is
        dead-lettered here (None).
        """
        address = dp.address
        topic = self._topics.get(address)
        if dp.quality == "good":
            payload = self._encoder.encode_point(dp.value, dp.ts, "good", address).encode()
        else:
            body = {"value": dp.value, "ts": dp.ts, "quality": dp.quality}
            body.update(quality_detail(dp.metadata))
            payload = self._encoder.encode(body, address).encode()
        if topic is None:
            try:
                topic = encode_topic(self.base, dp.source, dp.tag)
            except TopicError as exc:
                shown = f"{self.base}/{dp.source}/{dp.tag}"
                self._dead_letter(shown[:1000], payload, self.qos, self.retain, str(exc))
                return None
            if len(self._topics) >= TOPIC_CACHE:
                self._topics.clear()
            self._topics[address] = topic
        return topic, payload

    def _mode_dead_letter(self, topic: str, payload: bytes, why: str) -> None:
        self._dead_letter(topic, payload, self.qos, self.retain, why)

    def _enqueue(self, topic: str, payload: bytes) -> None:
        """Put a message at the end of the pipeline (bounded: the oldest in memory go first)."""
        queue = self._queue
        queue.append((topic, payload))
        size = len(queue) + len(self._inflight) + len(self._front)
        if size > self.memory_items:
            queue.popleft()
            self._buffer.count_dropped(1)
            self._drops_to_report += 1
            self._wake.set()
        elif not self._live or size > self._buffer.max_items:
            self._enforce_cap()
        if self._live:
            if size > self._high:
                self._lagging()
            elif not self._pump_due:
                self._pump_due = True
                assert self._loop is not None
                self._loop.call_soon(self._pump)
        elif size > self._high:
            self._wake.set()

    def _pump(self) -> None:
        """Hand the memory queue to the broker, as far as it takes it (once per loop turn)."""
        self._pump_due = False
        queue = self._queue
        if not self._live or not queue:
            return
        try:
            driver = self._driver()
        except ValueError:
            self._link_down()
            return
        if self._link != (driver, driver.link_id):
            if self._inflight:
                # A new link, and what went on the old one was lost with it
                # unnoticed: it goes back through SQLite, ahead of the queue.
                self._link_down()
                return
            self._link = (driver, driver.link_id)
            driver.ack_listener = self._on_ack
        if self.qos == 0:
            room = BACKLOG - driver.backlog()
        else:
            room = self._window - len(self._inflight)
            if len(self._topic_seq) >= TOPIC_CACHE:
                self._topic_seq.clear()
        send = driver.send
        qos, retain, inflight, topic_seq = self.qos, self.retain, self._inflight, self._topic_seq
        seq = self._seq
        sent = 0
        try:
            while queue and sent < room:
                topic, payload = queue[0]
                try:
                    mid = send(topic, payload, qos, retain)
                except DeviceError as exc:
                    if _queue_full(exc):
                        break  # back-pressure: the rest waits in memory
                    queue.popleft()
                    self._dead_letter(topic, payload, qos, retain, _reason(exc))
                    continue
                queue.popleft()
                sent += 1
                if qos:
                    seq += 1
                    topic_seq[topic] = seq
                    inflight[mid] = _InFlight(topic, payload, seq, 1)
        except ConnectError:
            self._link_down()
        finally:
            self._seq = seq
            self.published += sent
        if queue and self._live and qos == 0 and not self._pump_due:
            # paho's backlog is full: try again when the socket had time to drain.
            self._pump_due = True
            assert self._loop is not None
            self._loop.call_later(0.005, self._pump)

    def _on_ack(self, mid: int, error: BaseException | None) -> None:
        """The driver's answer for a live message (see `MqttConnection.send`)."""
        if mid == 0:
            self._link_down()  # the link ended with messages unanswered
            return
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        if error is None:
            if self._queue and self._live and not self._pump_due:
                self._pump_due = True  # the window has room again
                assert self._loop is not None
                self._loop.call_soon(self._pump)
            return
        # The broker refused it (MQTT 5 PUBACK reason >= 0x80); the link is fine.
        self.published -= 1
        if not self._may_retry(error, entry.topic, entry.seq, entry.attempt):
            self._dead_letter(entry.topic, entry.payload, self.qos, self.retain, _reason(error))
            return
        self.retried += 1
        if not self._live:
            self._queue.appendleft((entry.topic, entry.payload))
            return
        try:
            mid = self._driver().send(entry.topic, entry.payload, self.qos, self.retain)
        except (ConnectError, ValueError):
            self._queue.appendleft((entry.topic, entry.payload))
            self._link_down()
        except DeviceError as exc:
            self._dead_letter(entry.topic, entry.payload, self.qos, self.retain, _reason(exc))
        else:
            self.published += 1
            self._inflight[mid] = _InFlight(
                entry.topic, entry.payload, self._sent(entry.topic), entry.attempt + 1
            )

    def _sent(self, topic: str) -> int:
        """Note a publish to ``topic``; return its sequence number."""
        self._seq += 1
        self._topic_seq[topic] = self._seq
        return self._seq

    def _lagging(self) -> None:
        """Live, but the broker takes less than arrives: SQLite takes the excess."""
        self._live = False
        logger.warning("bridge: broker %s lags, buffering", self.connection_id)
        self._event("bridge_buffering", depth=self.depth, reason="the broker lags")
        self._wake.set()

    def _enforce_cap(self) -> None:
        """Keep SQLite plus memory within ``max_items``: the oldest go first, counted now."""
        excess = len(self._buffer) + len(self._queue) + len(self._front) - self._buffer.max_items
        if excess <= 0:
            return
        # The oldest are in SQLite (except those being flushed), then at the head of memory.
        from_memory = min(excess - self._buffer.drop_oldest(excess), len(self._queue))
        for _ in range(from_memory):
            self._queue.popleft()
        self._buffer.count_dropped(from_memory)
        self._drops_to_report += excess

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
        """Put unacknowledged live messages back, ahead of everything newer."""
        if not self._inflight:
            return
        # They go to SQLite ahead of everything, and the drain sends them: it
        # knows a message the broker answers by dropping the link (`LINK_LOSSES`).
        self._front.extend((e.topic, e.payload) for e in self._inflight.values())
        self.buffered += len(self._inflight)
        self._inflight.clear()

    async def _on_link_event(self, event: Event) -> None:
        if event.connection_id != self.connection_id:
            return
        if event.type == "connected":
            self._link_up()
        else:
            self._link_down()

    def _link_up(self) -> None:
        self._up = True
        with contextlib.suppress(EdgelinkError, ValueError):
            driver = self._driver()
            driver.publish(f"{self.base}/status", "online", qos=1, retain=True)
            for topic, config in self.discovery_messages():
                driver.publish(topic, json.dumps(config), qos=1, retain=True)
            if not self._live and not len(self._buffer) and not self._front:
                self._go_live()  # nothing buffered: live at once
        self._wake.set()

    def _go_live(self) -> None:
        self._live = True
        logger.info("bridge: broker %s up, live", self.connection_id)
        if self._queue and not self._pump_due:
            self._pump_due = True
            assert self._loop is not None
            self._loop.call_soon(self._pump)

    def _link_down(self) -> None:
        if self._up:
            self._up = False
            self._down_since = time.monotonic()
        if self._live:
            self._live = False
            logger.warning("bridge: broker %s away, buffering", self.connection_id)
            self._event("bridge_buffering", depth=self.depth)
        self._requeue_inflight()
        self._wake.set()

    def _event(self, kind: str, **data: Any) -> None:
        if self._on_event is not None:
            self._on_event(kind, **data)

    # ------------------------------------------------------------ the uplink task

    async def _run_uplink(self) -> None:
        """Move what the broker does not take to SQLite; drain SQLite when the link is up."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._store_dead()
                if not self._live:
                    await self._store_front()
                    if self._link_is_up():
                        await self._drain()
                    elif (
                        len(self._queue) > self._high
                        or time.monotonic() - self._down_since >= SPILL_AFTER
                    ):
                        await self._spill(len(self._queue))
                self._report_drops()
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

    def _report_drops(self) -> None:
        if self._drops_to_report:
            count, self._drops_to_report = self._drops_to_report, 0
            self._event("bridge_dropped", count=count, total=self._buffer.dropped)

    async def _store_front(self) -> None:
        """Put unanswered messages back into SQLite, ahead of its rows."""
        front, self._front = self._front, []
        if not front:
            return
        try:
            self._drops_to_report += await self._buffer.put(
                ((t, p, self.qos, self.retain) for t, p in front), front=True
            )
        except Exception:
            self._front[:0] = front
            raise

    async def _spill(self, count: int) -> None:
        """Move up to ``count`` messages from the head of memory to SQLite, `SPILL` per write."""
        queue = self._queue
        while count > 0 and queue:
            batch = [queue.popleft() for _ in range(min(count, SPILL, len(queue)))]
            count -= len(batch)
            self.buffered += len(batch)
            try:
                self._drops_to_report += await self._buffer.put(
                    (t, p, self.qos, self.retain) for t, p in batch
                )
            except Exception:
                # Not written (the transaction rolled back): back to the head of memory.
                queue.extendleft(reversed(batch))
                self.buffered -= len(batch)
                raise
        await self._buffer.settle()

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

    async def _drain(self) -> None:
        """Publish SQLite's messages, oldest first; live once it is empty.

        New messages wait in memory meanwhile; past half the memory bound, the
        oldest of them follow the others into SQLite (behind them, in order).
        """
        driver = self._driver()
        while True:
            if len(self._queue) > self._high:
                await self._spill(len(self._queue) - self._high // 2)
            batch = await self._buffer.peek(BATCH)
            if not batch:
                if self._front:
                    await self._store_front()
                    continue
                if self._link_is_up():
                    self._go_live()
                return
            if self._head_losses[0] == batch[0].id:
                # Suspected: sent alone, so that its own answer (or none) decides.
                batch = batch[:1]
            done, stop = await self._flush_batch(driver, batch)
            if done:
                await self._buffer.ack(done[-1].id)
            self._report_drops()
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
            # QoS 0: no answers to wait for, only the socket (paho signals no room: polled).
            while not waiting and sent and driver.backlog() > BACKLOG:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
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
