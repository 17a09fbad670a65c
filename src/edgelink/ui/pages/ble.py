"""``/ble``: the Bluetooth device browser — devices in range, live, and Connect.

The page keeps the gateway's shared scanner on while it is open (each
refresh asks `edgelink.service.ble.ble_devices` with a short linger, so the
scan stops a few seconds after the last browser closed). One row per
device, strongest first: name, address, an RSSI bar, age of its last
advertisement, and the BMS parsers its advertisement fits (automatic
identification). **Connect** opens a form (connection id, parser, a
Victron's key) and adds a ``bms`` connection over BLE through
`Gateway.add_connection_entry`, the same path as
``POST /api/ble/devices/{address}/connect``: validated, written to
connections.json atomically, audited with who, refused during panic.

Below the browser, a battery card (`edgelink.ui.widgets.bms.BmsCard`) per
``bms`` connection, serial or BLE: SOC, pack figures, cell bars with the
lowest and highest cell marked, temperatures, alarms and MOS states.

Pairing is not offered here: on Linux it needs a BlueZ pairing agent for
the passkey, which the gateway does not run (docs/drivers/ble.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nicegui import ui

from edgelink.errors import ConfigError
from edgelink.service.ble import ConnectBody, ble_devices, connection_entry
from edgelink.ui.layout import View, act, page, set_text
from edgelink.ui.widgets.bms import BmsCard

if TYPE_CHECKING:
    from nicegui.elements.label import Label
    from nicegui.elements.progress import LinearProgress

__all__ = ["battery_cards", "ble", "rssi_fraction"]

#: Seconds between two scans of the list (one request to the shared scanner each).
REFRESH_S = 1.0
#: The scan goes on this long after the page last asked.
LINGER_S = 10.0


def rssi_fraction(rssi: int | None) -> float:
    """Map an RSSI (dBm) to a bar from 0 (-100 dBm or worse) to 1 (-30 dBm or better)."""
    if rssi is None:
        return 0.0
    return round(min(1.0, max(0.0, (rssi + 100) / 70)), 2)


class DeviceRow:
    """One device's row; `update` sets only what changed."""

    def __init__(self, browser: BleBrowser, device: dict[str, Any]) -> None:
        self.address = address = device["address"]
        self.device = device
        card = ui.card().classes("w-full").props(f'data-testid="ble-{address}"')
        with card, ui.row().classes("w-full items-center no-wrap gap-4"):
            self.name: Label = ui.label("").classes("font-bold w-48")
            ui.label(address).classes("font-mono text-sm w-40")
            self.bar: LinearProgress = ui.linear_progress(value=0, show_value=False).classes("w-32")
            self.rssi: Label = ui.label("").classes("w-20 text-sm").props('data-testid="rssi"')
            self.age: Label = ui.label("").classes("w-16 text-sm opacity-70")
            self.parsers: Label = ui.label("").classes("w-24").props('data-testid="identified"')
            ui.space()
            ui.button("Connect", on_click=lambda: browser.open_connect(self.device)).props(
                'dense data-testid="connect"'
            )
        self.card = card
        self.update(device)

    def update(self, device: dict[str, Any]) -> None:
        """Show a fresh reading of the device."""
        self.device = device
        set_text(self.name, device.get("name") or "(no name)")
        rssi = device.get("rssi")
        set_text(self.rssi, f"{rssi} dBm" if rssi is not None else "-")
        fraction = rssi_fraction(rssi)
        if self.bar.value != fraction:
            self.bar.set_value(fraction)
        set_text(self.age, f"{device.get('age', 0):.0f} s")
        set_text(self.parsers, ", ".join(device.get("parsers") or []) or "unknown")


class BleBrowser:
    """The list and the Connect dialog of one page view."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.rows: dict[str, DeviceRow] = {}
        with ui.row().classes("items-center gap-4"):
            ui.label("Bluetooth devices in range").classes("text-lg font-bold")
            self.summary: Label = (
                ui.label("").classes("text-sm opacity-70").props('data-testid="ble-summary"')
            )
        self.error: Label = ui.label("").classes("text-negative").props('data-testid="ble-error"')
        self.list = ui.column().classes("w-full gap-2")
        self._build_dialog()
        ui.timer(REFRESH_S, self.refresh, immediate=True)

    async def refresh(self) -> None:
        """Scan on (a short linger) and update the rows."""
        answer = await ble_devices(linger=LINGER_S)
        set_text(self.error, answer["error"] or "")
        devices = answer["devices"]
        scanner = answer["scanner"]
        set_text(
            self.summary,
            f"{len(devices)} in range · scanner {'on' if scanner['running'] else 'off'} "
            f"({scanner['mode']}) · {scanner['adverts']} advertisements",
        )
        seen = set()
        for device in devices:
            address = device["address"]
            seen.add(address)
            row = self.rows.get(address)
            if row is None:
                with self.list:
                    self.rows[address] = DeviceRow(self, device)
            else:
                row.update(device)
        for address in [a for a in self.rows if a not in seen]:
            self.list.remove(self.rows.pop(address).card)

    def _build_dialog(self) -> None:
        with ui.dialog() as dialog, ui.card().classes("w-96"):
            self.dialog_title: Label = ui.label("").classes("font-bold")
            self.conn_id = ui.input("Connection id", value="bt.bms_001").props(
                'data-testid="conn-id"'
            )
            self.parser = ui.select(
                ["ant", "daly", "jbd", "victron"], label="Parser", value=None
            ).props('data-testid="parser"')
            self.key = ui.input("Encryption key (Victron)", password=True).props(
                'data-testid="key"'
            )
            self.dialog_error: Label = (
                ui.label("").classes("text-negative text-sm").props('data-testid="connect-error"')
            )
            with ui.row():
                ui.button("Add connection", on_click=self._connect).props(
                    'data-testid="add-connection"'
                )
                ui.button("Cancel", on_click=dialog.close).props("flat")
        self.dialog = dialog
        self._target: dict[str, Any] = {}

    def open_connect(self, device: dict[str, Any]) -> None:
        """Open the Connect form for ``device``, the parser preset from its identification."""
        self._target = device
        set_text(self.dialog_title, f"Connect {device.get('name') or device['address']}")
        parsers = device.get("parsers") or []
        self.parser.set_value(parsers[0] if parsers else None)
        self.key.set_value("")
        set_text(self.dialog_error, "")
        self.dialog.value = True

    async def _connect(self) -> None:
        device = self._target
        try:
            body = ConnectBody(
                connection_id=str(self.conn_id.value or ""),
                parser=self.parser.value,
                encryption_key=str(self.key.value) or None,
            )
            entry = connection_entry(device["address"], body, device.get("parsers") or [])
        except (ValueError, ConfigError) as exc:
            set_text(self.dialog_error, str(exc))
            return
        gateway, who = self.view.gateway, self.view.who
        report = await act(
            lambda: gateway.add_connection_entry(body.connection_id, entry, who=who),
            f"added {body.connection_id}",
        )
        if report is None:
            set_text(self.dialog_error, "not added: see the message")
            return
        if not report.get("ok"):
            set_text(self.dialog_error, str(report))
            return
        self.dialog.value = False


def battery_cards(view: View) -> None:
    """A `BmsCard` per ``bms`` connection (serial or BLE), below the browser."""
    ids = [s["connection_id"] for s in view.gateway.connections() if s.get("type") == "bms"]
    if not ids:
        return
    ui.label("Battery monitors").classes("text-lg font-bold")
    with ui.row().classes("w-full gap-4"):
        for cid in ids:
            BmsCard(view, cid)


@page("/ble", "Bluetooth", icon="bluetooth")
def ble(view: View) -> None:
    """The device browser, and a battery card per BMS connection."""
    BleBrowser(view)
    battery_cards(view)
