"""The battery card: one BMS connection's SOC, cells, temperatures, alarms and MOS states, live.

Reads the connection's datapoints from the data space (the names of
docs/bms.md: ``<id>.soc``, ``.cells.<n>``, ``.temps.<n>``, ``.alarms.<name>``,
``.mos.charge``, ...); `BmsCard.refresh` runs on the page's timer and sends
only what changed. Cells are bars scaled between `CELL_MIN_V` and
`CELL_MAX_V`; the lowest cell is drawn in orange, the highest in blue, and
the spread (max - min) is shown, since a widening spread is what a person
watching a battery wants to see first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nicegui import ui

from edgelink.ui.layout import View, set_text

if TYPE_CHECKING:
    from nicegui.elements.label import Label
    from nicegui.elements.progress import CircularProgress, LinearProgress

__all__ = ["CELL_MAX_V", "CELL_MIN_V", "BmsCard", "bms_reading"]

#: The cell bar's empty and full voltage (a LiFePO4 cell spans 2.5-3.65 V).
CELL_MIN_V = 2.5
CELL_MAX_V = 4.2
#: Cells shown at most (the parsers' limit).
MAX_CELLS = 32


def _index(address: str) -> int:
    tail = address.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def bms_reading(view: View, connection_id: str) -> dict[str, Any]:
    """Return a BMS connection's latest values from the data space, grouped for the card."""
    gateway = view.gateway

    def value(tag: str) -> Any:
        point = gateway.data_point(f"{connection_id}.{tag}")
        return None if point is None or point.quality != "good" else point.value

    def group(branch: str) -> list[tuple[str, Any]]:
        prefix = f"{connection_id}.{branch}"
        out = []
        for address in sorted(gateway.data_children(prefix), key=_index):
            point = gateway.data_point(address)
            if point is not None:
                out.append((address.rsplit(".", 1)[-1], point.value))
        return out

    return {
        "soc": value("soc"),
        "voltage": value("voltage"),
        "current": value("current"),
        "power": value("power"),
        "cells": [float(v) for _, v in group("cells")][:MAX_CELLS],
        "temps": [float(v) for _, v in group("temps")],
        "alarms": sorted(name for name, on in group("alarms") if on),
        "mos_charge": value("mos.charge"),
        "mos_discharge": value("mos.discharge"),
        "cycles": value("cycles"),
        "remaining": value("capacity.remaining"),
    }


def _number(value: Any, unit: str, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):.{digits}f} {unit}"


class BmsCard:
    """The card of one BMS connection; `refresh` updates what changed."""

    def __init__(self, view: View, connection_id: str) -> None:
        self.view = view
        self.connection_id = connection_id
        self.card = ui.card().classes("w-[28rem]").props(f'data-testid="bms-{connection_id}"')
        with self.card:
            with ui.row().classes("w-full items-center no-wrap gap-4"):
                self.soc: CircularProgress = ui.circular_progress(
                    value=0, min=0, max=100, size="72px", show_value=False
                )
                with ui.column().classes("gap-0"):
                    ui.label(connection_id).classes("font-bold")
                    self.soc_text: Label = ui.label("").props('data-testid="soc"')
                    self.pack: Label = ui.label("").classes("text-sm").props('data-testid="pack"')
            self.spread: Label = ui.label("").classes("text-sm").props('data-testid="spread"')
            self.cells_row = ui.row().classes("w-full gap-1 items-end")
            self.cell_bars: list[tuple[LinearProgress, Label]] = []
            self.temps: Label = ui.label("").classes("text-sm").props('data-testid="temps"')
            with ui.row().classes("gap-2 items-center"):
                self.charge = ui.badge("charge").props('data-testid="mos-charge"')
                self.discharge = ui.badge("discharge").props('data-testid="mos-discharge"')
                self.extra: Label = ui.label("").classes("text-sm opacity-70")
            self.alarms: Label = (
                ui.label("").classes("text-negative text-sm").props('data-testid="alarms"')
            )
        view.refreshers.append(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """Show the latest reading (only changed values are sent to the browser)."""
        r = bms_reading(self.view, self.connection_id)
        soc = r["soc"]
        if soc is not None and self.soc.value != round(float(soc)):
            self.soc.set_value(round(float(soc)))
        set_text(self.soc_text, _number(soc, "%", 0) + " SOC")
        set_text(
            self.pack,
            f"{_number(r['voltage'], 'V', 2)} · {_number(r['current'], 'A', 1)} · "
            f"{_number(r['power'], 'W', 0)}",
        )
        self._cells(r["cells"])
        temps = r["temps"]
        set_text(self.temps, "Temperatures: " + (", ".join(f"{t:.1f} °C" for t in temps) or "-"))
        self._badge(self.charge, r["mos_charge"])
        self._badge(self.discharge, r["mos_discharge"])
        set_text(
            self.extra,
            f"cycles {r['cycles'] if r['cycles'] is not None else '-'} · "
            f"{_number(r['remaining'], 'Ah', 1)} left",
        )
        alarms = r["alarms"]
        set_text(self.alarms, ("Alarms: " + ", ".join(alarms)) if alarms else "")

    def _cells(self, cells: list[float]) -> None:
        while len(self.cell_bars) < len(cells):
            with self.cells_row, ui.column().classes("gap-0 items-center"):
                bar = ui.linear_progress(value=0, show_value=False, size="6px").classes("w-8")
                label = ui.label("").classes("text-[10px]")
            self.cell_bars.append((bar, label))
        if not cells:
            set_text(self.spread, "cells: -")
            return
        low, high = min(cells), max(cells)
        set_text(
            self.spread,
            f"{len(cells)} cells · min {low:.3f} V · max {high:.3f} V · "
            f"spread {(high - low) * 1000:.0f} mV",
        )
        for (bar, label), volts in zip(self.cell_bars, cells, strict=False):
            fraction = round(
                min(1.0, max(0.0, (volts - CELL_MIN_V) / (CELL_MAX_V - CELL_MIN_V))), 3
            )
            if bar.value != fraction:
                bar.set_value(fraction)
            colour = "orange" if volts == low else "blue" if volts == high else "positive"
            if bar.props.get("color") != colour:
                bar.props(f"color={colour}")
            set_text(label, f"{volts:.3f}")

    @staticmethod
    def _badge(badge: Any, on: Any) -> None:
        colour = "grey" if on is None else "positive" if on else "negative"
        if badge.props.get("color") != colour:
            badge.props(f"color={colour}")
