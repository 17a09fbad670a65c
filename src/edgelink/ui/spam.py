"""The spam-protection banners of every page: one red row per connection spam protection suspended.

Each says which connection, that spam protection suspended it, the rate that
tripped it over its threshold and the last activity, with **Reactivate**
(`Gateway.instance_action` ``resume``, as ``POST
/api/admin/instances/{id}/resume``), **Logs** (``/logs?connection=<id>``) and
**Adjust threshold**: a dialog that writes the connection's ``spam_max_pps``
through `Gateway.set_connection_setting` (as ``PUT
/api/admin/instances/{id}/settings/spam_max_pps``). A refused value is shown
next to the field and nothing is saved.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from nicegui import ui

from edgelink.errors import ConfigError, EdgelinkError
from edgelink.state import SUSPENDED_BY_SPAM

if TYPE_CHECKING:
    from nicegui.element import Element

    from edgelink.ui.layout import View

__all__ = ["SpamBanners", "spam_text"]

#: The connection setting the dialog writes.
SETTING = "spam_max_pps"


def _pps(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:,.0f}" if value >= 10 else f"{value:g}"


def spam_text(entry: dict[str, Any]) -> tuple[str, str]:
    """Return a suspension's two lines: what happened, and the threshold and last activity."""
    cid = entry["connection_id"]
    name = entry.get("name")
    who = f"{cid} ({name})" if name and name != cid else cid
    head = (
        f"{who} suspended by spam protection ({entry.get('status', SUSPENDED_BY_SPAM)}):"
        f" {_pps(entry['rate_pps'])} datapoints/s"
        f" over the threshold of {_pps(entry['limit_pps'])}"
    )
    threshold = entry.get("threshold_pps")
    parts = []
    if threshold != entry["limit_pps"]:
        parts.append(
            "threshold now off" if threshold is None else f"threshold now {_pps(threshold)}"
        )
    last = entry.get("last_activity")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)) if last else "-"
    parts.append(f"last activity {stamp}")
    return head, " · ".join(parts)


class SpamBanner:
    """The banner of one suspended connection, with its threshold dialog."""

    def __init__(self, view: View, entry: dict[str, Any]) -> None:
        self.view = view
        self.connection_id = cid = entry["connection_id"]
        self.threshold: float | None = entry.get("threshold_pps")
        with (
            ui.row()
            .classes("w-full items-center bg-red-700 text-white px-4 py-2 gap-3")
            .props(f'data-testid="spam-{cid}"') as row
        ):
            ui.icon("warning").classes("text-2xl")
            with ui.column().classes("gap-0"):
                self.head = ui.label("").classes("font-bold")
                self.detail = ui.label("").classes("text-sm")
            ui.space()
            ui.button("Reactivate", on_click=self.reactivate).props(
                "no-caps color=white text-color=red"
            )
            ui.link("Logs", f"/logs?connection={cid}").classes("text-white underline")
            ui.button("Adjust threshold", on_click=self.open_dialog).props(
                "no-caps outline color=white"
            )
        self.row: Element = row
        with ui.dialog() as dialog, ui.card().classes("min-w-[24rem]"):
            ui.label(f"Spam threshold of {cid}").classes("font-bold")
            ui.label(
                "Datapoints per second this connection may report before spam protection"
                " suspends it. Empty: protection off."
            ).classes("text-sm opacity-70")
            self.field = (
                ui.input("spam_max_pps (datapoints/s)")
                .props('data-testid="spam-threshold"')
                .classes("w-full")
            )
            with ui.row():
                ui.button("Cancel", on_click=dialog.close).props("flat no-caps")
                ui.button("Save", on_click=self.save).props("no-caps")
        self.dialog = dialog
        self.update(entry)

    def update(self, entry: dict[str, Any]) -> None:
        """Show ``entry`` (sets only what changed)."""
        from edgelink.ui.layout import set_text

        self.threshold = entry.get("threshold_pps")
        head, detail = spam_text(entry)
        set_text(self.head, head)
        set_text(self.detail, detail)

    def open_dialog(self) -> None:
        """Open the dialog with the current threshold."""
        self.field.value = "" if self.threshold is None else f"{self.threshold:g}"
        self.field.error = None
        self.dialog.value = True

    async def save(self) -> None:
        """Write the threshold; show a refusal next to the field, or close and confirm."""
        text = (self.field.value or "").strip()
        value: Any
        if not text:
            value = None
        else:
            try:
                value = float(text)
            except ValueError:
                value = text  # the gateway's validation says why it is no number
        view, cid = self.view, self.connection_id
        try:
            report = await view.gateway.set_connection_setting(cid, SETTING, value, who=view.who)
        except ConfigError as exc:
            self.field.error = f"{exc.path or SETTING}: {exc.message}"
            return
        except (EdgelinkError, OSError) as exc:
            self.field.error = str(exc)
            return
        self.field.error = None
        self.dialog.value = False
        shown = "off" if report["value"] is None else f"{report['value']:g} datapoints/s"
        ui.notify(f"{cid}: spam threshold {shown} (saved)", type="positive")

    async def reactivate(self) -> None:
        """Resume the connection (re-arms its spam protection), audited with who."""
        from edgelink.ui.layout import act

        view, cid = self.view, self.connection_id
        await act(
            lambda: view.gateway.instance_action(cid, "resume", who=view.who),
            f"{cid} reactivated",
        )


class SpamBanners:
    """Every spam banner of one page; `refresh` adds, updates and removes them."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.area = ui.column().classes("w-full gap-1")
        self.banners: dict[str, SpamBanner] = {}
        self.refresh()

    def refresh(self) -> None:
        """Match the banners to the gateway's spam suspensions."""
        entries = {e["connection_id"]: e for e in self.view.gateway.spam_suspensions()}
        for cid in [c for c in self.banners if c not in entries]:
            banner = self.banners.pop(cid)
            banner.dialog.delete()
            self.area.remove(banner.row)
        for cid, entry in entries.items():
            shown = self.banners.get(cid)
            if shown is None:
                with self.area:
                    self.banners[cid] = SpamBanner(self.view, entry)
            else:
                shown.update(entry)
