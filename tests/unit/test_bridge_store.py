"""The bridge's SQLite tables: the exact bound of the uplink buffer, the dead-letter table."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edgelink.store import Database, DeadLetters, UplinkBuffer


def msgs(*values: int) -> list[tuple[str, bytes, int, bool]]:
    return [(f"t/{v}", str(v).encode(), 1, True) for v in values]


async def test_drop_oldest_counts_at_once_and_spares_the_rows_being_flushed(
    tmp_path: Path,
) -> None:
    """Test that drops are counted before the rows go, and never hit a peeked batch."""
    db = Database(tmp_path / "b.db")
    buf = UplinkBuffer(db, max_items=5)
    await buf.open()
    try:
        await buf.put(msgs(0, 1, 2, 3, 4))
        batch = await buf.peek(2)  # 0 and 1 are being delivered
        assert [m.payload for m in batch] == [b"0", b"1"]
        assert buf.droppable == 3
        assert buf.drop_oldest(5) == 3  # only 2, 3, 4 may go
        assert len(buf) == 2 and buf.dropped == 3
        buf.count_dropped(1)
        await buf.put(msgs(5))
        await buf.ack(batch[-1].id)
        assert len(buf) == 1
        assert [m.payload for m in await buf.peek()] == [b"5"]
        assert buf.dropped == 4
    finally:
        await db.close()
    db = Database(tmp_path / "b.db")
    again = UplinkBuffer(db, max_items=5)
    await again.open()
    try:
        assert again.dropped == 4 and len(again) == 1  # kept across a restart
    finally:
        await db.close()


async def test_dead_letters_are_bounded_oldest_first_and_counted(tmp_path: Path) -> None:
    """Test the dead-letter table: newest kept, oldest dropped and counted, across restarts."""
    db = Database(tmp_path / "d.db")
    dead = DeadLetters(db, max_rows=3, clock=lambda: 1000.0)
    await dead.open()
    try:
        rows = [(f"t/{n}", b"\xff" if n == 4 else b'{"value": 1}', 1, True, "no") for n in range(5)]
        assert await dead.add(rows) == 2
        assert (dead.total, dead.dropped, await dead.count()) == (5, 2, 3)
        recent = await dead.recent(10)
        assert [r["topic"] for r in recent] == ["t/4", "t/3", "t/2"]
        assert recent[0]["payload"] == "ff" and recent[0]["payload_encoding"] == "hex"
        assert recent[1] == {
            "id": recent[1]["id"],
            "ts": 1000.0,
            "topic": "t/3",
            "payload": '{"value": 1}',
            "payload_encoding": "utf-8",
            "qos": 1,
            "retain": True,
            "reason": "no",
        }
    finally:
        await db.close()
    db = Database(tmp_path / "d.db")
    again = DeadLetters(db)
    await again.open()
    try:
        assert (again.total, again.dropped) == (5, 2)
    finally:
        await db.close()


async def test_messages_being_written_count_in_the_depth_and_may_be_dropped(
    tmp_path: Path,
) -> None:
    """Test that a put in progress never makes the depth dip, and its rows can be dropped."""
    db = Database(tmp_path / "w.db")
    buf = UplinkBuffer(db, max_items=10)
    await buf.open()
    try:
        await buf.put(msgs(0, 1))
        writing = asyncio.get_running_loop().create_task(buf.put(msgs(2, 3, 4)))
        await asyncio.sleep(0)  # the put is in the database thread now
        assert len(buf) == 5
        assert buf.drop_oldest(3) == 3  # 0, 1 and 2 (the oldest of the batch)
        assert len(buf) == 2
        await writing
        await buf.settle()
        assert len(buf) == 2 and buf.dropped == 3
        assert [m.payload for m in await buf.peek()] == [b"3", b"4"]
    finally:
        await db.close()


async def test_put_front_goes_ahead_of_every_queued_message(tmp_path: Path) -> None:
    """Test ``put(front=True)``: unanswered messages go back ahead of the rows queued after them."""
    db = Database(tmp_path / "f.db")
    buf = UplinkBuffer(db, max_items=10)
    await buf.open()
    try:
        await buf.put(msgs(3, 4))
        await buf.put(msgs(1, 2), front=True)
        await buf.put(msgs(5))
        assert [m.payload for m in await buf.peek()] == [b"1", b"2", b"3", b"4", b"5"]
        assert len(buf) == 5
        empty = UplinkBuffer(Database(":memory:"))
        await empty.open()
        await empty.put(msgs(7), front=True)  # nothing queued: an ordinary put
        assert [m.payload for m in await empty.peek()] == [b"7"]
        await empty.db.close()
    finally:
        await db.close()
