"""``/symbols``: a PLC's symbol table as a tree — filter, search, details, add to the polled tags.

Per ``ads`` connection the symbol table is uploaded from the PLC
(`Gateway.ads_symbols`, as ``GET /api/connections/{id}/symbols``) and shown
as a tree of the dotted names: programs and global variable lists (``MAIN``,
``GVL_Plant``), function block instances, variables. Filter by base type
(``BOOL``, ``INT``, ``REAL``, ``STRING``, structures...) and search by name or
comment; selecting a symbol shows its type, size, comment, index group and
offset. **Poll this symbol** adds it to the connection's polled tags in
connections.json (`Gateway.add_polled_tag`, as ``POST
/api/connections/{id}/poll``: validated, atomic, audited, refused in panic).

A structure's members are not in the PLC's symbol table (they are in its
data type table, which is not uploaded yet): a structured symbol is one
node, polled whole.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from nicegui import ui

from edgelink.errors import EdgelinkError
from edgelink.ui.layout import View, act, page, set_text

if TYPE_CHECKING:
    from nicegui.elements.label import Label

__all__ = ["base_type", "symbol_tree", "symbols"]

#: Nodes shown at most (a big PLC has tens of thousands of symbols: search narrows).
MAX_NODES = 2000


def base_type(type_name: str) -> str:
    """Return the type a filter groups by: ``STRING(80)`` -> ``STRING``, arrays -> ``ARRAY``."""
    upper = type_name.upper()
    if upper.startswith("ARRAY"):
        return "ARRAY"
    return re.sub(r"\(.*\)$", "", type_name).strip() or type_name


def symbol_tree(
    table: list[dict[str, Any]], *, text: str = "", type_filter: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Return the tree nodes of the symbols that pass the filters, and how many passed.

    A node is ``{"id": "MAIN.fb.x", "label": "x", "children": [...]}``; a
    symbol's node carries its ``type`` in the label.
    """
    needle = text.strip().lower()
    roots: list[dict[str, Any]] = []
    index: dict[str, dict[str, Any]] = {}
    shown = 0
    for symbol in table:
        name = str(symbol["name"])
        if type_filter and base_type(str(symbol["type"])) != type_filter:
            continue
        if needle and needle not in name.lower() and needle not in str(symbol["comment"]).lower():
            continue
        shown += 1
        if shown > MAX_NODES:
            continue
        parts = name.split(".")
        siblings = roots
        for depth in range(len(parts)):
            path = ".".join(parts[: depth + 1])
            node = index.get(path)
            if node is None:
                node = {"id": path, "label": parts[depth], "children": []}
                index[path] = node
                siblings.append(node)
            siblings = node["children"]
        index[name]["label"] = f"{parts[-1]} : {symbol['type']}"
    return roots, shown


class SymbolBrowser:
    """The connection choice, filters, tree and details of one page view."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.table: list[dict[str, Any]] = []
        self.by_name: dict[str, dict[str, Any]] = {}
        self.selected: dict[str, Any] | None = None
        ids = [s["connection_id"] for s in view.gateway.connections() if s.get("type") == "ads"]
        with ui.row().classes("items-end gap-4"):
            self.conn = (
                ui.select(
                    ids, value=ids[0] if ids else None, label="PLC connection", on_change=self.load
                )
                .classes("w-48")
                .props('data-testid="plc"')
            )
            self.search = ui.input("Search", on_change=self.show).props(
                'clearable dense data-testid="search"'
            )
            self.types = (
                ui.select(["all"], value="all", label="Type", on_change=self.show)
                .classes("w-40")
                .props('data-testid="type"')
            )
            ui.button("Reload", on_click=self.load).props("flat")
        self.summary: Label = ui.label("" if ids else "no ads connection").props(
            'data-testid="symbols-summary"'
        )
        with ui.row().classes("w-full gap-6 no-wrap items-start"):
            self.tree = (
                ui.tree([], on_select=self.select)
                .classes("w-1/2")
                .props('data-testid="symbols-tree"')
            )
            with ui.card().classes("w-1/2").props('data-testid="symbol-details"'):
                self.details: Label = ui.label("Select a symbol").classes("whitespace-pre-line")
                with ui.row().classes("items-end"):
                    self.interval = ui.number("Interval (s)", value=1.0, min=0.05).classes("w-32")
                    self.poll_button = ui.button("Poll this symbol", on_click=self.poll).props(
                        'data-testid="poll-symbol"'
                    )
                self.poll_button.disable()
        if ids:
            ui.timer(0.05, self.load, once=True)

    async def load(self) -> None:
        """Upload the chosen connection's symbol table."""
        cid = self.conn.value
        if not cid:
            return
        set_text(self.summary, f"uploading the symbol table of {cid}...")
        try:
            self.table = await self.view.gateway.ads_symbols(cid)
        except EdgelinkError as exc:
            self.table = []
            set_text(self.summary, f"{cid}: {exc.message}")
            self.show()
            return
        self.by_name = {s["name"]: s for s in self.table}
        kinds = sorted({base_type(str(s["type"])) for s in self.table})
        self.types.set_options(["all", *kinds], value="all")
        self.show()

    def show(self) -> None:
        """Rebuild the tree from the filters."""
        type_filter = None if self.types.value in (None, "all") else str(self.types.value)
        nodes, shown = symbol_tree(
            self.table, text=str(self.search.value or ""), type_filter=type_filter
        )
        self.tree.props["nodes"] = nodes
        self.tree.update()
        if self.table:
            more = f" (first {MAX_NODES} shown: search to narrow)" if shown > MAX_NODES else ""
            set_text(
                self.summary, f"{shown} of {len(self.table)} symbols of {self.conn.value}{more}"
            )
        if shown and (self.search.value or type_filter):
            self.tree.expand()

    def select(self, event: Any) -> None:
        """Show the details of the selected symbol."""
        symbol = self.by_name.get(str(event.value)) if event.value else None
        self.selected = symbol
        if symbol is None:
            set_text(self.details, "Select a symbol")
            self.poll_button.disable()
            return
        set_text(
            self.details,
            f"{symbol['name']}\n"
            f"type: {symbol['type']}\n"
            f"size: {symbol['size']} bytes\n"
            f"index group: 0x{symbol['index_group']:X}\n"
            f"index offset: 0x{symbol['index_offset']:X}\n"
            f"comment: {symbol['comment'] or '-'}",
        )
        self.poll_button.enable()

    async def poll(self) -> None:
        """Add the selected symbol to the connection's polled tags."""
        symbol, cid = self.selected, self.conn.value
        if symbol is None or not cid:
            return
        interval = float(self.interval.value or 1.0)
        gateway, who = self.view.gateway, self.view.who
        await act(
            lambda: gateway.add_polled_tag(cid, symbol["name"], interval=interval, who=who),
            f"{symbol['name']} is polled every {interval:g} s",
        )


@page("/symbols", "PLC symbols", icon="account_tree")
def symbols(view: View) -> None:
    """The symbol browser."""
    SymbolBrowser(view)
