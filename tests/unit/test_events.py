"""Tests of the event bus: delivery, isolation, structured logs."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import pytest

from edgelink.events import EVENT_TYPES, Event, EventBus, log_name, make_event


def ev(kind: str = "connected", cid: str = "dev1", **data: object) -> Event:
    return make_event(kind, cid, time.time(), state="connected", attempt=2, **data)


async def test_sync_and_async_callbacks_get_events_in_order() -> None:
    """Test that sync and async callbacks each receive every event, in order."""
    bus = EventBus()
    got_sync: list[int] = []
    got_async: list[int] = []

    async def on_async(e: Event) -> None:
        got_async.append(e.data["n"])

    bus.on("connected", lambda e: got_sync.append(e.data["n"]))
    bus.on("connected", on_async)
    for n in range(50):
        bus.emit(ev(n=n))
    await bus.drain()
    assert got_sync == list(range(50))
    assert got_async == list(range(50))
    await bus.aclose()


async def test_star_gets_everything_and_filters_hold() -> None:
    """Test that "*" receives every type while a typed subscription gets only its own."""
    bus = EventBus()
    star: list[str] = []
    only: list[str] = []
    bus.on("*", lambda e: star.append(e.type))
    bus.on("disconnected", lambda e: only.append(e.type))
    bus.emit(ev("connected"))
    bus.emit(ev("disconnected"))
    await bus.drain()
    assert star == ["connected", "disconnected"]
    assert only == ["disconnected"]
    await bus.aclose()


async def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    """Test that the returned function unsubscribes, twice harmlessly."""
    bus = EventBus()
    got: list[Event] = []
    off = bus.on("connected", got.append)
    bus.emit(ev())
    await bus.drain()
    off()
    off()
    bus.emit(ev())
    await bus.drain()
    assert len(got) == 1
    await bus.aclose()


async def test_raising_callback_does_not_stop_others_or_itself() -> None:
    """Test that a raising callback is logged and the others (and its next events) still run."""
    bus = EventBus()
    good: list[int] = []
    calls: list[int] = []

    def bad(e: Event) -> None:
        calls.append(e.data["n"])
        raise RuntimeError("callback bug")

    async def bad_async(e: Event) -> None:
        raise RuntimeError("async callback bug")

    bus.on("connected", bad)
    bus.on("connected", bad_async)
    bus.on("connected", lambda e: good.append(e.data["n"]))
    for n in range(3):
        bus.emit(ev(n=n))
    await bus.drain()
    assert good == [0, 1, 2]
    assert calls == [0, 1, 2]
    assert bus.callback_errors == 6
    await bus.aclose()


async def test_blocking_sync_callback_does_not_stall_loop_or_others() -> None:
    """Test that a callback blocking its thread for 1 s stalls neither the loop nor others."""
    bus = EventBus()
    release = threading.Event()
    fast: list[float] = []

    def blocker(e: Event) -> None:
        release.wait(5)

    bus.on("connected", blocker)
    bus.on("connected", lambda e: fast.append(time.monotonic()))
    t0 = time.monotonic()
    bus.emit(ev())
    # The loop keeps turning while the blocker holds its thread.
    ticks = 0
    while not fast and ticks < 500:
        await asyncio.sleep(0.001)
        ticks += 1
    assert fast and fast[0] - t0 < 0.5
    release.set()
    await bus.drain()
    await bus.aclose()


async def test_slow_async_callback_does_not_delay_others() -> None:
    """Test that a slow async callback delays only its own queue."""
    bus = EventBus()
    gate = asyncio.Event()
    fast: list[int] = []

    async def slow(e: Event) -> None:
        await gate.wait()

    bus.on("connected", slow)
    bus.on("connected", lambda e: fast.append(1))
    bus.emit(ev())
    async with asyncio.timeout(2):
        while not fast:
            await asyncio.sleep(0.001)
    gate.set()
    await bus.drain()
    await bus.aclose()


async def test_emit_from_worker_thread_is_delivered_on_loop() -> None:
    """Test that an event emitted from another thread reaches async callbacks on the loop."""
    bus = EventBus()
    loop = asyncio.get_running_loop()
    bus.bind(loop)
    seen: list[bool] = []

    async def cb(e: Event) -> None:
        seen.append(asyncio.get_running_loop() is loop)

    bus.on("connected", cb)
    await asyncio.to_thread(bus.emit, ev())
    async with asyncio.timeout(2):
        while not seen:
            await asyncio.sleep(0.001)
    await bus.drain()
    assert seen == [True]
    await bus.aclose()


def test_unknown_event_type_is_refused() -> None:
    """Test that subscribing to a misspelt type raises."""
    with pytest.raises(ValueError, match="unknown event type 'conected'"):
        EventBus().on("conected", lambda e: None)


def test_event_types_cover_design() -> None:
    """Test that every event type of DESIGN section 4 exists."""
    design = [
        "connected",
        "disconnected",
        "error",
        "health_check_failed",
        "state_change",
        "reconnect_start",
        "reconnect_ok",
        "reconnect_failed",
        "max_retries_exceeded",
        "suspended",
        "resumed",
        "tx_drop_detected",
        "fast_path_active",
        "connection_stable",
        "device_reset",
        "spam_suspended",
        "power_warning",
        "power_critical",
    ]
    assert set(design) <= EVENT_TYPES
    assert log_name("reconnect_start") == "EVENT_RECONNECT_START"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = ("event", "connection_id", "state", "attempt", "context")
        return json.dumps({k: getattr(record, k, None) for k in fields})


def test_each_event_is_one_structured_log_record() -> None:
    """Test that an emitted event is one log record with real extra fields, secrets redacted."""
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Capture()
    handler.setFormatter(_JsonFormatter())
    log = logging.getLogger("edgelink.events")
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.DEBUG)
    try:
        EventBus().emit(ev("reconnect_start", delay=0.2, password="hunter2"))
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
    assert len(records) == 1
    rec = json.loads(records[0])
    assert rec == {
        "event": "EVENT_RECONNECT_START",
        "connection_id": "dev1",
        "state": "connected",
        "attempt": 2,
        "context": {"delay": 0.2, "password": "***"},
    }


async def test_bounded_queue_drops_oldest_for_a_stuck_subscriber() -> None:
    """Test that a stuck subscriber's queue is bounded and drops are counted."""
    from edgelink import events as events_mod

    bus = EventBus()
    gate = asyncio.Event()
    got: list[int] = []

    async def stuck(e: Event) -> None:
        await gate.wait()
        got.append(e.data["n"])

    bus.on("connected", stuck)
    limit = events_mod.QUEUE_LIMIT
    for n in range(limit + 10):
        bus.emit(ev(n=n))
    await asyncio.sleep(0)
    gate.set()
    await bus.drain()
    assert bus.dropped >= 9
    assert got[-1] == limit + 9
    assert len(got) <= limit + 1
    await bus.aclose()
