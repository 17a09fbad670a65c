"""The ``ads`` driver: Beckhoff TwinCAT PLCs over ADS (pyads), symbols read and written by name.

Config keys (see docs/drivers/ads.md; the model `edgelink.drivers.configs.AdsConfig`):

- ``ams_net_id`` (required): the PLC's AMS net id, six numbers ``a.b.c.d.e.f``
- ``ams_port`` (851, the first TwinCAT 3 PLC runtime; 801 on TwinCAT 2)
- ``host``: the PLC's IP address; the first four numbers of ``ams_net_id`` by default
- ``port`` (48898): the AMS/TCP port; pyads's adslib on Linux dials no other
- ``local_ams_net_id``: this gateway's AMS net id (the PLC needs a route back
  to it); adslib derives ``<own IP>.1.1`` when no connection sets one
- ``timeout`` (2.0 s): how long one ADS request may take
- ``require_run`` (true): the health check passes only while the PLC is in RUN
- ``notifications``: symbols the PLC pushes (ADS device notifications), each a
  name or ``{"tag": ..., "mode": "change"|"cycle", "cycle_time": s, "max_delay": s}``
- ``notification_timeout`` (10.0 s): how long a (re-)added notification may take
  to deliver its first value before the health turns ``degraded``

pyads is a blocking library, so `AdsConnection` is a `SyncConnection`: the
Supervisor runs every call in a worker thread under its timeouts.

The package's parts: ``_codec`` (symbol types, value coding, the symbol
table; pure), ``_runtime`` (adslib's process-wide routes and TCP links,
`RUNTIME`), ``_io`` (every pyads call and its error translation, the worker
and notification threads), ``_subscriptions`` (the notification ledger) and
``_connection`` (`AdsConnection`: link, health, read and write).
"""

from __future__ import annotations

try:
    import pyads  # noqa: F401 - the extra's check, before the parts import it
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the ads driver needs pyads: pip install 'edgelink[ads]'") from exc

from edgelink.drivers.ads._codec import ADS_STATES, SymbolInfo
from edgelink.drivers.ads._connection import AdsConnection
from edgelink.drivers.ads._io import (
    AUTH_ERRORS,
    GARBAGE_ERRORS,
    LINK_ERRORS,
    PERMANENT_ERRORS,
    STALE_SYMBOL_ERRORS,
)
from edgelink.drivers.ads._runtime import RUNTIME, AdsRuntime

__all__ = [
    "ADS_STATES",
    "AUTH_ERRORS",
    "GARBAGE_ERRORS",
    "LINK_ERRORS",
    "PERMANENT_ERRORS",
    "RUNTIME",
    "STALE_SYMBOL_ERRORS",
    "AdsConnection",
    "AdsRuntime",
    "SymbolInfo",
]
