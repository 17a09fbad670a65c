"""One module per page of the web UI; `register` imports them, which registers their routes.

Built so far: ``/login`` (`login`), ``/`` instances (`instances`), ``/data``
(`data`), ``/mqtt`` (`mqtt`), ``/symbols`` PLC symbols (`symbols`), ``/ble``
the Bluetooth device browser (`ble`), ``/routes`` (`routes`), ``/logs``
(`logs`), ``/plugins`` (`plugins`) and ``/service`` (`service`). A new
page is a module here with a function decorated by `edgelink.ui.layout.page`,
imported in `register`; the navigation lists pages in that order.
"""

from __future__ import annotations

import importlib

__all__ = ["PAGES", "register"]

#: The page modules, in the navigation's order (each registers itself when imported).
PAGES = (
    "login",
    "instances",
    "data",
    "mqtt",
    "symbols",
    "ble",
    "routes",
    "logs",
    "plugins",
    "service",
)


def register() -> None:
    """Import every page module (idempotent: Python imports each once)."""
    for name in PAGES:
        importlib.import_module(f"{__name__}.{name}")
