"""The MQTT bridge: every datapoint mirrored to a broker for Node-RED, ``/set`` back to devices.

It publishes through one of the configured ``mqtt`` connections, so the link
is supervised like any other (reconnect, health, status):

- every datapoint of the data space goes to ``{base}/{source}/{tag}`` with the
  dots of the tag as ``/`` (``smarthome/plc_1/MAIN/temperature``), payload
  ``{"value", "ts", "quality"}``, retained and with the configured QoS; a
  datapoint that is not good adds ``"reason"`` and ``"since"`` when known
  (a lost link's values are re-published once as ``"quality": "stale"``,
  with the last value and its ``ts``);
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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgelink.errors import ConnectError, DeviceError, EdgelinkError
from edgelink.events import Event
from edgelink.router.datapoint import DataPoint, quality_detail
from edgelink.router.wire import WireEncoder
from edgelink.store import UplinkBuffer

if TYPE_CHECKING:
    from edgelink.manager import ConnectionManager
    from edgelink.router.engine import Router
    from edgelink.service.config import BridgeSettings

__all__ = ["MAX_SET_DEPTH", "MqttBridge", "bridge_will"]

logger = logging.getLogger(__name__)

#: ``/set`` topics are subscribed for tags up to this many levels deep
#: (MQTT's ``#`` must end a filter, so ``{base}/+/.../set`` is one filter per depth).
MAX_SET_DEPTH = 10
#: Messages written to SQLite, or flushed from it, per transaction.
BATCH = 500


def bridge_will(base_topic: str) -> dict[str, Any]:
    """The last will the bridge's broker connection gets: ``{base}/status`` = offline."""
    return {"topic": f"{base_topic}/status", "payload": "offline", "qos": 1, "retain": True}


class _InFlight:
    __slots__ = ("done", "payload", "topic")

    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic = topic
        self.payload = payload
        self.done = False


class MqttBridge:
    """Mirrors the data space to MQTT and takes ``/set`` commands back.

    Args:
        manager: The connection manager (owns the broker connection and the router).
        router: The router whose data space is mirrored.
        settings: The ``bridge`` section of ``edgelink.json``.
        buffer: Where messages wait while the broker is away.
        on_event: ``on_event(kind, **data)`` for what the service should record.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        router: Router,
        settings: BridgeSettings,
        buffer: UplinkBuffer,
        *,
        on_event: Callable[..., None] | None = None,
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
        self.published = 0
        self.buffered = 0
        self.flushed = 0
        self.set_commands = 0
        self.errors = 0

    # ----------------------------------------------------------------- views

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
        }

    def __repr__(self) -> str:
        mode = "live" if self._live else "buffering"
        return f"<MqttBridge {self.connection_id} {self.base}/# {mode} depth={self.depth}>"

    def topic_for(self, dp: DataPoint) -> str:
        """Return the topic a datapoint is mirrored to."""
        return f"{self.base}/{dp.source}/{dp.tag.replace('.', '/')}"

    def state_topic(self, address: str) -> str:
        """Return the topic an address is mirrored to (its source: the longest endpoint)."""
        source, tag = self._router.resolve(address)
        if source is None:
            source, _, tag = address.partition(".")
        return f"{self.base}/{source}/{tag.replace('.', '/')}"

    def discovery_messages(self) -> list[tuple[str, dict[str, Any]]]:
        """Return the Home Assistant discovery ``(topic, config)`` of each listed datapoint."""
        messages = []
        for entry in self._discovery:
            object_id = "edgelink_" + "".join(
                ch if ch.isalnum() else "_" for ch in entry.address
            ).strip("_")
            config: dict[str, Any] = {
                "name": entry.name or entry.address,
                "unique_id": object_id,
                "object_id": object_id,
                "state_topic": self.state_topic(entry.address),
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

    # ------------------------------------------------------------- lifecycle

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
        driver = self._driver()
        for depth in range(1, MAX_SET_DEPTH + 1):
            driver.subscribe(f"{self.base}/+/{'+/' * depth}set", qos=1)
        self._offs.append(self._router.data.subscribe("**", self._on_datapoint, changes_only=False))
        self._offs.append(self._manager.on_event("connected", self._on_link_event))
        self._offs.append(self._manager.on_event("disconnected", self._on_link_event))
        self._task = asyncio.get_running_loop().create_task(
            self._run_uplink(), name=f"edgelink[{self.connection_id}].bridge"
        )
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
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for write in list(self._writes):
            write.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._store_pending()

    def pause(self) -> None:
        """Stop mirroring (panic): datapoints are neither published nor buffered."""
        self._paused = True

    def resume(self) -> None:
        """Mirror again after `pause`."""
        self._paused = False

    # ------------------------------------------------------------------- in

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
        self._send(self.topic_for(dp), payload)

    def _send(self, topic: str, payload: bytes) -> None:
        if self._live:
            try:
                fut = self._driver().publish(topic, payload, qos=self.qos, retain=self.retain)
            except (ConnectError, DeviceError, ValueError) as exc:
                if isinstance(exc, DeviceError):
                    self.errors += 1
                    logger.warning("bridge: cannot publish %s: %s", topic, exc)
                    return
                self._link_down()
            else:
                self.published += 1
                if fut is not None:
                    entry = _InFlight(topic, payload)
                    self._inflight.append(entry)
                    fut.add_done_callback(lambda f, e=entry: self._acked(e, f))
                return
        self._pending.append((topic, payload))
        self.buffered += 1
        if len(self._pending) >= BATCH:
            self._wake.set()

    def _acked(self, entry: _InFlight, fut: asyncio.Future[None]) -> None:
        if entry.done:
            return
        if fut.cancelled() or fut.exception() is not None:
            # The link went down with this message unacknowledged.
            self._link_down()
            return
        entry.done = True
        inflight = self._inflight
        while inflight and inflight[0].done:
            inflight.popleft()

    def _requeue_inflight(self) -> None:
        """Put unacknowledged messages back, ahead of everything newer."""
        back = [(e.topic, e.payload) for e in self._inflight if not e.done]
        for entry in self._inflight:
            entry.done = True
        self._inflight.clear()
        if back:
            self._pending[:0] = back
            self.buffered += len(back)

    # ----------------------------------------------------------------- link

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

    # --------------------------------------------------------------- uplink

    async def _run_uplink(self) -> None:
        """Write pending messages to SQLite; flush SQLite when the link is up; go live."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._store_pending()
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
            dropped = await self._buffer.put((t, p, self.qos, self.retain) for t, p in batch)
            if dropped:
                self._event("bridge_dropped", count=dropped, total=self._buffer.dropped)

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
            futures = []
            try:
                for msg in batch:
                    fut = driver.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
                    if fut is not None:
                        futures.append(fut)
                if futures:
                    await asyncio.gather(*futures)
            except (ConnectError, DeviceError):
                return  # stays in SQLite; the next link-up flushes again
            await self._buffer.ack(batch[-1].id)
            self.flushed += len(batch)
            self.published += len(batch)
            await self._store_pending()

    # ------------------------------------------------------------------ set

    def _on_set(self, topic: str, value: Any) -> None:
        parts = topic[len(self.base) + 1 :].split("/")
        if len(parts) < 3:
            return
        source, tag = parts[0], ".".join(parts[1:-1])
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
        with contextlib.suppress(EdgelinkError):
            self._driver().publish(
                result_topic, json.dumps(result, default=str), qos=1, retain=False
            )
