"""What the data and MQTT pages share: the data space as a tree, a branch's points, one point.

- `DataTree`: a `ui.tree` over the data space below a root (``""``: every
  source; a connection id: its tags or topics). Levels are the data space's
  (segments and MQTT topic levels). Only what is expanded is sent: a closed
  branch carries one placeholder child, and at most `MAX_CHILDREN` children
  per branch are listed (then "… N more"). The structure is looked at again
  only when the data space's tree changed (`Gateway.data_tree_version`).
- `PointsPanel`: the addresses directly below the selected branch (at most
  `MAX_ROWS`), each with its live value, quality and age.
- `PointDetail`: one address: value, quality, age, time, source, the
  history ring as an ECharts line (numbers and booleans) or as text, and for
  a writable address (`Gateway.data_writable`) a **Write** form with a
  confirmation dialog that shows the device's answer (`Gateway.write_point`,
  audited with who).

Every refresh runs in the page's one timer and sets only what changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING, Any, Final

from nicegui import ui

from edgelink.errors import EdgelinkError
from edgelink.router.datapoint import QUALITY_REASON, DataPoint
from edgelink.service.gateway import ActionRefusedError, UnknownConnectionError
from edgelink.ui.layout import View, set_text

if TYPE_CHECKING:
    from nicegui.elements.label import Label

__all__ = [
    "MAX_CHILDREN",
    "MAX_ROWS",
    "DataTree",
    "PointDetail",
    "PointsPanel",
    "format_age",
    "format_value",
    "parse_value",
    "point_row",
]

#: Children listed per branch of the tree; the rest is counted ("… N more").
MAX_CHILDREN: Final = 200
#: Points listed under the selected branch.
MAX_ROWS: Final = 50
#: Seconds between two sends of the history chart while values keep coming.
CHART_EVERY_S: Final = 1.0
#: Characters of a value shown before it is cut ("…").
MAX_VALUE_CHARS: Final = 120
#: A placeholder node's id is its branch's path and this (addresses have no spaces).
_PLACEHOLDER: Final = " …"


def format_value(value: Any) -> str:
    """Return a value as the UI shows it: JSON-like, cut at `MAX_VALUE_CHARS`."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        try:
            text = json.dumps(value, default=str, separators=(",", ":"))
        except ValueError:
            text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def format_age(ts: float | None, now: float) -> str:
    """Return how long ago ``ts`` was: ``0.4 s``, ``12 s``, ``3 min``, ``2.0 h``."""
    if ts is None:
        return "-"
    seconds = max(0.0, now - ts)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def parse_value(text: str) -> Any:
    """Return what a typed value means: JSON (``42``, ``21.5``, ``true``, ``"x"``) or the text.

    Raises:
        ValueError: for an empty value.
    """
    text = text.strip()
    if not text:
        raise ValueError("type a value")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _quality(dp: DataPoint) -> str:
    reason = (dp.metadata or {}).get(QUALITY_REASON)
    return dp.quality if reason is None else f"{dp.quality} ({reason})"


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


class DataTree:
    """The data space below ``root`` as a `ui.tree`; ``on_select(path)`` for a chosen node."""

    def __init__(self, view: View, root: str, on_select: Callable[[str], None]) -> None:
        self.view = view
        self.root = root
        self.on_select = on_select
        self.expanded: set[str] = set()
        self._seen: tuple[int, frozenset[str], str] | None = None
        self.tree = (
            ui.tree([], on_select=self._selected, on_expand=self._expanded)
            .props('dense no-transition data-testid="data-tree"')
            .classes("w-full")
        )
        self.empty = ui.label("Nothing here yet.").classes("text-sm opacity-60")
        self.refresh()

    def set_root(self, root: str) -> None:
        """Show the data space below another root (collapsed, nothing selected)."""
        self.root = root
        self.expanded = set()
        self.tree.props["expanded"] = []
        self.tree.deselect()
        self.refresh()

    def label(self, path: str, parent: str) -> str:
        """The node's text: its own level of the path (``(empty)`` for an empty MQTT level)."""
        own = path[len(parent) + 1 :] if parent else path
        return own or "(empty)"

    def nodes(self, parent: str) -> list[dict[str, Any]]:
        """The nodes below ``parent``: expanded branches filled, closed ones with a placeholder."""
        gateway = self.view.gateway
        paths = gateway.data_children(parent, MAX_CHILDREN)
        nodes: list[dict[str, Any]] = []
        for path in paths:
            node: dict[str, Any] = {"id": path, "label": self.label(path, parent)}
            if gateway.data_has_children(path):
                if path in self.expanded:
                    node["children"] = self.nodes(path)
                else:
                    node["children"] = [
                        {"id": path + _PLACEHOLDER, "label": "…", "selectable": False}
                    ]
            nodes.append(node)
        more = gateway.data_child_count(parent) - len(paths)
        if more > 0:
            nodes.append(
                {
                    "id": parent + _PLACEHOLDER + "more",
                    "label": f"… {more} more",
                    "selectable": False,
                }
            )
        return nodes

    def refresh(self) -> None:
        """Send the tree again if the data space's tree or the expanded branches changed."""
        seen = (self.view.gateway.data_tree_version(), frozenset(self.expanded), self.root)
        if seen == self._seen:
            return
        self._seen = seen
        nodes = self.nodes(self.root)
        if nodes != self.tree.props["nodes"]:
            self.tree.props["nodes"] = nodes
            self.tree.update()
        empty = not nodes
        if self.empty.visible != empty:
            self.empty.set_visibility(empty)

    def select(self, path: str) -> None:
        """Select ``path`` in the tree (as a click does) and open the branches above it."""
        self.tree.select(path)
        parent = path
        while parent != self.root and len(parent) > len(self.root):
            cut = max(parent.rfind("."), parent.rfind("/"))
            if cut <= 0:
                break
            parent = parent[:cut]
            if parent != self.root:
                self.expanded.add(parent)
        self.tree.props["expanded"] = sorted(self.expanded)
        self.refresh()

    def _selected(self, event: Any) -> None:
        path = event.value
        if not isinstance(path, str) or _PLACEHOLDER in path:
            return
        if self.view.gateway.data_has_children(path) and path not in self.expanded:
            # Choosing a branch opens it too.
            self.expanded.add(path)
            self.tree.props["expanded"] = sorted(self.expanded)
            self.refresh()
        self.on_select(path)

    def _expanded(self, event: Any) -> None:
        self.expanded = {k for k in event.value or () if _PLACEHOLDER not in k}
        self.refresh()


#: The points table's header.
_HEAD: Final = "".join(
    f'<th class="text-left font-normal opacity-60 pr-8">{key}</th>'
    for key in ("name", "value", "quality", "age")
)
#: A click on a point's name (anywhere in the table) sends its address to the server.
_CHOOSE_JS: Final = (
    "(e) => { const a = e.target.closest('[data-address]'); if (a) emit(a.dataset.address); }"
)


def point_row(address: str, name: str, dp: DataPoint | None, now: float) -> str:
    """One row of a `PointsPanel` as HTML: name (a link), value, quality, age; all escaped.

    Addresses, names and values come from devices and brokers: every one is
    escaped, attributes included, so a value cannot carry markup or script.
    """
    a = escape(address, quote=True)
    if dp is None:
        value, quality, age = "(forgotten)", "", ""
    else:
        value, quality, age = format_value(dp.value), _quality(dp), format_age(dp.ts, now)
    return (
        f'<tr><td class="pr-8"><span class="cursor-pointer font-mono text-primary underline"'
        f' data-address="{a}" data-testid="point-{a}">{escape(name)}</span></td>'
        f'<td class="pr-8 font-mono" data-testid="value-{a}">{escape(value)}</td>'
        f'<td class="pr-8">{escape(quality)}</td><td>{escape(age)}</td></tr>'
    )


class PointsPanel:
    """The addresses directly below one branch, with live values.

    The rows are one piece of HTML, built and escaped here: a tick that
    changed any value sends one string, not one message per changed label or
    a table of row objects (a profile at 5,000 datapoints/s with three pages
    open found the per-element messages, then the row objects' walk through
    NiceGUI's observables and socket.io's binary check, to be most of a
    page's cost).
    """

    def __init__(self, view: View, on_click: Callable[[str], None]) -> None:
        self.view = view
        self.on_click = on_click
        self.branch: str | None = None
        self.points: list[tuple[str, str]] = []
        self._seen: tuple[int, str | None] | None = None
        with ui.card().classes("w-full") as card:
            self.title = ui.label("").classes("font-bold")
            self.table = ui.html("", sanitize=False).classes("w-full text-sm")
            self.table.on("click", lambda e: self._chosen(e.args), js_handler=_CHOOSE_JS)
            self.note = ui.label("").classes("text-sm opacity-60")
        self.card = card
        self.show(None)

    def show(self, branch: str | None) -> None:
        """List the points below ``branch`` (None: nothing chosen yet)."""
        self.branch = branch
        self._seen = None
        self.refresh()

    def refresh(self) -> None:
        """Find the points again when the tree changed; send the rows when any changed."""
        gateway = self.view.gateway
        seen = (gateway.data_tree_version(), self.branch)
        if seen != self._seen:
            self._seen = seen
            self._rebuild()
        content = ""
        if self.points:
            now = time.time()
            rows = "".join(
                point_row(a, name, gateway.data_point(a), now) for a, name in self.points
            )
            content = f"<table><thead><tr>{_HEAD}</tr></thead><tbody>{rows}</tbody></table>"
        if content != self.table.content:
            self.table.set_content(content)

    def _chosen(self, address: Any) -> None:
        if isinstance(address, str) and any(a == address for a, _ in self.points):
            self.on_click(address)

    def _rebuild(self) -> None:
        gateway = self.view.gateway
        branch = self.branch
        self.points = []
        if branch is None:
            set_text(self.title, "Points")
            set_text(self.note, "Choose a branch in the tree.")
            return
        set_text(self.title, f"Points under {branch}")
        children = gateway.data_children(branch, MAX_CHILDREN)
        found = [p for p in children if gateway.data_point(p) is not None][:MAX_ROWS]
        self.points = [(path, path[len(branch) + 1 :] or "(empty)") for path in found]
        total = gateway.data_child_count(branch)
        if not found:
            note = "No values directly here: open a branch."
        elif total > len(found):
            note = f"{len(found)} points shown; {total} entries below {branch}."
        else:
            note = ""
        set_text(self.note, note)


class PointDetail:
    """One address: live value, quality, age, the history chart and the write form."""

    def __init__(self, view: View, *, write_label: str = "Write") -> None:
        self.view = view
        self.address: str | None = None
        self.writable = False
        self._history_key: tuple[Any, ...] | None = None
        self._history_at = 0.0
        self._pending: Any = None
        with ui.card().classes("w-full") as card:
            self.title = (
                ui.label("").classes("font-bold font-mono").props('data-testid="point-title"')
            )
            with ui.grid(columns="auto 1fr").classes("gap-x-6 gap-y-0 text-sm"):
                self.fields: dict[str, Label] = {}
                for key in ("value", "quality", "age", "time", "source"):
                    ui.label(key).classes("opacity-60")
                    self.fields[key] = ui.label("").props(f'data-testid="detail-{key}"')
            self.chart = ui.echart(
                {
                    "animation": False,
                    "grid": {"left": 50, "right": 20, "top": 20, "bottom": 30},
                    "tooltip": {"trigger": "axis"},
                    "xAxis": {"type": "time"},
                    "yAxis": {"type": "value", "scale": True},
                    "series": [{"type": "line", "name": "", "data": [], "showSymbol": True}],
                }
            ).classes("w-full h-56")
            self.history_text = ui.label("").classes("text-sm font-mono opacity-80")
            with ui.row().classes("items-end gap-2") as write_row:
                self.input = ui.input("Value", placeholder='42, 21.5, true, "text"').props("dense")
                ui.button(write_label, on_click=self.ask_write).props("no-caps")
            self.write_row = write_row
            self.answer = ui.label("").props('data-testid="write-answer"').classes("text-sm")
        self.card = card
        with ui.dialog() as dialog, ui.card():
            self.question = ui.label("").classes("font-bold")
            with ui.row():
                ui.button("Cancel", on_click=dialog.close).props("flat no-caps")
                ui.button("Confirm", on_click=self.confirm_write).props("no-caps")
        self.dialog = dialog
        self.show(None)

    def show(self, address: str | None) -> None:
        """Show ``address`` (None, or a path without a value: the card hides)."""
        gateway = self.view.gateway
        if address is not None and gateway.data_point(address) is None:
            address = None
        self.address = address
        self._history_key = None
        self._history_at = 0.0
        self.card.set_visibility(address is not None)
        if address is None:
            return
        set_text(self.title, address)
        self.writable = gateway.data_writable(address)
        self.write_row.set_visibility(self.writable)
        set_text(self.answer, "")
        self.refresh()

    def refresh(self) -> None:
        """Set what changed: the fields each tick, the history when it moved.

        The history goes at most every `CHART_EVERY_S`: the chart carries the whole ring.
        """
        address = self.address
        if address is None:
            return
        gateway = self.view.gateway
        dp = gateway.data_point(address)
        if dp is None:
            set_text(self.fields["value"], "(forgotten)")
            return
        set_text(self.fields["value"], format_value(dp.value))
        set_text(self.fields["quality"], _quality(dp))
        set_text(self.fields["age"], format_age(dp.ts, time.time()))
        set_text(self.fields["time"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dp.ts)))
        set_text(self.fields["source"], dp.source)
        key = (dp.ts, dp.quality)
        now = time.monotonic()
        if key != self._history_key and now - self._history_at >= CHART_EVERY_S:
            self._history_key = key
            self._history_at = now
            self._show_history(address)

    def _show_history(self, address: str) -> None:
        history = self.view.gateway.data_history(address)
        numbers = [(dp.ts, _numeric(dp.value)) for dp in history]
        if history and all(n is not None for _, n in numbers):
            series = self.chart.options["series"][0]
            series["name"] = address
            series["data"] = [[round(ts * 1000), n] for ts, n in numbers]
            self.chart.update()
            if not self.chart.visible:
                self.chart.set_visibility(True)
            set_text(self.history_text, f"history: the last {len(history)} values")
        else:
            if self.chart.visible:
                self.chart.set_visibility(False)
            shown = " · ".join(format_value(dp.value) for dp in history[-10:])
            set_text(self.history_text, f"history ({len(history)}): {shown}")

    def ask_write(self) -> None:
        """Parse the typed value and ask for confirmation."""
        if self.address is None:
            return
        try:
            value = parse_value(self.input.value or "")
        except ValueError as exc:
            set_text(self.answer, str(exc))
            return
        self._pending = value
        kind = type(value).__name__
        set_text(self.question, f"Write {format_value(value)} ({kind}) to {self.address}?")
        self.dialog.value = True

    async def confirm_write(self) -> None:
        """Write the confirmed value through the gateway (audited) and show the device's answer."""
        self.dialog.value = False
        address, value = self.address, self._pending
        if address is None:
            return
        set_text(self.answer, f"writing {format_value(value)} …")
        view = self.view
        try:
            answer = await view.gateway.write_point(address, value, who=view.who)
        except (UnknownConnectionError, ActionRefusedError, ValueError, TypeError) as exc:
            text = f"refused: {exc}"
        except (EdgelinkError, TimeoutError) as exc:
            text = f"device answered: {type(exc).__name__}: {exc}"
        else:
            text = f"OK: the device took {format_value(value)} in {answer['elapsed_ms']} ms"
            if "read_back" in answer:
                text += f"; read back: {format_value(answer['read_back'])}"
            elif "read_back_error" in answer:
                text += f"; read back failed: {answer['read_back_error']}"
        set_text(self.answer, text)
        ui.notify(text, type="negative" if not text.startswith("OK") else "positive")
