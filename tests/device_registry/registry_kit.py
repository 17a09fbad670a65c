"""Helpers of the device registry suite: fast settings, the comm key, a row for a simulator."""

from __future__ import annotations

from typing import Any

from edgelink.testing import ZkSimulator

#: Settings that keep the real-time parts short.
FAST: dict[str, Any] = {
    "connect_timeout": 0.5,
    "health_check_timeout": 0.3,
    "fast_path_timeout": 0.3,
    "request_timeout": 0.5,
    "reconnect_jitter": 0.0,
    "reconnect_initial_delay": 0.05,
}
KEY = 4242


def row(sim: ZkSimulator, name: str = "door", **extra: Any) -> dict[str, Any]:
    """The columns of a device row for a simulator (a 0.3-s answer timeout)."""
    return {
        "name": name,
        "ip_address": "127.0.0.1",
        "port": sim.port,
        "com_password": str(KEY),
        "config": {"timeout": 0.3, "realtime": False},
        **extra,
    }
