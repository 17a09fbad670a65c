"""bleak, imported when first needed, and the seam that swaps its platform backends.

bleak picks the platform's backend (BlueZ over D-Bus on Linux) unless a
``backend=`` class is passed to `bleak.BleakScanner` / `bleak.BleakClient`.
`use_backend` sets those classes for every scanner and client edgelink makes:
the test kit (`edgelink.testing.ble`) plugs a simulated radio in there, below
bleak's public classes, so the driver, bleak's own wrappers and
bleak-retry-connector all run as they would against a real adapter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from edgelink.errors import ConfigError

__all__ = ["client_options", "require_bleak", "scanner_options", "use_backend"]

_scanner_backend: type[Any] | None = None
_client_backend: type[Any] | None = None


def require_bleak() -> None:
    """Import bleak and bleak-retry-connector, or say how to install them.

    Raises:
        ConfigError: if either is missing.
    """
    try:
        import bleak  # noqa: F401
        import bleak_retry_connector  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"the ble transport needs bleak and bleak-retry-connector ({exc.name} is missing): "
            "pip install 'edgelink[ble]'"
        ) from exc


@contextlib.contextmanager
def use_backend(scanner: type[Any] | None, client: type[Any] | None) -> Iterator[None]:
    """Make every scanner and client use these bleak backend classes inside the block.

    Args:
        scanner: A `bleak.backends.scanner.BaseBleakScanner` subclass, or None
            for the platform's.
        client: A `bleak.backends.client.BaseBleakClient` subclass, or None.
    """
    global _scanner_backend, _client_backend
    before = (_scanner_backend, _client_backend)
    _scanner_backend, _client_backend = scanner, client
    try:
        yield
    finally:
        _scanner_backend, _client_backend = before


def scanner_options() -> dict[str, Any]:
    """Return the keyword arguments that pick the scanner backend (none: the platform's)."""
    return {} if _scanner_backend is None else {"backend": _scanner_backend}


def client_options() -> dict[str, Any]:
    """Return the keyword arguments that pick the client backend (none: the platform's)."""
    return {} if _client_backend is None else {"backend": _client_backend}
