"""``/``: one card per connection, live, with the admin actions.

A card shows the id, name and type, a badge (`badge_of` maps the real
states to running / stopped / error / starting), the state itself, health,
reason, since, last data age, rx/tx per second, errors and uptime, and the
buttons **Start**, **Stop**, **Restart**, **Kill**, **Disconnect**,
**Reconnect** and **Resume**. They call `Gateway.instance_action`, as the
API does; what the gateway refuses (a start during panic) is shown as its
message. The page's timer refreshes the cards; cards appear and disappear as
a hot reload adds or removes connections. Filter by text and state, sort by
name, state or traffic.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from nicegui import ui

from edgelink.service.gateway import INSTANCE_ACTIONS
from edgelink.ui.layout import View, act, page, set_text

if TYPE_CHECKING:
    from nicegui.elements.label import Label

__all__ = ["BADGES", "InstanceCard", "badge_of", "instances"]

#: Badge -> its colour.
BADGES = {"running": "positive", "starting": "warning", "error": "negative", "stopped": "grey"}
#: Sort keys offered, by label.
SORTS = ("name", "state", "traffic")
#: The order of the badges when sorting by state: trouble first.
_BADGE_ORDER = {"error": 0, "starting": 1, "stopped": 2, "running": 3}
#: Rates are taken over at least this window, s (a shorter one jitters).
RATE_WINDOW_S = 1.0


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
            with ui.row().classes("gap-1"):
                for action in INSTANCE_ACTIONS:
                    ui.button(
                        action.capitalize(),
                        on_click=lambda _e, a=action: self.act(a),
                    ).props("dense flat no-caps size=sm")
        self.card = card
        self.update(status, time.time(), time.monotonic())

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


class InstancesPage:
    """The cards, the filter and the sort of one page view."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.cards: dict[str, InstanceCard] = {}
        self.order: list[str] = []
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
        statuses = {s["connection_id"]: s for s in self.view.gateway.connections()}
        for cid in [c for c in self.cards if c not in statuses]:
            self.grid.remove(self.cards.pop(cid).card)
        for cid, status in statuses.items():
            card = self.cards.get(cid)
            if card is None:
                with self.grid:
                    self.cards[cid] = InstanceCard(self.view, status)
            else:
                card.update(status, now, mono)
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
