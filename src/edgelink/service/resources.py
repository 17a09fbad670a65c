"""Resource figures per instance and for the whole process (``GET /api/admin/instances``).

Each instance gets the seed's dict: ``cpu_percent``, ``memory_mb``,
``memory_percent``, ``disk_io_read_mb``, ``disk_io_write_mb``,
``network_packets_sent``, ``network_packets_recv``, ``uptime_seconds``,
``error_count``, ``last_error``. Every connection runs inside the gateway's
one process today, so what the operating system measures (CPU, memory, disk)
cannot be attributed to one of them: those keys are ``None``, and the process
totals (psutil) stand beside them under ``process``; nothing is estimated.
Packets, errors and uptime come from the connection's own driver counters.
When instances run in processes of their own (a later isolation mode), the
same keys fill in from psutil per process and ``isolation`` says so.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ATTRIBUTED_BY_PROCESS", "ProcessResources", "instance_resources"]

#: Keys of the seed's dict that only a process of its own can give an instance.
ATTRIBUTED_BY_PROCESS = (
    "cpu_percent",
    "memory_mb",
    "memory_percent",
    "disk_io_read_mb",
    "disk_io_write_mb",
)

_MB = 1024 * 1024


def instance_resources(status: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Return the seed's resource dict of one in-process connection from its status dict.

    ``uptime_seconds`` is the time since the link last came up (None while it is down).
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
