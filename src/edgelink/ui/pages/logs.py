"""``/logs``: the event and error log (SQLite), paged and filtered; an error overview.

Filters: connection, event type, level and time span; newest first, `PAGE`
rows a page, **Older** / **Newer** to page (by row id, so new rows arriving
meanwhile do not shift a page). A row with a stack trace (an exception the
gateway logged) expands to show it. Above the list, the overview counts the
errors per connection and type over the last hour and the last
day (`Gateway.events_overview`). The page reads what ``GET /api/events``
reads (`Gateway.query_events`); **Refresh** reads again. A connection's card
links here with its id (``/logs?connection=ID``).
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

from fastapi import Request
from nicegui import ui

from edgelink.errors import EdgelinkError
from edgelink.ui.layout import View, page, set_text

__all__ = ["PAGE", "SPANS", "LogsPage", "logs", "summary"]

#: Rows per page.
PAGE: Final = 50
#: The time filter's choices: label -> seconds back (None: everything kept).
SPANS: Final[dict[str, float | None]] = {
    "last 15 min": 900.0,
    "last hour": 3600.0,
    "last day": 86400.0,
    "everything": None,
}
_LEVELS: Final = ("all", "info", "error")
_ALL: Final = "(all)"


def summary(data: Any, limit: int = 160) -> str:
    """Return an event's data as one short line."""
    if not data:
        return ""
    text = json.dumps(data, default=str, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class LogsPage:
    """The filters, the overview and one page of rows of one page view."""

    def __init__(self, view: View, connection: str | None) -> None:
        self.view = view
        #: Row ids that begin the pages seen so far (for Newer); None: the newest page.
        self.pages: list[int | None] = [None]
        ids = [_ALL, *sorted(s["connection_id"] for s in view.gateway.connections())]
        if connection and connection not in ids:
            ids.append(connection)
        ui.label("Logs").classes("text-xl font-bold")
        with ui.card().classes("w-full"):
            ui.label("Errors").classes("font-bold")
            self.overview = ui.html("", sanitize=False).props('data-testid="log-overview"')
        with ui.row().classes("items-end gap-4"):
            self.connection = ui.select(ids, value=connection or _ALL, label="Connection").props(
                'dense data-testid="log-connection"'
            )
            self.event_type = ui.input("Event type", placeholder="e.g. disconnected").props("dense")
            self.level = (
                ui.select(list(_LEVELS), value="all", label="Level")
                .props('dense data-testid="log-level"')
                .classes("min-w-[6rem]")
            )
            self.span = ui.select(list(SPANS), value="last day", label="Time").props("dense")
            ui.button("Refresh", on_click=self.first_page).props("no-caps")
        for control in (self.connection, self.level, self.span):
            control.on_value_change(self.first_page)
        self.event_type.on("keydown.enter", self.first_page)
        self.note = ui.label("").classes("text-sm opacity-70").props('data-testid="log-note"')
        self.rows = ui.column().classes("w-full gap-0")
        with ui.row().classes("gap-2"):
            ui.button("Newer", on_click=self.newer).props("flat no-caps")
            ui.button("Older", on_click=self.older).props("flat no-caps")
        self._last_id: int | None = None
        ui.timer(0.05, self.first_page, once=True)

    def filters(self) -> dict[str, Any]:
        """The query's filters from the controls."""
        filters: dict[str, Any] = {"limit": PAGE}
        if self.connection.value and self.connection.value != _ALL:
            filters["connection_id"] = self.connection.value
        kind = str(self.event_type.value or "").strip().lower()
        if kind:
            filters["event_type"] = kind
        if self.level.value and self.level.value != "all":
            filters["level"] = self.level.value
        back = SPANS.get(str(self.span.value))
        if back is not None:
            filters["since"] = time.time() - back
        return filters

    async def first_page(self) -> None:
        """Show the newest page for the filters, and the overview."""
        self.pages = [None]
        await self.show(None)
        await self.show_overview()

    async def older(self) -> None:
        """The next page back in time."""
        if self._last_id is None:
            return
        self.pages.append(self._last_id)
        await self.show(self._last_id)

    async def newer(self) -> None:
        """The page before (newer)."""
        if len(self.pages) > 1:
            self.pages.pop()
        await self.show(self.pages[-1])

    async def show(self, before_id: int | None) -> None:
        """Read one page from the log and draw it."""
        filters = self.filters()
        if before_id is not None:
            filters["before_id"] = before_id
        try:
            rows = await self.view.gateway.query_events(**filters)
        except (EdgelinkError, ValueError) as exc:
            set_text(self.note, f"cannot read the log: {exc}")
            return
        self.rows.clear()
        self._last_id = rows[-1]["id"] if len(rows) == PAGE else None
        page_no = len(self.pages)
        set_text(
            self.note,
            f"page {page_no}: {len(rows)} records"
            + ("" if rows else " (nothing matches the filters)"),
        )
        with self.rows:
            for row in rows:
                self._row(row)

    def _row(self, row: dict[str, Any]) -> None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["ts"]))
        level = row["level"]
        colour = "text-negative" if level == "error" else ""
        head = (
            f"{when}  {level.upper():7}  {row['connection_id'] or '-':16}  {row['event']}"
            f"  {row['state'] or ''}  {summary(row['data'])}"
        )
        if row.get("traceback"):
            with (
                ui.expansion(head)
                .classes(f"w-full font-mono text-xs {colour}")
                .props('dense data-testid="log-row"')
            ):
                ui.code(row["traceback"]).classes("w-full text-xs")
        else:
            ui.label(head).classes(f"font-mono text-xs whitespace-pre {colour}").props(
                'data-testid="log-row"'
            )

    async def show_overview(self) -> None:
        """Count errors per connection and type over the last hour and day."""
        from html import escape

        try:
            overview = await self.view.gateway.events_overview()
        except EdgelinkError as exc:
            self.overview.set_content(escape(str(exc)))
            return
        parts = []
        for key, title in (("hour", "last hour"), ("day", "last day")):
            groups = overview[key]
            if not groups:
                parts.append(f"<div><b>{title}</b>: none</div>")
                continue
            items = "".join(
                f"<tr><td class='pr-6 font-mono'>{escape(g['connection_id'] or '-')}</td>"
                f"<td class='pr-6'>{escape(g['event'])}</td>"
                f"<td class='pr-6'>{escape(g['level'])}</td><td>{g['count']}</td></tr>"
                for g in groups[:20]
            )
            parts.append(
                f"<div><b>{title}</b><table class='text-sm'>"
                "<tr class='opacity-60'><td>connection</td><td>type</td><td>level</td>"
                f"<td>count</td></tr>{items}</table></div>"
            )
        self.overview.set_content("<div class='flex gap-12'>" + "".join(parts) + "</div>")


@page("/logs", "Logs", icon="receipt_long")
def logs(view: View) -> None:
    """The logs page (``?connection=ID`` preselects a connection)."""
    from nicegui import context

    request: Request | None = getattr(context.client, "request", None)
    connection = request.query_params.get("connection") if request is not None else None
    LogsPage(view, connection)
