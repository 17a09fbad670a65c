"""``/mqtt``: per ``mqtt`` connection, its topics as a tree of levels and its subscription ledger.

Choose a connection; its topics are the data space below its id, one tree
level per topic level (``plant/line1/power`` is three), updated live as
new topics arrive (`DataTree`). Choosing a level lists its topics with live
values (`PointsPanel`); choosing a topic shows its value, its history and a
**Publish** form (`PointDetail`, through `Gateway.write_point`).

The **Subscriptions** card is the connection's subscription ledger
(`Gateway.subscriptions`): each filter with its QoS, its state on the current
link (pending, confirmed, failed, idle), where it came from (``config`` or
``run time``) and why it failed. **Subscribe** adds a filter at run time and
**Unsubscribe** takes one away (`Gateway.add_subscription`,
`Gateway.remove_subscription`, as ``/api/connections/{id}/subscriptions``;
audited with who; a subscribe during panic is refused). A run-time filter
stays in the ledger across reconnects until it is taken away or a config
change rebuilds the connection.
"""

from __future__ import annotations

from typing import Any

from nicegui import ui

from edgelink.ui.layout import View, act, page, set_text
from edgelink.ui.points import DataTree, PointDetail, PointsPanel

__all__ = ["MqttPage", "mqtt"]

#: The QoS choices of the Subscribe form (None: the connection's own).
QOS_CHOICES = {-1: "connection's QoS", 0: "QoS 0", 1: "QoS 1", 2: "QoS 2"}


class LedgerCard:
    """The subscription ledger of one connection, with Subscribe and Unsubscribe."""

    COLUMNS = ("filter", "qos", "state", "origin", "error", "")

    def __init__(self, view: View) -> None:
        self.view = view
        self.connection_id: str | None = None
        self._keys: list[str] | None = None
        self.cells: dict[str, dict[str, Any]] = {}
        with ui.card().classes("w-full") as card:
            ui.label("Subscriptions").classes("font-bold")
            self.grid = ui.grid(columns="auto auto auto auto auto auto").classes(
                "w-full justify-start gap-x-8 gap-y-1 text-sm items-center"
            )
            with ui.row().classes("items-end gap-2"):
                self.filter = ui.input("Topic filter", placeholder="plant/+/power").props("dense")
                self.qos = ui.select(QOS_CHOICES, value=-1).props("dense").classes("min-w-[10rem]")
                ui.button("Subscribe", on_click=self.subscribe).props("no-caps")
            self.message = ui.label("").classes("text-sm text-negative")
        self.card = card

    def show(self, connection_id: str | None) -> None:
        """Show the ledger of ``connection_id``."""
        self.connection_id = connection_id
        self._keys = None
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the rows when filters came or went; set the states that changed."""
        cid = self.connection_id
        if cid is None:
            return
        try:
            ledger = self.view.gateway.subscriptions(cid)
        except (LookupError, ValueError):
            ledger = []
        keys = [entry["key"] for entry in ledger]
        if keys != self._keys:
            self._keys = keys
            self._rebuild(ledger)
        for entry in ledger:
            cells = self.cells[entry["key"]]
            set_text(cells["state"], str(entry.get("state", "")))
            set_text(cells["error"], str(entry.get("error") or ""))

    def _rebuild(self, ledger: list[dict[str, Any]]) -> None:
        self.grid.clear()
        self.cells = {}
        with self.grid:
            for head in self.COLUMNS:
                ui.label(head).classes("opacity-60")
            for entry in ledger:
                key = entry["key"]
                qos = (entry.get("options") or {}).get("qos")
                ui.label(key).classes("font-mono").props(f'data-testid="sub-{key}"')
                ui.label("-" if qos is None else str(qos))
                state = ui.label("").props(f'data-testid="sub-state-{key}"')
                ui.label(str(entry.get("origin", ""))).props(f'data-testid="sub-origin-{key}"')
                error = ui.label("").classes("text-negative")
                ui.button("Unsubscribe", on_click=lambda _e, k=key: self.unsubscribe(k)).props(
                    f'dense flat no-caps size=sm data-testid="unsub-{key}"'
                )
                self.cells[key] = {"state": state, "error": error}

    async def subscribe(self) -> None:
        """Add the typed filter to the ledger (audited with who)."""
        cid = self.connection_id
        topic = (self.filter.value or "").strip()
        if cid is None:
            return
        if not topic:
            set_text(self.message, "type a topic filter")
            return
        qos = None if self.qos.value in (None, -1) else int(self.qos.value)
        view = self.view
        result = await act(
            lambda: view.gateway.add_subscription(cid, topic, qos=qos, who=view.who),
            f"subscribed {topic}",
        )
        if result is None:
            set_text(self.message, f"{topic!r} not subscribed: see the message")
            return
        set_text(self.message, "")
        self.filter.set_value("")
        self.refresh()

    async def unsubscribe(self, topic: str) -> None:
        """Take a filter out of the ledger (audited with who)."""
        cid = self.connection_id
        if cid is None:
            return
        view = self.view
        await act(
            lambda: view.gateway.remove_subscription(cid, topic, who=view.who),
            f"unsubscribed {topic}",
        )
        self.refresh()


class MqttPage:
    """The connection choice, the ledger, the topic tree and the chosen topic of one page view."""

    def __init__(self, view: View) -> None:
        self.view = view
        ids = self.mqtt_ids()
        with ui.row().classes("items-end gap-4"):
            self.choice = (
                ui.select(ids, value=ids[0] if ids else None, label="Connection")
                .props('dense data-testid="mqtt-connection"')
                .classes("min-w-[14rem]")
                .on_value_change(lambda e: self.show(e.value))
            )
            self.none = ui.label("No mqtt connection is configured.").classes("opacity-70")
        self.none.set_visibility(not ids)
        self.ledger = LedgerCard(view)
        with ui.row().classes("w-full no-wrap items-start gap-4"):
            with ui.card().classes("w-1/3 min-w-[18rem]"):
                self.tree_title = ui.label("Topics").classes("font-bold")
                self.tree = DataTree(view, ids[0] if ids else "\0", self.choose)
            with ui.column().classes("grow gap-4"):
                self.points = PointsPanel(view, self.choose_point)
                self.detail = PointDetail(view, write_label="Publish")
        view.refreshers.extend(
            (
                self.refresh_choices,
                self.ledger.refresh,
                self.tree.refresh,
                self.points.refresh,
                self.detail.refresh,
            )
        )
        self.show(ids[0] if ids else None)

    def mqtt_ids(self) -> list[str]:
        """The ids of the ``mqtt`` connections, sorted."""
        return sorted(
            s["connection_id"] for s in self.view.gateway.connections() if s["type"] == "mqtt"
        )

    def refresh_choices(self) -> None:
        """Follow a reload that adds or removes mqtt connections."""
        ids = self.mqtt_ids()
        if ids != list(self.choice.options):
            self.choice.set_options(ids)
            self.none.set_visibility(not ids)
            if self.choice.value not in ids:
                self.choice.set_value(ids[0] if ids else None)

    def show(self, connection_id: str | None) -> None:
        """Show the ledger and the topics of ``connection_id``."""
        self.ledger.show(connection_id)
        self.ledger.card.set_visibility(connection_id is not None)
        set_text(self.tree_title, f"Topics of {connection_id}" if connection_id else "Topics")
        # "\0" is no address: without a connection the tree stays empty.
        self.tree.set_root(connection_id or "\0")
        self.points.show(connection_id)
        self.detail.show(None)

    def choose(self, path: str) -> None:
        """A level of the tree was chosen: its topics, and itself if it holds a value."""
        gateway = self.view.gateway
        if gateway.data_has_children(path):
            branch = path
        else:
            cut = max(path.rfind("."), path.rfind("/"))
            branch = path[:cut] if cut > 0 else path
        self.points.show(branch)
        self.detail.show(path)

    def choose_point(self, address: str) -> None:
        """A topic of the list was chosen: select it in the tree and show it."""
        self.tree.select(address)
        self.detail.show(address)


@page("/mqtt", "MQTT topics", icon="hub")
def mqtt(view: View) -> None:
    """The MQTT topics page."""
    MqttPage(view)
