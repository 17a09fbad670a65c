"""The frame of every page: header, panic dialog, panic and spam banners, navigation, pages.

A page module declares itself with `page`::

    @page("/", "Instances", icon="dns")
    def instances(view: View) -> None:
        ...  # build the content; view.refreshers get called by the page's timer

`page` registers the NiceGUI route, sends a request without a live session
to ``/login``, draws the header (gateway name, counts by state, the
navigation of every registered page, a red **Panic** button, **Log out**),
the red panic banner with **Recover** and a red banner per connection spam
protection suspended (`edgelink.ui.spam`), and runs one `ui.timer` per page
(`TICK_S`) that refreshes the frame and whatever the page registered. Each
refresh sets only values that changed, so an unchanged page sends nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from nicegui import ui

from edgelink.ui.context import UiContext, context_of
from edgelink.ui.spam import SpamBanners

if TYPE_CHECKING:
    from nicegui.elements.label import Label

    from edgelink.service.gateway import Gateway
    from edgelink.ui.auth import Session

__all__ = ["NAV", "PANIC_COUNTDOWN_S", "TICK_S", "NavEntry", "View", "act", "page", "set_text"]

logger = logging.getLogger(__name__)

#: The page timer's period: at most 4 refreshes a second per element.
TICK_S = 0.25
#: Seconds the panic dialog counts down before it triggers panic.
PANIC_COUNTDOWN_S = 5.0
#: What the audit log and the banner say a panic from the UI was for.
PANIC_REASON = "panic button (web UI)"


@dataclass(frozen=True, slots=True)
class NavEntry:
    """One page in the header's navigation."""

    path: str
    label: str
    icon: str


#: Every page registered with `page`, in registration order (the navigation).
NAV: list[NavEntry] = []


@dataclass
class View:
    """One rendered page of one browser tab: its gateway, its session, its refreshers."""

    ctx: UiContext
    session: Session
    #: Called by the page's timer, in order; each sets only what changed.
    refreshers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def gateway(self) -> Gateway:
        """The gateway this page shows."""
        return self.ctx.gateway

    @property
    def who(self) -> str:
        """Who acts from this page, for the audit log (``token:…`` or ``user:…``)."""
        return self.session.identity.who


def set_text(label: Label, text: str) -> None:
    """Set a label's text only when it changed (nothing is sent otherwise)."""
    if label.text != text:
        label.set_text(text)


def page(path: str, label: str, *, icon: str = "article") -> Callable[[Callable[[View], Any]], Any]:
    """Register a page at ``path`` behind the login, with the frame, in the navigation."""

    def register(build: Callable[[View], Any]) -> Callable[[View], Any]:
        NAV.append(NavEntry(path, label, icon))

        @ui.page(path, title=f"{label} · edgelink")
        def render(request: Request) -> Response | None:
            ctx = context_of(request)
            session = ctx.session_of(request)
            if session is None:
                return RedirectResponse("/login", status_code=303)
            ctx.rendered(ui.context.client.id, session)
            view = View(ctx, session)
            frame = Frame(view, path)
            with ui.column().classes("w-full p-4 gap-4"):
                build(view)
            ui.timer(TICK_S, frame.tick)
            return None

        return build

    return register


class Frame:
    """The header, panic dialog and panic banner of one page, and its timer's tick."""

    def __init__(self, view: View, path: str) -> None:
        self.view = view
        self.panic_at: float | None = None
        gateway = view.gateway
        with ui.header().classes("items-center gap-4 bg-slate-800 text-white py-2"):
            ui.label(gateway.name).classes("text-lg font-bold")
            self.counts = ui.label("").classes("text-sm opacity-80")
            with ui.row().classes("gap-3"):
                for entry in NAV:
                    link = ui.link(entry.label, entry.path).classes("text-white")
                    if entry.path == path:
                        link.classes("font-bold underline")
            ui.space()
            ui.label(view.session.identity.name).classes("text-sm opacity-80")
            ui.button("Panic", color="red", on_click=self.ask_panic).props("unelevated no-caps")
            ui.button("Log out", on_click=lambda: ui.navigate.to("/logout")).props(
                "flat no-caps color=white"
            )
        with ui.row().classes("w-full items-center bg-red-700 text-white px-4 py-2") as banner:
            self.banner_text = ui.label("").classes("font-bold")
            ui.space()
            ui.button("Recover", on_click=self.recover).props("no-caps color=white text-color=red")
        self.banner = banner
        banner.set_visibility(False)
        self.spam = SpamBanners(view)
        with ui.dialog().props("persistent") as dialog, ui.card():
            ui.label("Panic: disconnect every device and stop all data flow?").classes("font-bold")
            self.countdown = ui.label("")
            with ui.row():
                ui.button("Cancel", on_click=self.cancel_panic).props("flat no-caps")
                ui.button("Panic now", color="red", on_click=self.panic_now).props("no-caps")
        self.dialog = dialog
        self.refresh()

    def refresh(self) -> None:
        """Update the counts by state, the spam banners and the panic banner."""
        gateway = self.view.gateway
        counts = gateway.state_counts()
        set_text(self.counts, " · ".join(f"{n} {state}" for state, n in sorted(counts.items())))
        self.spam.refresh()
        panic = gateway.panic_state()
        if panic is None:
            if self.banner.visible:
                self.banner.set_visibility(False)
            return
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(panic["at"]))
        set_text(
            self.banner_text,
            f"PANIC since {since} by {panic['by']} ({panic['reason']}): every device is"
            " disconnected until Recover",
        )
        if not self.banner.visible:
            self.banner.set_visibility(True)

    async def tick(self) -> None:
        """The page timer: session check, panic countdown, then every refresher."""
        view = self.view
        if view.ctx.sessions.get(view.session.sid, view.ctx.clock()) is None:
            ui.navigate.to("/login")
            return
        if self.panic_at is not None:
            left = self.panic_at - time.monotonic()
            if left <= 0:
                await self.panic_now()
            else:
                set_text(self.countdown, f"Panic in {math.ceil(left)} s")
        if view.gateway.current_manager is None:
            return  # stopping: nothing to show
        self.refresh()
        for refresh in view.refreshers:
            refresh()

    def ask_panic(self) -> None:
        """Open the dialog and start the countdown."""
        self.panic_at = time.monotonic() + PANIC_COUNTDOWN_S
        set_text(self.countdown, f"Panic in {math.ceil(PANIC_COUNTDOWN_S)} s")
        self.dialog.value = True

    def cancel_panic(self) -> None:
        """Close the dialog; nothing happens."""
        self.panic_at = None
        self.dialog.value = False

    async def panic_now(self) -> None:
        """Trigger panic (audited with who) and close the dialog."""
        self.panic_at = None
        self.dialog.value = False
        await act(
            lambda: self.view.gateway.panic(reason=PANIC_REASON, by=self.view.who),
            "panic: every device is disconnected",
        )
        self.refresh()

    async def recover(self) -> None:
        """Leave panic (audited with who)."""
        await act(lambda: self.view.gateway.recover(by=self.view.who), "recovered")
        self.refresh()


async def act(action: Callable[[], Awaitable[Any]], done: str) -> Any:
    """Run a gateway action; say ``done`` or the error in a notification."""
    from edgelink.errors import EdgelinkError

    try:
        result = await action()
    except (EdgelinkError, LookupError, ValueError) as exc:
        ui.notify(str(exc), type="negative")
        return None
    ui.notify(done, type="positive")
    return result
