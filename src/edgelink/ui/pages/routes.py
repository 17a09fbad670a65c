"""``/routes``: the route table with live counters; edit, enable/disable, test and save routes.

The table lists every route of ``routing.json`` as written with its
counters (matched, passed, filtered, errors) and the rate of datapoints it
passed over the last second or more, refreshed once a second. **Edit** (or
**New route**) opens the form: every change is checked at once by compiling
the route under the running caps (`Gateway.try_route`), and an error shows
next to the field it belongs to, with the position in the expression. **Test**
runs the route on a sample address and value (does ``from`` match, the
condition's result, the transformed value and the targets; nothing is sent).
**Save** writes the whole table through `Gateway.replace_routes`, the path
``PUT /api/routes`` takes (atomic, audited with who); a table the router
refuses changes nothing and the error shows. **Enable** / **Disable** save
the route's ``enabled`` the same way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from nicegui import ui

from edgelink.errors import EdgelinkError, RouteError
from edgelink.ui.layout import View, page, set_text

if TYPE_CHECKING:
    from nicegui.elements.input import Input
    from nicegui.elements.label import Label

__all__ = ["FIELDS", "RoutesPage", "RouteRates", "field_of_error", "route_spec", "routes"]

#: The form's fields, in order: (key in routing.json, label).
FIELDS: Final = (
    ("id", "Id"),
    ("from", "From"),
    ("to", "To"),
    ("condition", "Condition"),
    ("transform", "Transform"),
    ("description", "Description"),
)
#: Seconds between two refreshes of the table's counters.
TABLE_EVERY_S: Final = 1.0


def field_of_error(exc: RouteError) -> str | None:
    """Return which form field a route error belongs to (``from``, ``condition``, ...), or None."""
    path = exc.path or ""
    for key, _label in FIELDS:
        if path.endswith(f".{key}") or f".{key}[" in path or path == key:
            return key
    return None


def route_spec(values: dict[str, str], enabled: bool) -> dict[str, Any]:
    """Return a route as routing.json writes it from the form's texts.

    Empty optional fields are left out; ``from`` and ``to`` take a comma-separated list.
    """
    spec: dict[str, Any] = {"id": values.get("id", "").strip()}
    for key in ("from", "to"):
        parts = [p.strip() for p in values.get(key, "").split(",") if p.strip()]
        spec[key] = parts[0] if len(parts) == 1 else parts
    for key in ("condition", "transform", "description"):
        text = values.get(key, "").strip()
        if text:
            spec[key] = text
    if not enabled:
        spec["enabled"] = False
    return spec


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


@dataclass
class RouteRates:
    """Datapoints passed per second per route, from the counters' deltas over >= 1 s."""

    window: float = 1.0
    _last: dict[str, tuple[float, int]] = field(default_factory=dict)
    _rates: dict[str, float] = field(default_factory=dict)

    def sample(self, passed: dict[str, int], mono: float) -> dict[str, float | None]:
        """Take the routes' ``passed`` counters at ``mono``; return each route's rate."""
        for rid in list(self._last):
            if rid not in passed:
                del self._last[rid]
                self._rates.pop(rid, None)
        for rid, count in passed.items():
            last = self._last.get(rid)
            if last is None or count < last[1]:
                self._last[rid] = (mono, count)
            elif mono - last[0] >= self.window:
                self._rates[rid] = (count - last[1]) / (mono - last[0])
                self._last[rid] = (mono, count)
        return {rid: self._rates.get(rid) for rid in passed}


_COLUMNS: Final = [
    {"name": key, "label": label, "field": key, "align": "left"}
    for key, label in (
        ("id", "id"),
        ("from", "from"),
        ("to", "to"),
        ("state", "state"),
        ("matched", "matched"),
        ("passed", "passed"),
        ("filtered", "filtered"),
        ("errors", "errors"),
        ("rate", "passed/s"),
        ("actions", ""),
    )
]
_ACTIONS_CELL: Final = (
    '<q-td :props="props">'
    '<q-btn flat dense no-caps label="Edit" :data-testid="\'edit-\' + props.row.id"'
    " @click=\"() => $parent.$emit('edit', props.row.id)\" />"
    "<q-btn flat dense no-caps :label=\"props.row.enabled ? 'Disable' : 'Enable'\""
    " :data-testid=\"'toggle-' + props.row.id\""
    " @click=\"() => $parent.$emit('toggle', props.row.id)\" />"
    "</q-td>"
)


class RoutesPage:
    """The table and the form of one page view."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.rates = RouteRates()
        self.editing: str | None = None  # the id of the route being edited (None: a new one)
        self._table_at = 0.0
        with ui.row().classes("items-center gap-4"):
            ui.label("Routes").classes("text-xl font-bold")
            ui.button("New route", on_click=lambda: self.edit(None)).props("no-caps")
        self.totals = ui.label("").classes("text-sm opacity-70")
        self.table = (
            ui.table(rows=[], columns=_COLUMNS, row_key="id")
            .props('dense flat data-testid="routes-table"')
            .classes("w-full")
        )
        self.table.add_slot("body-cell-actions", _ACTIONS_CELL)
        self.table.on("edit", lambda e: self.edit(str(e.args)))
        self.table.on("toggle", lambda e: self.toggle(str(e.args)))
        self._build_form()
        view.refreshers.append(self.refresh)
        self.refresh()

    # ---------------------------------------------------------------- table

    def specs(self) -> list[dict[str, Any]]:
        """The route table as written (without counters)."""
        return [
            {k: v for k, v in r.items() if k != "stats"}
            for r in self.view.gateway.routes()["routes"]
        ]

    def refresh(self) -> None:
        """Send the counters again, at most every `TABLE_EVERY_S`."""
        now = time.monotonic()
        if now - self._table_at < TABLE_EVERY_S:
            return
        self._table_at = now
        table = self.view.gateway.routes()
        routes = table["routes"]
        rates = self.rates.sample({r["id"]: r["stats"]["passed"] for r in routes}, now)
        rows = []
        for r in routes:
            stats = r["stats"]
            rate = rates.get(r["id"])
            rows.append(
                {
                    "id": r["id"],
                    "from": _text(r.get("from")),
                    "to": _text(r.get("to")),
                    "state": stats.get("state")
                    or ("enabled" if r.get("enabled", True) else "disabled"),
                    "enabled": r.get("enabled", True),
                    "matched": stats.get("matched", 0),
                    "passed": stats.get("passed", 0),
                    "filtered": stats.get("filtered", 0),
                    "errors": stats.get("errors", 0),
                    "rate": "-" if rate is None else f"{rate:.1f}",
                }
            )
        if rows != self.table.rows:
            self.table.rows = rows
        totals = table["stats"]
        set_text(
            self.totals,
            f"{len(routes)} routes · {totals.get('received', 0)} datapoints received"
            f" · {totals.get('loop_blocked', 0)} loop-blocked",
        )

    # ---------------------------------------------------------------- form

    def _build_form(self) -> None:
        with ui.card().classes("w-full max-w-3xl") as card:
            self.form_title = ui.label("").classes("font-bold")
            self.inputs: dict[str, Input] = {}
            for key, label in FIELDS:
                inp = ui.input(label).props(f'dense data-testid="route-{key}"').classes("w-full")
                inp.on_value_change(lambda _e: self.check())
                self.inputs[key] = inp
            self.enabled = ui.switch("Enabled", value=True)
            self.form_error = (
                ui.label("").classes("text-negative text-sm").props('data-testid="route-error"')
            )
            with ui.row().classes("items-end gap-2"):
                self.sample_address = ui.input("Sample address").props(
                    'dense data-testid="sample-address"'
                )
                self.sample_value = ui.input("Sample value", placeholder="42, 21.5, true").props(
                    'dense data-testid="sample-value"'
                )
                ui.button("Test", on_click=self.test).props("no-caps")
            self.result: Label = (
                ui.label("").classes("text-sm font-mono").props('data-testid="route-test-result"')
            )
            with ui.row().classes("gap-2"):
                ui.button("Save", on_click=self.save).props("no-caps")
                ui.button("Cancel", on_click=self.close).props("flat no-caps")
        self.form = card
        card.set_visibility(False)

    def values(self) -> dict[str, str]:
        """The form's texts by routing.json key."""
        return {key: str(inp.value or "") for key, inp in self.inputs.items()}

    def edit(self, route_id: str | None) -> None:
        """Open the form on a route of the table (None: a new route)."""
        spec: dict[str, Any] = {}
        if route_id is not None:
            spec = next((s for s in self.specs() if s["id"] == route_id), {})
            if not spec:
                ui.notify(f"route {route_id!r} is gone", type="warning")
                return
        self.editing = route_id
        set_text(self.form_title, f"Route {route_id}" if route_id else "New route")
        for key, inp in self.inputs.items():
            inp.value = _text(spec.get(key))
        self.enabled.value = bool(spec.get("enabled", True))
        sources = spec.get("from")
        first = sources[0] if isinstance(sources, list) and sources else sources
        if isinstance(first, str) and "*" not in first and "#" not in first:
            self.sample_address.value = first
        set_text(self.result, "")
        self.form.set_visibility(True)
        self.check()

    def close(self) -> None:
        """Close the form; nothing is saved."""
        self.editing = None
        self.form.set_visibility(False)

    def _mark(self, exc: RouteError | None) -> bool:
        """Show ``exc`` next to its field (None: clear every mark); return whether it is clean."""
        key = field_of_error(exc) if exc is not None else None
        for k, inp in self.inputs.items():
            wanted = exc is not None and k == key
            if bool(inp.props.get("error")) != wanted:
                inp.props["error"] = wanted
            message = str(exc.message if isinstance(exc, RouteError) else "") if wanted else ""
            if inp.props.get("error-message", "") != message:
                inp.props["error-message"] = message
        set_text(self.form_error, "" if exc is None else str(exc))
        return exc is None

    def check(self) -> bool:
        """Compile the form's route (nothing applied); mark the field of an error."""
        spec = route_spec(self.values(), self.enabled.value)
        try:
            self.view.gateway.try_route(spec, "_check._check", None)
        except RouteError as exc:
            return self._mark(exc)
        return self._mark(None)

    def test(self) -> None:
        """Run the form's route on the sample; show what would happen."""
        from edgelink.ui.points import parse_value

        spec = route_spec(self.values(), self.enabled.value)
        address = str(self.sample_address.value or "").strip()
        if not address:
            set_text(self.result, "type a sample address, e.g. plc_1.temperature")
            return
        try:
            value = parse_value(str(self.sample_value.value or ""))
        except ValueError as exc:
            set_text(self.result, str(exc))
            return
        try:
            out = self.view.gateway.try_route(spec, address, value)
        except RouteError as exc:
            self._mark(exc)
            set_text(self.result, "fix the route first")
            return
        set_text(self.result, describe_trial(out))

    def _table_with(self, spec: dict[str, Any], replace: str | None) -> dict[str, Any]:
        """The table with ``spec`` in place of route ``replace`` (None: added at the end)."""
        specs = self.specs()
        if replace is None:
            return {"routes": [*specs, spec]}
        return {"routes": [spec if s["id"] == replace else s for s in specs]}

    async def save(self) -> None:
        """Write the table with the form's route through the gateway (audited); errors show."""
        if not self.check():
            return
        spec = route_spec(self.values(), self.enabled.value)
        if await self._replace(self._table_with(spec, self.editing)):
            ui.notify(f"route {spec['id']} saved", type="positive")
            self.close()

    async def toggle(self, route_id: str) -> None:
        """Enable or disable a route: its ``enabled`` saved like an edit."""
        spec = next((s for s in self.specs() if s["id"] == route_id), None)
        if spec is None:
            return
        spec = dict(spec)
        if spec.get("enabled", True):
            spec["enabled"] = False
        else:
            spec.pop("enabled", None)
        if await self._replace(self._table_with(spec, route_id)):
            ui.notify(f"route {route_id} {'enabled' if spec.get('enabled', True) else 'disabled'}")

    async def _replace(self, document: dict[str, Any]) -> bool:
        try:
            await self.view.gateway.replace_routes(document, who=self.view.who)
        except RouteError as exc:
            self._mark(exc)
            ui.notify(f"not saved: {exc}", type="negative")
            return False
        except EdgelinkError as exc:
            ui.notify(f"not saved: {exc}", type="negative")
            return False
        self._table_at = 0.0
        self.refresh()
        return True


def describe_trial(out: dict[str, Any]) -> str:
    """Say in one line what a tried route did with the sample."""
    if not out["matches"]:
        return "'from' does not match this address: the route would not see it"
    if out["error"]:
        return f"the route fails on this value: {out['error']}"
    if out["condition"] is False:
        return "condition false: filtered, nothing sent"
    if out["dropped"]:
        return "held back by a transform step (deadband, throttle, window): nothing sent"
    cond = "condition true; " if out["condition"] else ""
    value = json.dumps(out["value"], default=str)
    return f"{cond}would send {value} to {', '.join(out['targets'])}"


@page("/routes", "Routes", icon="alt_route")
def routes(view: View) -> None:
    """The routes page."""
    RoutesPage(view)
