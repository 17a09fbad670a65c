"""The audit trail in SQLite: who did what to the gateway, when, and how it went.

One row per admin action (instance actions, route changes, panic, recover,
reload), written at once (actions are rare; a crash right after must not lose
the record) and bounded by rows and age like the event log.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from edgelink.redact import redact
from edgelink.store.sqlite import Database, newest_first, trim

__all__ = ["AuditLog"]

_AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    result TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS audit_action ON audit (action, id);
CREATE INDEX IF NOT EXISTS audit_target ON audit (target, id);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
"""


class AuditLog:
    """Audit records in the service's SQLite file, bounded by rows and age.

    Example:
        audit = AuditLog(db, max_rows=100_000, max_age_s=365 * 86400)
        await audit.start()
        await audit.record("token:ab12cd34", "stop", "plc_1", {}, "ok")

    Args:
        db: The database (shared with the event log).
        max_rows: Records kept at most; the oldest go first.
        max_age_s: Records older than this are deleted.
        clock: Wall-clock seconds (injectable for retention tests).
    """

    def __init__(
        self,
        db: Database,
        *,
        max_rows: int = 100_000,
        max_age_s: float = 365 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_rows < 1 or max_age_s <= 0:
            raise ValueError("max_rows must be >= 1 and max_age_s > 0")
        self._db = db
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._clock = clock
        self.written = 0
        self.write_errors = 0

    async def start(self) -> None:
        """Open the database and create the ``audit`` table if needed (idempotent)."""
        await self._db.open()
        await self._db.run(lambda: self._db.conn.executescript(_AUDIT_SCHEMA))

    async def record(
        self,
        who: str,
        action: str,
        target: str | None,
        params: dict[str, Any],
        result: str,
        error: str | None = None,
    ) -> int | None:
        """Write one record now; return its id (None if it could not be written).

        ``params`` are redacted (secret-looking keys masked) before they are stored.
        """
        row = (
            self._clock(),
            who[:128],
            action[:64],
            None if target is None else target[:256],
            json.dumps(redact(params), default=str, separators=(",", ":")),
            result,
            None if error is None else error[:1000],
        )
        try:
            rowid = await self._db.run(self._write, row)
        except (sqlite3.Error, RuntimeError):
            self.write_errors += 1
            return None
        self.written += 1
        return rowid

    def _write(self, row: tuple[Any, ...]) -> int:
        cutoff = self._clock() - self.max_age_s

        def statements(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO audit (ts, who, action, target, params, result, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            trim(conn, "audit", cutoff, self.max_rows)
            return int(cursor.lastrowid or 0)

        return self._db.transaction(statements)

    async def query(
        self,
        *,
        action: str | None = None,
        target: str | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Return records, newest first, filtered; page with ``before_id``."""
        sql, args = newest_first(
            "SELECT id, ts, who, action, target, params, result, error FROM audit",
            (("action = ?", action), ("target = ?", target), ("id < ?", before_id)),
            limit,
        )

        def select() -> list[tuple[Any, ...]]:
            return self._db.conn.execute(sql, args).fetchall()

        rows = await self._db.run(select)
        return [
            {
                "id": row[0],
                "ts": row[1],
                "who": row[2],
                "action": row[3],
                "target": row[4],
                "params": json.loads(row[5]),
                "result": row[6],
                "error": row[7],
            }
            for row in rows
        ]
