"""``/service``: the gateway itself: version, uptime, config errors, reload, bridge, resources.

What ``GET /api/status``, ``GET /api/bridge`` and the ``process`` part of
``GET /api/admin/instances`` give, refreshed once a second: the version and
uptime, the config folder, the last reload and every config error (file and
reason), the MQTT bridge (live or buffering, depth, dropped, published), and the
whole process's resources in the seed's keys (CPU, memory, disk I/O,
packets). **Reload** re-reads the config folder as ``POST /api/admin/reload``
does (audited with who; what the folder gets wrong shows, and what ran keeps
running).
"""

from __future__ import annotations

import time
from typing import Any, Final

from nicegui import ui

from edgelink import __version__
from edgelink.errors import EdgelinkError
from edgelink.ui.layout import View, page, set_text

__all__ = ["ServicePage", "facts", "format_duration", "service"]

#: Seconds between two refreshes.
EVERY_S: Final = 1.0


def format_duration(seconds: float | None) -> str:
    """Return an uptime as ``3 d 4 h``, ``2 h 5 min``, ``4 min 10 s`` or ``12 s``."""
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {s} s"
    return f"{s} s"


def _figure(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def facts(
    status: dict[str, Any], bridge: dict[str, Any], process: dict[str, Any]
) -> dict[str, dict[str, str]]:
    """Return the page's figures as text, by section (what the page shows; tested alone)."""
    reload = status.get("last_reload") or {}
    reload_at = reload.get("at") if isinstance(reload, dict) else None
    gateway = {
        "version": __version__,
        "uptime": format_duration(status.get("uptime_s")),
        "config folder": str(status.get("config_dir")),
        "last reload": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(reload_at))
        if isinstance(reload_at, int | float)
        else "-",
        "connections": " · ".join(
            f"{n} {state}" for state, n in sorted((status.get("connections") or {}).items())
        )
        or "none",
        "panic": "yes" if status.get("panic") else "no",
    }
    if not bridge.get("enabled"):
        mqtt = {"bridge": "off (no bridge in edgelink.json)"}
    else:
        mqtt = {
            "bridge": "live" if bridge.get("live") else "buffering",
            "depth": _figure(bridge.get("depth")),
            "dropped": _figure(bridge.get("dropped")),
            "published": _figure(bridge.get("published")),
        }
    resources = {
        "CPU": _figure(process.get("cpu_percent"), " %"),
        "memory": _figure(process.get("memory_mb"), " MB")
        + (
            f" ({process['memory_percent']:.1f} %)"
            if process.get("memory_percent") is not None
            else ""
        ),
        "disk read": _figure(process.get("disk_io_read_mb"), " MB", 2),
        "disk written": _figure(process.get("disk_io_write_mb"), " MB", 2),
        "packets sent": _figure(process.get("network_packets_sent")),
        "packets received": _figure(process.get("network_packets_recv")),
        "process uptime": format_duration(process.get("uptime_seconds")),
    }
    return {"Gateway": gateway, "MQTT bridge": mqtt, "Resources": resources}


class ServicePage:
    """The figures and the reload button of one page view."""

    def __init__(self, view: View) -> None:
        self.view = view
        self._at = 0.0
        self.labels: dict[tuple[str, str], Any] = {}
        with ui.row().classes("items-center gap-4"):
            ui.label("Service").classes("text-xl font-bold")
            ui.button("Reload", on_click=self.reload).props("no-caps")
        with ui.row().classes("w-full items-start gap-4"):
            for section, figures in self.read().items():
                with ui.card().classes("min-w-[20rem]"):
                    ui.label(section).classes("font-bold")
                    with ui.grid(columns="auto 1fr").classes("gap-x-6 gap-y-0 text-sm"):
                        for key, text in figures.items():
                            ui.label(key).classes("opacity-60")
                            testid = f"service-{key.replace(' ', '-')}"
                            self.labels[(section, key)] = ui.label(text).props(
                                f'data-testid="{testid}"'
                            )
        with ui.card().classes("w-full"):
            ui.label("Config errors").classes("font-bold")
            self.errors = (
                ui.label("")
                .classes("text-sm whitespace-pre-wrap font-mono")
                .props('data-testid="service-config-errors"')
            )
        self.reload_result = (
            ui.label("").classes("text-sm").props('data-testid="service-reload-result"')
        )
        view.refreshers.append(self.refresh)
        self.refresh()

    def read(self, status: dict[str, Any] | None = None) -> dict[str, dict[str, str]]:
        """The figures now (``status``: `Gateway.status` if read already)."""
        gateway = self.view.gateway
        status = gateway.status() if status is None else status
        return facts(status, gateway.bridge_stats(), gateway.process_resources())

    def refresh(self) -> None:
        """Set the figures that changed, once a second."""
        now = time.monotonic()
        if now - self._at < EVERY_S:
            return
        self._at = now
        status = self.view.gateway.status()
        for section, figures in self.read(status).items():
            for key, text in figures.items():
                label = self.labels.get((section, key))
                if label is not None:
                    set_text(label, text)
        errors = status.get("config_errors") or {}
        set_text(
            self.errors,
            "\n".join(f"{kind}: {error}" for kind, error in sorted(errors.items())) or "none",
        )

    async def reload(self) -> None:
        """Re-read the config folder (audited); say what changed or failed."""
        try:
            report = await self.view.gateway.reload(who=self.view.who)
        except EdgelinkError as exc:
            set_text(self.reload_result, f"reload failed: {exc}")
            ui.notify(f"reload failed: {exc}", type="negative")
            return
        failed = sorted(
            k for k, v in report.items() if isinstance(v, dict) and v.get("ok") is False
        )
        text = (
            f"reloaded; failed: {', '.join(failed)}" if failed else "reloaded: everything applied"
        )
        set_text(self.reload_result, text)
        ui.notify(text, type="warning" if failed else "positive")
        self._at = 0.0
        self.refresh()


@page("/service", "Service", icon="settings")
def service(view: View) -> None:
    """The service page."""
    ServicePage(view)
