"""Resource figures per instance and for the whole process (``GET /api/admin/instances``).

Each instance gets the seed's dict: ``cpu_percent``, ``memory_mb``,
``memory_percent``, ``disk_io_read_mb``, ``disk_io_write_mb``,
``network_packets_sent``, ``network_packets_recv``, ``uptime_seconds``,
``error_count``, ``last_error``. Every connection runs inside the gateway's
one process today (``isolation``: ``in_process``):

- ``cpu_percent`` is the event loop's time in the connection's own task
  steps and callbacks (`edgelink.cpuaccount`), in % of one core over the
  last `CPU_WINDOW_S` or more, and ``cpu_seconds`` its total; both are None
  where the accounting cannot run (another loop than asyncio's, or off);
- memory and disk cannot be attributed to one connection of a shared
  process: those keys are None, and the process totals (psutil) stand
  beside them under ``process``; nothing is estimated;
- packets, errors and uptime come from the connection's own driver counters.

When instances run in processes of their own (a later isolation mode), the
same keys fill in from psutil per process and ``isolation`` says so; the
dict's shape does not change.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = [
    "ATTRIBUTED_BY_PROCESS",
    "CPU_WINDOW_S",
    "CpuRates",
    "ProcessResources",
    "instance_resources",
]

#: Keys of the seed's dict that only a process of its own can give an instance.
ATTRIBUTED_BY_PROCESS = (
    "memory_mb",
    "memory_percent",
    "disk_io_read_mb",
    "disk_io_write_mb",
)

_MB = 1024 * 1024


#: CPU shares are taken over at least this window, s (a shorter one jitters).
CPU_WINDOW_S = 1.0


class CpuRates:
    """CPU % per connection from growing totals, each over at least `CPU_WINDOW_S`.

    Readers may ask at any rate (four UI pages and the API): a share is
    recomputed only once its window is full, else the last one is returned.
    Connections no longer asked about are forgotten (bounded by the fleet).
    """

    def __init__(self, window: float = CPU_WINDOW_S) -> None:
        self.window = window
        #: connection id -> (monotonic s, total ns then, last share %).
        self._last: dict[str, tuple[float, int, float | None]] = {}

    def sample(self, totals: dict[str, int], mono: float) -> dict[str, float | None]:
        """Return the CPU % of each connection in ``totals`` (ns so far), None until a window."""
        last = self._last
        shares: dict[str, float | None] = {}
        for cid, ns in totals.items():
            seen = last.get(cid)
            if seen is None or ns < seen[1]:
                last[cid] = (mono, ns, None)  # new, or a new account (re-added)
                shares[cid] = None
            elif mono - seen[0] >= self.window:
                share = round(100.0 * (ns - seen[1]) / 1e9 / (mono - seen[0]), 2)
                last[cid] = (mono, ns, share)
                shares[cid] = share
            else:
                shares[cid] = seen[2]
        if len(last) > len(totals):
            for cid in [c for c in last if c not in totals]:
                del last[cid]
        return shares


def instance_resources(
    status: dict[str, Any],
    now: float | None = None,
    *,
    cpu_percent: float | None = None,
    cpu_seconds: float | None = None,
) -> dict[str, Any]:
    """Return the seed's resource dict of one in-process connection from its status dict.

    ``uptime_seconds`` is the time since the link last came up (None while it
    is down); ``cpu_percent`` and ``cpu_seconds`` come from the caller's
    accounting (None: not measured).
    """
    now = time.time() if now is None else now
    stats = status.get("stats") or {}
    connected_at = status.get("connected_at")
    uptime = None
    if status.get("status") == "connected" and connected_at is not None:
        uptime = max(0.0, now - float(connected_at))
    return {
        "connection_id": status["connection_id"],
        "isolation": "in_process",
        "cpu_percent": cpu_percent,
        "cpu_seconds": cpu_seconds,
        **dict.fromkeys(ATTRIBUTED_BY_PROCESS),
        "network_packets_sent": stats.get("packets_sent"),
        "network_packets_recv": stats.get("packets_received"),
        "uptime_seconds": uptime,
        "error_count": stats.get("errors"),
        "last_error": status.get("last_error"),
    }


class ProcessResources:
    """The gateway process's own figures (psutil), CPU as a share since the previous call.

    Without psutil (``pip install edgelink[service]`` brings it) every figure is None.
    """

    def __init__(self) -> None:
        self._process: Any = None
        self._last: tuple[float, float] | None = None
        try:
            import psutil
        except ImportError:
            return
        self._process = psutil.Process()

    def sample(self) -> dict[str, Any]:
        """Return the process totals; ``cpu_percent`` is None on the first call (no interval)."""
        figures: dict[str, Any] = {
            "pid": None,
            "cpu_percent": None,
            **dict.fromkeys(ATTRIBUTED_BY_PROCESS),
            "uptime_seconds": None,
        }
        proc = self._process
        if proc is None:
            return figures
        with proc.oneshot():
            cpu = proc.cpu_times()
            used = cpu.user + cpu.system
            wall = time.monotonic()
            if self._last is not None and wall > self._last[0]:
                figures["cpu_percent"] = round(
                    100.0 * (used - self._last[1]) / (wall - self._last[0]), 2
                )
            self._last = (wall, used)
            figures["pid"] = proc.pid
            figures["memory_mb"] = round(proc.memory_info().rss / _MB, 2)
            figures["memory_percent"] = round(proc.memory_percent(), 3)
            io = getattr(proc, "io_counters", None)
            if io is not None:
                try:
                    counters = io()
                except OSError:  # no /proc/<pid>/io (some containers)
                    counters = None
                if counters is not None:
                    figures["disk_io_read_mb"] = round(counters.read_bytes / _MB, 3)
                    figures["disk_io_write_mb"] = round(counters.write_bytes / _MB, 3)
            figures["uptime_seconds"] = round(time.time() - proc.create_time(), 1)
        return figures
