"""SQLite storage of the service: the system log and the uplink buffer.

One `Database` owns one SQLite file and one worker thread: every statement
runs in that thread, so the event loop never waits on the disk and SQLite
never sees two threads. `EventLog` keeps events and errors (with their stack
traces) bounded by rows and age; `UplinkBuffer` is the bounded, persistent
FIFO the MQTT bridge parks messages in while its broker is away.

Writes are batched: `EventLog.record` only appends to a list; a flush task
writes what piled up once per ``flush_interval`` in one transaction (10,000
events cost one fsync, not 10,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

from edgelink._tasks import cancel_and_wait
from edgelink.events import Event, log_name
from edgelink.lifecycle import AsyncResource
from edgelink.redact import RedactingFilter, redact, redact_text

__all__ = [
    "BufferedMessage",
    "Database",
    "DeadLetters",
    "ErrorLogHandler",
    "EventLog",
    "UplinkBuffer",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    connection_id TEXT,
    state TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    level TEXT NOT NULL DEFAULT 'info',
    data TEXT NOT NULL DEFAULT '{}',
    traceback TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_conn ON events (connection_id, id);
CREATE INDEX IF NOT EXISTS events_type ON events (type, id);
CREATE TABLE IF NOT EXISTS uplink (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""

#: Event types that are errors (kept with level "error").
_ERROR_TYPES = frozenset(
    {
        "error",
        "max_retries_exceeded",
        "suspended",
        "spam_suspended",
        "power_critical",
        "supervisor_restarted",
        "config_error",
        "route_error",
        "webhook_failed",
        "bridge_dropped",
        "bridge_dead_letter",
        "panic",
    }
)


class Database(AsyncResource):
    """One SQLite file, used from one worker thread.

    Args:
        path: The database file; ``":memory:"`` for a throwaway one.
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        """Create the file and tables if needed (idempotent)."""
        if self._executor is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgelink-sqlite")
        await self.run(self._open)

    def _open(self) -> None:
        if self.path != ":memory:":
            _make_private(Path(self.path))
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the database thread.

        Raises:
            RuntimeError: if the database is not open.
        """
        executor = self._executor
        if executor is None:
            raise RuntimeError(f"database {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection (use only inside `run`)."""
        if self._conn is None:
            raise RuntimeError(f"database {self.path} is not open")
        return self._conn

    def transaction(self, statements: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``statements(conn)`` in one transaction (inside `run`)."""
        conn = self.conn
        with self._lock:
            conn.execute("BEGIN")
            try:
                result = statements(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    async def aclose(self) -> None:
        """Close the file and end the thread (idempotent)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    async def close(self) -> None:
        """The former spelling of `aclose`, kept for one release."""
        await self.aclose()


#: Files SQLite keeps beside a database; they hold its data too.
_SIDE_FILES = ("-wal", "-shm", "-journal")


def _make_private(path: Path) -> None:
    """Create ``path`` 0600 if absent and make it and its side files 0600, whatever the umask.

    SQLite gives the -wal, -shm and -journal files it creates later the
    database file's mode, so they are private from their first byte too.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # fchmod ignores the umask; an older 0644 file is narrowed
    finally:
        os.close(fd)
    for suffix in _SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


class EventLog(AsyncResource):
    """Events and errors, kept in SQLite and bounded by rows and age.

    Example:
        log = EventLog(db, max_rows=100_000, max_age_s=30 * 86400)
        await log.start()
        manager.on_event("*", log.record)
        rows = await log.query(connection_id="plc_1", limit=50)

    Args:
        db: The database.
        max_rows: Rows kept at most; the oldest go first.
        max_age_s: Rows older than this are deleted.
        flush_interval: How often piled-up records are written, s.
        clock: Wall-clock seconds (injectable for retention tests).
    """

    def __init__(
        self,
        db: Database,
        *,
        max_rows: int = 100_000,
        max_age_s: float = 30 * 86400,
        flush_interval: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_rows < 1 or max_age_s <= 0:
            raise ValueError("max_rows must be >= 1 and max_age_s > 0")
        self._db = db
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.flush_interval = flush_interval
        self._clock = clock
        self._pending: list[tuple[Any, ...]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.written = 0
        self.write_errors = 0

    async def start(self) -> None:
        """Open the database and start the flush task (idempotent)."""
        await self._db.open()
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._run_flush(), name="edgelink.store.events"
            )

    def record(self, event: Event) -> None:
        """Queue an event for writing. Never blocks, never raises."""
        level = "error" if event.type in _ERROR_TYPES else "info"
        self._pending.append(
            (
                event.ts,
                event.type,
                event.connection_id,
                event.state,
                event.attempt,
                level,
                _dumps(event.data),
                None,
            )
        )
        self._kick()

    def record_error(
        self,
        kind: str,
        message: str,
        *,
        connection_id: str | None = None,
        exc: BaseException | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Queue an error with its stack trace (``exc``'s, if given)."""
        tb = redact_text("".join(traceback.format_exception(exc))) if exc is not None else None
        payload = {"message": redact_text(message), **(redact(data) if data else {})}
        self._pending.append(
            (self._clock(), kind, connection_id, None, 0, "error", _dumps(payload), tb)
        )
        self._kick()

    def _kick(self) -> None:
        if len(self._pending) >= 1000 and self._wake is not None:
            self._wake.set()

    async def flush(self) -> None:
        """Write everything queued so far."""
        rows, self._pending = self._pending, []
        if rows:
            try:
                await self._db.run(self._write, rows)
                self.written += len(rows)
            except (sqlite3.Error, RuntimeError):
                self.write_errors += len(rows)
                logger.exception("cannot write %d events to %s", len(rows), self._db.path)

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        cutoff = self._clock() - self.max_age_s

        def statements(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO events (ts, type, connection_id, state, attempt, level, data,"
                " traceback) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            trim(conn, "events", cutoff, self.max_rows)

        self._db.transaction(statements)

    async def _run_flush(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await wake.wait()
            wake.clear()
            await self.flush()

    async def query(
        self,
        *,
        event_type: str | None = None,
        connection_id: str | None = None,
        level: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Return events, newest first, filtered; page with ``before_id``.

        Queued records are written first, so a query sees everything recorded before it.
        """
        await self.flush()
        sql, args = newest_first(
            "SELECT id, ts, type, connection_id, state, attempt, level, data, traceback"
            " FROM events",
            (
                ("type = ?", event_type),
                ("connection_id = ?", connection_id),
                ("level = ?", level),
                ("ts >= ?", since),
                ("ts <= ?", until),
                ("id < ?", before_id),
            ),
            limit,
        )

        def select() -> list[tuple[Any, ...]]:
            return self._db.conn.execute(sql, args).fetchall()

        rows = await self._db.run(select)
        return [
            {
                "id": row[0],
                "ts": row[1],
                "type": row[2],
                "event": log_name(row[2]),
                "connection_id": row[3],
                "state": row[4],
                "attempt": row[5],
                "level": row[6],
                "data": json.loads(row[7]),
                "traceback": row[8],
            }
            for row in rows
        ]

    async def counts(self, *, since: float, limit: int = 100) -> list[dict[str, Any]]:
        """Return the errors since ``since``, counted per connection, type and level.

        Most first; at most ``limit`` groups.
        """
        await self.flush()
        sql = (
            "SELECT connection_id, type, level, COUNT(*) AS n FROM events"
            " WHERE ts >= ? AND level != 'info'"
            " GROUP BY connection_id, type, level ORDER BY n DESC, connection_id, type LIMIT ?"
        )

        def select() -> list[tuple[Any, ...]]:
            return self._db.conn.execute(sql, (since, limit)).fetchall()

        rows = await self._db.run(select)
        return [
            {
                "connection_id": r[0],
                "type": r[1],
                "event": log_name(r[1]),
                "level": r[2],
                "count": r[3],
            }
            for r in rows
        ]

    async def count(self) -> int:
        """Return the number of rows kept."""
        await self.flush()
        return await self._db.run(
            lambda: int(self._db.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        )

    async def aclose(self) -> None:
        """Stop the flush task and write what is left (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        with contextlib.suppress(RuntimeError):
            await self.flush()

    async def close(self) -> None:
        """The former spelling of `aclose`, kept for one release."""
        await self.aclose()


class ErrorLogHandler(logging.Handler):
    """Keeps every ERROR record with an exception in the `EventLog`, stack trace included.

    Attach it to the ``edgelink`` logger: a driver or callback failure that is
    logged with ``logger.exception`` then lands in SQLite (type ``exception``)
    next to the events. Records may come from any thread; they are handed to
    the event loop that runs the log.
    """

    def __init__(self, log: EventLog, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(level=logging.ERROR)
        self.addFilter(RedactingFilter())
        self._log = log
        self._loop = loop
        self._thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record (only those with exception info)."""
        if record.exc_info is None or record.exc_info[1] is None:
            return
        exc = record.exc_info[1]
        try:
            message = record.getMessage()
            data = {"logger": record.name, "where": f"{record.module}:{record.lineno}"}

            def store() -> None:
                self._log.record_error("exception", message, exc=exc, data=data)

            if threading.get_ident() == self._thread:
                store()
            elif not self._loop.is_closed():
                self._loop.call_soon_threadsafe(store)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@dataclass(frozen=True, slots=True)
class BufferedMessage:
    """One message parked in the uplink buffer."""

    id: int
    ts: float
    topic: str
    payload: bytes
    qos: int
    retain: bool


class UplinkBuffer:
    """A bounded, persistent FIFO of messages waiting for the broker.

    Bounded by count and age: when full, the oldest messages are dropped first
    and counted in `dropped` (kept across restarts). Messages come out in the
    order they went in.

    A writer that holds messages in memory before `put` (the bridge) keeps the
    total within `max_items` at once with `drop_oldest`: the drop is counted
    now and the rows are deleted in the next transaction, so ``len(buffer)``
    plus what the writer holds never exceeds the bound, even for a moment.
    Rows handed out by `peek` and not yet acknowledged are never dropped that
    way (they are being delivered).

    Args:
        db: The database.
        max_items: Messages kept at most.
        max_age_s: Messages older than this are dropped.
        clock: Wall-clock seconds.
    """

    def __init__(
        self,
        db: Database,
        *,
        max_items: int = 100_000,
        max_age_s: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_items < 1 or max_age_s <= 0:
            raise ValueError("max_items must be >= 1 and max_age_s > 0")
        self._db = db
        self.max_items = max_items
        self.max_age_s = max_age_s
        self._clock = clock
        self._size = 0  # rows in SQLite less the owed drops
        self._owed = 0  # oldest rows (after the held ones) counted dropped, not yet deleted
        self._unsaved = 0  # drops counted, not yet added to the persistent counter
        self._held = 0  # rows handed out by peek, not yet acknowledged
        self._floor = 0  # the id of the last held row
        self._incoming = 0  # rows a `put` is writing now (counted, and droppable, already)
        self.dropped = 0

    async def open(self) -> None:
        """Open the database and read the current depth and drop counter."""
        await self._db.open()

        def read() -> tuple[int, int]:
            conn = self._db.conn
            size = int(conn.execute("SELECT COUNT(*) FROM uplink").fetchone()[0])
            row = conn.execute(
                "SELECT value FROM counters WHERE name = 'uplink_dropped'"
            ).fetchone()
            return size, int(row[0]) if row else 0

        self._size, self.dropped = await self._db.run(read)

    def __len__(self) -> int:
        """Return the number of messages waiting (those being written included)."""
        return self._size + self._incoming

    @property
    def db(self) -> Database:
        """The database the buffer lives in."""
        return self._db

    @property
    def droppable(self) -> int:
        """Messages `drop_oldest` can drop now (those not being delivered)."""
        return max(0, self._size + self._incoming - self._held)

    def drop_oldest(self, n: int) -> int:
        """Count the ``n`` oldest messages not being delivered as dropped; return how many.

        Never blocks: the rows go in the next transaction of `put`, `peek`, `ack` or `settle`.
        """
        n = max(0, min(n, self.droppable))
        self._size -= n
        self._owed += n
        self.count_dropped(n)
        return n

    def count_dropped(self, n: int) -> None:
        """Count ``n`` messages dropped before they reached the buffer (kept across restarts)."""
        self.dropped += n
        self._unsaved += n

    def _take_owed(self) -> tuple[int, int]:
        owed, unsaved = self._owed, self._unsaved
        self._owed = self._unsaved = 0
        return owed, unsaved

    def _give_back(self, owed: int, unsaved: int) -> None:
        self._owed += owed
        self._unsaved += unsaved

    @staticmethod
    def _settle(conn: sqlite3.Connection, owed: int, unsaved: int, floor: int) -> None:
        """Delete ``owed`` oldest rows after id ``floor``; add ``unsaved`` to the counter."""
        if owed:
            conn.execute(
                "DELETE FROM uplink WHERE id IN"
                " (SELECT id FROM uplink WHERE id > ? ORDER BY id LIMIT ?)",
                (floor, owed),
            )
        if unsaved:
            conn.execute(
                "INSERT INTO counters (name, value) VALUES ('uplink_dropped', ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (unsaved,),
            )

    async def _run_owed(self, fn: Callable[[int, int], tuple[T, int]]) -> T:
        """Run ``fn(owed, unsaved)`` in the database thread; it returns (result, rows)."""
        owed, unsaved = self._take_owed()
        try:
            result, rows = await self._db.run(fn, owed, unsaved)
        except BaseException:
            self._give_back(owed, unsaved)
            raise
        # Drops counted while the statement ran are still owed.
        self._size = rows - self._owed
        return result

    async def put(
        self, messages: Iterable[tuple[str, bytes, int, bool]], *, front: bool = False
    ) -> int:
        """Append ``(topic, payload, qos, retain)`` messages; return how many were dropped.

        With ``front`` they go ahead of every message queued, in their order
        (messages sent and left unanswered, which are older than the rest).
        Call it only between a `peek` and the next one with nothing held
        (after `ack`), or the ack could take them.
        """
        now = self._clock()
        rows = [(now, topic, payload, qos, int(retain)) for topic, payload, qos, retain in messages]
        if not rows:
            return 0
        # Counted from now on: a drop while they are written may take them (they
        # are then deleted in the next transaction, oldest first).
        self._incoming = len(rows)
        try:
            dropped = await self._run_owed(
                lambda owed, unsaved: self._put(rows, owed, unsaved, front)
            )
        finally:
            self._incoming = 0
        self.dropped += dropped
        return dropped

    def _put(
        self, rows: Sequence[tuple[Any, ...]], owed: int, unsaved: int, front: bool
    ) -> tuple[int, int]:
        cutoff = self._clock() - self.max_age_s
        floor = self._floor

        def statements(conn: sqlite3.Connection) -> tuple[int, int]:
            self._settle(conn, owed, unsaved, floor)
            lowest = conn.execute("SELECT MIN(id) FROM uplink").fetchone()[0] if front else None
            if lowest is not None:
                first = int(lowest) - len(rows)
                conn.executemany(
                    "INSERT INTO uplink (id, ts, topic, payload, qos, retain)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [(first + n, *row) for n, row in enumerate(rows)],
                )
            else:
                conn.executemany(
                    "INSERT INTO uplink (ts, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
            dropped = conn.execute("DELETE FROM uplink WHERE ts < ?", (cutoff,)).rowcount
            size = int(conn.execute("SELECT COUNT(*) FROM uplink").fetchone()[0])
            if size > self.max_items:
                excess = size - self.max_items
                conn.execute(
                    "DELETE FROM uplink WHERE id IN (SELECT id FROM uplink ORDER BY id LIMIT ?)",
                    (excess,),
                )
                dropped += excess
                size = self.max_items
            if dropped:
                self._settle(conn, 0, dropped, 0)
            return dropped, size

        return self._db.transaction(statements)

    async def settle(self) -> None:
        """Write the drops counted by `drop_oldest` and `count_dropped` now."""
        if not (self._owed or self._unsaved):
            return
        floor = self._floor

        def run(owed: int, unsaved: int) -> tuple[None, int]:
            def statements(conn: sqlite3.Connection) -> tuple[None, int]:
                self._settle(conn, owed, unsaved, floor)
                return None, int(conn.execute("SELECT COUNT(*) FROM uplink").fetchone()[0])

            return self._db.transaction(statements)

        await self._run_owed(run)

    async def peek(self, limit: int = 500) -> list[BufferedMessage]:
        """Return up to ``limit`` of the oldest messages, oldest first (they stay queued).

        They are held (never dropped by `drop_oldest`) until `ack` or the next `peek`.
        """
        # Held from now: drops counted while the SELECT runs skip these rows.
        self._held = min(limit, self._size)
        self._floor = 0

        def select(owed: int, unsaved: int) -> tuple[list[tuple[Any, ...]], int]:
            def statements(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], int]:
                self._settle(conn, owed, unsaved, 0)
                found = conn.execute(
                    "SELECT id, ts, topic, payload, qos, retain FROM uplink ORDER BY id LIMIT ?",
                    (limit,),
                ).fetchall()
                return found, int(conn.execute("SELECT COUNT(*) FROM uplink").fetchone()[0])

            return self._db.transaction(statements)

        try:
            rows = await self._run_owed(select)
        except BaseException:
            self._held = 0
            raise
        self._held = len(rows)
        self._floor = rows[-1][0] if rows else 0
        return [BufferedMessage(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5])) for r in rows]

    async def ack(self, up_to_id: int) -> None:
        """Remove every message up to and including ``up_to_id`` (they were delivered)."""

        def delete(owed: int, unsaved: int) -> tuple[None, int]:
            def statements(conn: sqlite3.Connection) -> tuple[None, int]:
                conn.execute("DELETE FROM uplink WHERE id <= ?", (up_to_id,))
                self._settle(conn, owed, unsaved, up_to_id)
                return None, int(conn.execute("SELECT COUNT(*) FROM uplink").fetchone()[0])

            return self._db.transaction(statements)

        await self._run_owed(delete)
        self._held = 0
        self._floor = 0


def newest_first(
    select: str, filters: Iterable[tuple[str, Any]], limit: int
) -> tuple[str, list[Any]]:
    """Return ``select`` with the filters whose value is not None, newest first, 1..1000 rows.

    Each filter is ``("column op ?", value)``; the answer is the SQL and its arguments.
    """
    where: list[str] = []
    args: list[Any] = []
    for clause, value in filters:
        if value is not None:
            where.append(clause)
            args.append(value)
    sql = select + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
    args.append(max(1, min(limit, 1000)))
    return sql, args


def trim(conn: sqlite3.Connection, table: str, cutoff: float, max_rows: int) -> None:
    """Delete the rows of ``table`` older than ``cutoff`` and all but the newest ``max_rows``.

    ``table`` is one of the store's own table names, never input.
    """
    conn.execute(f"DELETE FROM {table} WHERE ts < ?", (cutoff,))  # noqa: S608 - our own name
    conn.execute(
        f"DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) - ?",  # noqa: S608
        (max_rows,),
    )


def _dumps(data: Any) -> str:
    return json.dumps(data, default=str, separators=(",", ":"))


class DeadLetters:
    """Messages the broker or the client refused, kept in SQLite for inspection.

    Bounded: past `max_rows` the oldest go first and are counted in `dropped`
    (kept across restarts, like `total`, the number ever added).

    Args:
        db: The database.
        max_rows: Dead letters kept at most.
        clock: Wall-clock seconds.
    """

    def __init__(
        self, db: Database, *, max_rows: int = 1000, clock: Callable[[], float] = time.time
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self._db = db
        self.max_rows = max_rows
        self._clock = clock
        self.total = 0
        self.dropped = 0

    async def open(self) -> None:
        """Open the database and read the counters."""
        await self._db.open()

        def read() -> tuple[int, int]:
            conn = self._db.conn
            got = dict(
                conn.execute(
                    "SELECT name, value FROM counters"
                    " WHERE name IN ('dead_letter_total', 'dead_letter_dropped')"
                ).fetchall()
            )
            return int(got.get("dead_letter_total", 0)), int(got.get("dead_letter_dropped", 0))

        self.total, self.dropped = await self._db.run(read)

    async def add(self, rows: Sequence[tuple[str, bytes, int, bool, str]]) -> int:
        """Keep ``(topic, payload, qos, retain, reason)`` rows; return how many old ones went."""
        now = self._clock()
        values = [(now, t, p, q, int(r), why) for t, p, q, r, why in rows]
        if not values:
            return 0
        self.total += len(values)

        def statements(conn: sqlite3.Connection) -> int:
            conn.executemany(
                "INSERT INTO dead_letter (ts, topic, payload, qos, retain, reason)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                values,
            )
            gone = conn.execute(
                "DELETE FROM dead_letter WHERE id <= (SELECT MAX(id) FROM dead_letter) - ?",
                (self.max_rows,),
            ).rowcount
            for name, n in (("dead_letter_total", len(values)), ("dead_letter_dropped", gone)):
                if n:
                    conn.execute(
                        "INSERT INTO counters (name, value) VALUES (?, ?)"
                        " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                        (name, n),
                    )
            return int(gone)

        gone: int = await self._db.run(self._db.transaction, statements)
        self.dropped += gone
        return gone

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """Return the newest dead letters first (payload as text where it is UTF-8)."""

        def select() -> list[tuple[Any, ...]]:
            return self._db.conn.execute(
                "SELECT id, ts, topic, payload, qos, retain, reason FROM dead_letter"
                " ORDER BY id DESC LIMIT ?",
                (max(1, min(limit, 1000)),),
            ).fetchall()

        out = []
        for row in await self._db.run(select):
            payload = bytes(row[3])
            try:
                text: str | None = payload.decode()
            except UnicodeDecodeError:
                text = None
            out.append(
                {
                    "id": row[0],
                    "ts": row[1],
                    "topic": row[2],
                    "payload": text if text is not None else payload.hex(),
                    "payload_encoding": "utf-8" if text is not None else "hex",
                    "qos": row[4],
                    "retain": bool(row[5]),
                    "reason": row[6],
                }
            )
        return out

    async def count(self) -> int:
        """Return the number of dead letters kept."""
        return await self._db.run(
            lambda: int(self._db.conn.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0])
        )
