"""One module per page of the web UI; `register` imports them, which registers their routes.

Built so far: ``/login`` (`login`), ``/`` instances (`instances`) and
``/ble`` the Bluetooth device browser (`ble`). A new
page is a module here with a function decorated by `edgelink.ui.layout.page`,
imported in `register`; the navigation lists pages in that order.
"""

from __future__ import annotations

__all__ = ["register"]


def register() -> None:
    """Import every page module (idempotent: Python imports each once)."""
    from edgelink.ui.pages import ble, instances, login  # noqa: F401
