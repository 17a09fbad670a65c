"""``/data``: the data space as a tree (source → path → tag), live values, history, writes.

The tree (`DataTree`) lists every source at the top; its levels are the
address's segments and MQTT topic levels. Choosing a branch lists the points
directly below it with their live value, quality and age (`PointsPanel`);
choosing a point shows it with its history ring as a chart and, when it can
be written, a **Write** form whose confirmation dialog sends the value through
`Gateway.write_point` (as ``POST /api/data/write``, audited with who) and
shows the device's answer (`PointDetail`).
"""

from __future__ import annotations

from nicegui import ui

from edgelink.ui.layout import View, page
from edgelink.ui.points import DataTree, PointDetail, PointsPanel

__all__ = ["DataPage", "data"]


class DataPage:
    """The tree, the points of the chosen branch and the chosen point of one page view."""

    def __init__(self, view: View) -> None:
        self.view = view
        with ui.row().classes("w-full no-wrap items-start gap-4"):
            with ui.card().classes("w-1/3 min-w-[18rem]"):
                ui.label("Data space").classes("font-bold")
                self.tree = DataTree(view, "", self.choose)
            with ui.column().classes("grow gap-4"):
                self.points = PointsPanel(view, self.choose_point)
                self.detail = PointDetail(view)
        view.refreshers.extend((self.tree.refresh, self.points.refresh, self.detail.refresh))

    def choose(self, path: str) -> None:
        """A node of the tree was chosen: its points, and itself if it holds a value."""
        gateway = self.view.gateway
        branch = path if gateway.data_has_children(path) else _parent(path)
        self.points.show(branch)
        self.detail.show(path)

    def choose_point(self, address: str) -> None:
        """A point of the list was chosen: select it in the tree and show it."""
        self.tree.select(address)
        self.detail.show(address)


def _parent(path: str) -> str | None:
    cut = max(path.rfind("."), path.rfind("/"))
    return path[:cut] if cut > 0 else None


@page("/data", "Data", icon="account_tree")
def data(view: View) -> None:
    """The data page."""
    DataPage(view)
