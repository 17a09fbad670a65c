"""Tests of the SQLite storage: the event log's retention and the uplink buffer's bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgelink.events import Event
from edgelink.store import Database, EventLog, UplinkBuffer


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_event_log_keeps_events_and_errors_with_tracebacks(tmp_path: Path) -> None:
    """Test that events and errors are written, filtered and paged newest first."""
    db = Database(tmp_path / "log.db")
    log = EventLog(db, clock=Clock())
    await log.start()
    try:
        for i in range(5):
            log.record(Event("connected", f"dev{i % 2}", ts=1_000_000.0 + i, state="connected"))
        try:
            raise RuntimeError("boom at http://admin:hunter22@plc.local/x")
        except RuntimeError as exc:
            log.record_error("route_error", "route r1 failed", exc=exc, data={"password": "x"})
        rows = await log.query(limit=10)
        assert rows[0]["type"] == "route_error"
        assert "RuntimeError: boom at http://***@plc.local/x" in rows[0]["traceback"]
        assert "hunter22" not in rows[0]["traceback"]  # stack traces are kept, redacted
        assert rows[0]["data"] == {"message": "route r1 failed", "password": "***"}
        assert rows[0]["level"] == "error"
        dev1 = await log.query(connection_id="dev1")
        assert [r["ts"] for r in dev1] == [1_000_003.0, 1_000_001.0]
        page = await log.query(limit=2)
        older = await log.query(limit=10, before_id=page[-1]["id"])
        assert len(page) + len(older) == 6
        assert await log.query(level="error") == rows[:1]
    finally:
        await log.close()
        await db.close()


async def test_event_log_retention_by_rows_and_age(tmp_path: Path) -> None:
    """Test that the oldest rows go first past max_rows and rows older than max_age_s go."""
    clock = Clock()
    db = Database(tmp_path / "log.db")
    log = EventLog(db, max_rows=100, max_age_s=3600, clock=clock)
    await log.start()
    try:
        for i in range(250):
            log.record(Event("state_change", "dev", ts=clock.now - 100 + i * 0.1))
        await log.flush()
        assert await log.count() == 100
        newest = await log.query(limit=1)
        assert newest[0]["ts"] == pytest.approx(clock.now - 100 + 249 * 0.1)
        clock.now += 7200  # everything is now two hours old
        log.record(Event("connected", "dev", ts=clock.now))
        await log.flush()
        assert await log.count() == 1
    finally:
        await log.close()
        await db.close()


async def test_uplink_buffer_is_fifo_bounded_and_survives_a_restart(tmp_path: Path) -> None:
    """Test order, the drop-oldest bound with its counter, age expiry and persistence."""
    clock = Clock()
    path = tmp_path / "buffer.db"
    db = Database(path)
    buffer = UplinkBuffer(db, max_items=5, max_age_s=60, clock=clock)
    await buffer.open()
    dropped = await buffer.put((f"t/{i}", str(i).encode(), 1, True) for i in range(8))
    assert dropped == 3
    assert len(buffer) == 5
    assert buffer.dropped == 3
    batch = await buffer.peek(3)
    assert [m.topic for m in batch] == ["t/3", "t/4", "t/5"]
    assert batch[0].payload == b"3" and batch[0].qos == 1 and batch[0].retain is True
    await buffer.ack(batch[-1].id)
    assert len(buffer) == 2
    await db.close()

    db = Database(path)
    again = UplinkBuffer(db, max_items=5, max_age_s=60, clock=clock)
    await again.open()
    assert len(again) == 2
    assert again.dropped == 3  # the counter is kept across restarts
    assert [m.topic for m in await again.peek()] == ["t/6", "t/7"]
    clock.now += 120
    await again.put([("t/new", b"n", 0, False)])
    assert [m.topic for m in await again.peek()] == ["t/new"]
    assert again.dropped == 5
    await db.close()


def test_bounds_must_be_positive(tmp_path: Path) -> None:
    """Test that zero bounds are refused."""
    db = Database(tmp_path / "x.db")
    with pytest.raises(ValueError, match="max_rows"):
        EventLog(db, max_rows=0)
    with pytest.raises(ValueError, match="max_items"):
        UplinkBuffer(db, max_items=0)
