"""``/``: one card per connection, live, with the admin actions.

A card shows the id, name and type, a badge (`badge_of` maps the real
states to running / stopped / error / starting), the state itself, health,
reason, since, last data age, rx/tx per second, errors and uptime, and the
buttons **Start**, **Stop**, **Restart**, **Kill**, **Disconnect**,
**Reconnect** and **Resume**. They call `Gateway.instance_action`, as the
API does; what the gateway refuses (a start during panic) is shown as its
message. The page's timer refreshes the cards; cards appear and disappear as
a hot reload adds or removes connections. Filter by text and state, sort by
name, state, CPU, RAM or traffic.

Each card also shows the connection's resources (`Gateway.instance_resources`,
as ``GET /api/admin/instances``): a CPU bar (the event loop's time in its own
code, `edgelink.cpuaccount`) and a RAM bar, which for a connection inside the
gateway's process is the process's (labelled so: one connection's memory
cannot be told apart). A card warns when its CPU, its own RAM or its error
count reaches the thresholds of ``ui.warn`` in ``edgelink.json``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from nicegui import ui

from edgelink.service.gateway import INSTANCE_ACTIONS
from edgelink.ui.layout import View, act, page, set_text

if TYPE_CHECKING:
    from nicegui.elements.label import Label

    from edgelink.service.config import UiWarnings

__all__ = ["BADGES", "InstanceCard", "badge_of", "instances", "limits_of", "warnings_of"]

#: Badge -> its colour.
BADGES = {"running": "positive", "starting": "warning", "error": "negative", "stopped": "grey"}
#: Sort keys offered, by label.
SORTS = ("name", "state", "CPU", "RAM", "traffic")
#: The order of the badges when sorting by state: trouble first.
_BADGE_ORDER = {"error": 0, "starting": 1, "stopped": 2, "running": 3}
#: Rates are taken over at least this window, s (a shorter one jitters).
RATE_WINDOW_S = 1.0
#: How often the cards' resource figures are fetched, s.
RESOURCES_EVERY_S = 1.0


def badge_of(status: dict[str, Any]) -> str:
    """Return the card's badge for a status dict: running, stopped, error or starting."""
    state = status["status"]
    if state == "connected":
        return "running"
    if state in ("error", "suspended"):
        return "error"
    if state == "disconnected" and status.get("desired") != "running":
        return "stopped"
    return "starting"


def limits_of(figures: dict[str, Any]) -> str:
    """Return an isolated instance's process, limits and their state as one line ('' in process).

    ``process pid 4711 · priority high (nice -5) · RAM ≤ 256 MB · CPU ≤ 10 % (duty cycle)
    · RAM throttled · restarts 2``: what docs/isolation.md's escalation and limits did.
    """
    if figures.get("isolation") != "process":
        return ""
    parts = [f"process pid {figures['pid']}" if figures.get("pid") else "process (not running)"]
    if figures.get("priority"):
        nice = figures.get("nice")
        parts.append(
            f"priority {figures['priority']}" + (f" (nice {nice})" if nice is not None else "")
        )
    if figures.get("max_memory_mb"):
        parts.append(f"RAM ≤ {figures['max_memory_mb']:g} MB")
    if figures.get("max_cpu_share"):
        mode = figures.get("cpu_limit")
        parts.append(f"CPU ≤ {figures['max_cpu_share'] * 100:g} %" + (f" ({mode})" if mode else ""))
    if figures.get("memory_throttled"):
        parts.append("RAM throttled")
    elif figures.get("throttled"):
        parts.append("paused (CPU share)")
    if figures.get("restarts"):
        parts.append(f"restarts {figures['restarts']}")
    return " · ".join(parts)


def warnings_of(figures: dict[str, Any], warn: UiWarnings) -> list[str]:
    """Return the warnings of one instance's resource dict under the thresholds ``warn``."""
    found = []
    cpu = figures.get("cpu_percent")
    if cpu is not None and cpu >= warn.cpu_percent:
        found.append(f"CPU {cpu:.1f} % ≥ {warn.cpu_percent:g} %")
    ram = figures.get("memory_percent")
    if ram is not None and ram >= warn.memory_percent:
        found.append(f"RAM {ram:.1f} % ≥ {warn.memory_percent:g} %")
    errors = figures.get("error_count")
    if errors is not None and errors >= warn.error_count:
        found.append(f"{errors} errors ≥ {warn.error_count}")
    return found


def _age(since: float | None, now: float) -> str:
    if since is None:
        return "-"
    seconds = max(0.0, now - since)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


class InstanceCard:
    """The card of one connection; `update` sets only what changed."""

    FIELDS = (
        "state",
        "health",
        "reason",
        "since",
        "last data",
        "rx/s",
        "tx/s",
        "errors",
        "uptime",
    )

    def __init__(self, view: View, status: dict[str, Any]) -> None:
        self.connection_id = cid = status["connection_id"]
        self.view = view
        self.badge_name = ""
        self.traffic = 0.0
        self.cpu = 0.0
        self.ram = 0.0
        self._sample: tuple[float, int, int] | None = None
        self._rates = (0.0, 0.0)
        #: What the text filter searches: id, name and type.
        self.search_text = f"{cid} {status.get('name') or ''} {status['type']}".lower()
        with ui.card().classes("w-80").props(f'data-testid="card-{cid}"') as card:
            with ui.row().classes("w-full items-center no-wrap"):
                ui.label(cid).classes("font-bold text-base")
                ui.space()
                self.badge = ui.badge("").props('data-testid="badge"')
            ui.label(f"{status.get('name') or cid} · {status['type']}").classes(
                "text-sm opacity-70"
            )
            self.values: dict[str, Label] = {}
            with ui.grid(columns=2).classes("w-full gap-x-4 gap-y-0 text-sm"):
                for key in self.FIELDS:
                    ui.label(key).classes("opacity-60")
                    self.values[key] = ui.label("").props(f'data-testid="{key.replace(" ", "_")}"')
            with ui.column().classes("w-full gap-0 text-sm"):
                self.cpu_text = ui.label("CPU -").props('data-testid="cpu"')
                self.cpu_bar = ui.linear_progress(0.0, show_value=False, size="6px").props(
                    "instant-feedback"
                )
                self.ram_text = ui.label("RAM -").props('data-testid="ram"')
                self.ram_bar = ui.linear_progress(0.0, show_value=False, size="6px").props(
                    "instant-feedback color=grey"
                )
            self.limits = ui.label("").classes("text-xs opacity-80").props('data-testid="limits"')
            self.limits.set_visibility(False)
            self.warning = ui.label("").classes("text-sm text-orange-800 font-bold")
            self.warning.props('data-testid="warning"')
            self.warning.set_visibility(False)
            with ui.row().classes("gap-1"):
                for action in INSTANCE_ACTIONS:
                    ui.button(
                        action.capitalize(),
                        on_click=lambda _e, a=action: self.act(a),
                    ).props("dense flat no-caps size=sm")
                ui.link("Log", f"/logs?connection={quote(status['connection_id'])}").classes(
                    "text-sm self-center px-2"
                ).props(f'data-testid="log-link-{status["connection_id"]}"')
        self.card = card
        self.update(status, time.time(), time.monotonic())

    def show_resources(self, figures: dict[str, Any], process: dict[str, Any]) -> None:
        """Show the instance's resource dict (``process``: the gateway's own figures)."""
        cpu = figures.get("cpu_percent")
        self.cpu = cpu or 0.0
        set_text(self.cpu_text, "CPU -" if cpu is None else f"CPU {cpu:.1f} %")
        _set_bar(self.cpu_bar, (cpu or 0.0) / 100.0)
        own = figures.get("memory_mb")
        if own is not None:
            self.ram = float(own)
            text = f"RAM {own:.0f} MB ({figures.get('memory_percent') or 0:.1f} %)"
            share = figures.get("memory_percent") or 0.0
        else:
            # In the gateway's process: only the process's memory exists.
            self.ram = 0.0
            mb, share = process.get("memory_mb"), process.get("memory_percent") or 0.0
            text = "RAM - (in the gateway: " + (f"{mb:.0f} MB)" if mb is not None else "-)")
        set_text(self.ram_text, text)
        _set_bar(self.ram_bar, share / 100.0)
        limits = limits_of(figures)
        set_text(self.limits, limits)
        if self.limits.visible != bool(limits):
            self.limits.set_visibility(bool(limits))
        warnings = warnings_of(figures, self.view.gateway.settings.ui.warn)
        set_text(self.warning, " · ".join(f"⚠ {w}" for w in warnings))
        if self.warning.visible != bool(warnings):
            self.warning.set_visibility(bool(warnings))
            self.card.classes(
                add="ring-2 ring-orange-500" if warnings else None,
                remove=None if warnings else "ring-2 ring-orange-500",
            )

    def update(self, status: dict[str, Any], now: float, mono: float) -> None:
        """Show ``status`` (``now`` is the wall clock, ``mono`` the monotonic one)."""
        badge = badge_of(status)
        if badge != self.badge_name:
            self.badge_name = badge
            self.badge.set_text(badge)
            self.badge.props(f"color={BADGES[badge]}")
        stats = status.get("stats") or {}
        rx, tx = int(stats.get("packets_received") or 0), int(stats.get("packets_sent") or 0)
        if self._sample is None:
            self._sample = (mono, rx, tx)
        elif mono - self._sample[0] >= RATE_WINDOW_S:
            span = mono - self._sample[0]
            self._rates = ((rx - self._sample[1]) / span, (tx - self._sample[2]) / span)
            self._sample = (mono, rx, tx)
        self.traffic = self._rates[0] + self._rates[1]
        health = status.get("health") or "-"
        if status.get("health_reason"):
            health += f" ({status['health_reason']})"
        up = status["status"] == "connected" and status.get("connected_at") is not None
        shown = {
            "state": status["status"],
            "health": health,
            "reason": str(status.get("reason") or "-"),
            "since": _age(status.get("since"), now),
            "last data": _age(status.get("last_data_at"), now),
            "rx/s": f"{self._rates[0]:.1f}",
            "tx/s": f"{self._rates[1]:.1f}",
            "errors": str(stats.get("errors", 0)),
            "uptime": _age(status.get("connected_at"), now) if up else "-",
        }
        for key, text in shown.items():
            set_text(self.values[key], text)

    def matches(self, text: str, badge: str) -> bool:
        """Return whether the card passes the filter (text in its id, name or type; badge)."""
        if badge != "all" and badge != self.badge_name:
            return False
        return not text or text.lower() in self.search_text

    async def act(self, action: str) -> None:
        """Do ``action`` to this connection through the gateway (audited with who)."""
        view, cid = self.view, self.connection_id
        result = await act(
            lambda: view.gateway.instance_action(cid, action, who=view.who),
            f"{action} {cid}: done",
        )
        if result is not None:
            self.update(view.gateway.connection(cid), time.time(), time.monotonic())


def _set_bar(bar: Any, value: float) -> None:
    """Set a progress bar (0..1) when it moved by more than half a percent."""
    value = min(1.0, max(0.0, value))
    if abs((bar.value or 0.0) - value) > 0.005:
        bar.set_value(value)


class InstancesPage:
    """The cards, the filter and the sort of one page view."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.cards: dict[str, InstanceCard] = {}
        self.order: list[str] = []
        self._resources_at = -RESOURCES_EVERY_S
        with ui.row().classes("items-end gap-4"):
            self.text = ui.input("Filter", on_change=self.arrange).props("clearable dense")
            self.badge = (
                ui.select(["all", *BADGES], value="all", label="State", on_change=self.arrange)
                .props("dense")
                .classes("min-w-[8rem]")
            )
            self.sort = (
                ui.select(list(SORTS), value="name", label="Sort by", on_change=self.arrange)
                .props("dense")
                .classes("min-w-[8rem]")
            )
            self.summary = ui.label("").classes("text-sm opacity-70")
        self.grid = ui.row().classes("w-full gap-4")
        view.refreshers.append(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """Add, update and remove cards to match the gateway's connections."""
        now, mono = time.time(), time.monotonic()
        gateway = self.view.gateway
        statuses = {s["connection_id"]: s for s in gateway.connections()}
        # The resources change slowly (CPU is a share over >= 1 s): once a second.
        fresh = mono - self._resources_at >= RESOURCES_EVERY_S or len(statuses) != len(self.cards)
        figures: dict[str, dict[str, Any]] = {}
        resources: dict[str, Any] = {"process": {}}
        if fresh:
            self._resources_at = mono
            resources = gateway.instance_resources()
            figures = {f["connection_id"]: f for f in resources["instances"]}
        for cid in [c for c in self.cards if c not in statuses]:
            self.grid.remove(self.cards.pop(cid).card)
        for cid, status in statuses.items():
            card = self.cards.get(cid)
            if card is None:
                with self.grid:
                    self.cards[cid] = InstanceCard(self.view, status)
            else:
                card.update(status, now, mono)
            if cid in figures:
                self.cards[cid].show_resources(figures[cid], resources["process"])
        self.arrange()

    def arrange(self) -> None:
        """Apply the filter and the sort (cards move only when the order changed)."""
        text = (self.text.value or "").strip()
        badge = self.badge.value or "all"
        shown = 0
        for card in self.cards.values():
            visible = card.matches(text, badge)
            shown += visible
            if card.card.visible != visible:
                card.card.set_visibility(visible)
        set_text(self.summary, f"{shown} of {len(self.cards)} connections")
        key = self.sort.value
        if key == "state":
            order = sorted(self.cards, key=lambda c: (_BADGE_ORDER[self.cards[c].badge_name], c))
        elif key == "traffic":
            order = sorted(self.cards, key=lambda c: (-self.cards[c].traffic, c))
        elif key == "CPU":
            order = sorted(self.cards, key=lambda c: (-self.cards[c].cpu, c))
        elif key == "RAM":
            order = sorted(self.cards, key=lambda c: (-self.cards[c].ram, c))
        else:
            order = sorted(self.cards)
        if order != self.order:
            for index, cid in enumerate(order):
                self.cards[cid].card.move(target_index=index)
            self.order = order


@page("/", "Instances", icon="dns")
def instances(view: View) -> None:
    """The instances page."""
    InstancesPage(view)
