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

from edgelink.events import Event, log_name
from edgelink.redact import RedactingFilter, redact, redact_text

__all__ = ["BufferedMessage", "Database", "ErrorLogHandler", "EventLog", "UplinkBuffer"]

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
        "panic",
    }
)


class Database:
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

    async def close(self) -> None:
        """Close the file and end the thread (idempotent)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)


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


class EventLog:
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

    async def count(self) -> int:
        """Return the number of rows kept."""
        await self.flush()
        return await self._db.run(
            lambda: int(self._db.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        )

    async def close(self) -> None:
        """Stop the flush task and write what is left (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(RuntimeError):
            await self.flush()


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
        self._size = 0
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
        """Return the number of messages waiting."""
        return self._size

    async def put(self, messages: Iterable[tuple[str, bytes, int, bool]]) -> int:
        """Append ``(topic, payload, qos, retain)`` messages; return how many were dropped."""
        now = self._clock()
        rows = [(now, topic, payload, qos, int(retain)) for topic, payload, qos, retain in messages]
        if not rows:
            return 0
        dropped, size = await self._db.run(self._put, rows)
        self._size = size
        self.dropped += dropped
        return dropped

    def _put(self, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int]:
        cutoff = self._clock() - self.max_age_s

        def statements(conn: sqlite3.Connection) -> tuple[int, int]:
            conn.executemany(
                "INSERT INTO uplink (ts, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?)", rows
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
                conn.execute(
                    "INSERT INTO counters (name, value) VALUES ('uplink_dropped', ?)"
                    " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (dropped,),
                )
            return dropped, size

        return self._db.transaction(statements)

    async def peek(self, limit: int = 500) -> list[BufferedMessage]:
        """Return up to ``limit`` of the oldest messages, oldest first (they stay queued)."""

        def select() -> list[tuple[Any, ...]]:
            return self._db.conn.execute(
                "SELECT id, ts, topic, payload, qos, retain FROM uplink ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()

        rows = await self._db.run(select)
        return [BufferedMessage(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5])) for r in rows]

    async def ack(self, up_to_id: int) -> None:
        """Remove every message up to and including ``up_to_id`` (they were delivered)."""

        def delete() -> int:
            def statements(conn: sqlite3.Connection) -> int:
                conn.execute("DELETE FROM uplink WHERE id <= ?", (up_to_id,))
                return int(conn.execute("SELECT COUNT(*) FROM uplink").fetchone()[0])

            return self._db.transaction(statements)

        self._size = await self._db.run(delete)


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
