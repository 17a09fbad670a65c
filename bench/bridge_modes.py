"""Benchmark: the cost per datapoint of the bridge's payload modes, against the default path.

In one process, no broker: a `MqttBridge` (not started, so nothing is sent)
turns ``--points`` datapoints (``--devices`` devices x 10 registers, one poll
round a device with one timestamp) into messages, and the time per datapoint
is taken for:

- ``datapoint``: the default path (`MqttBridge._message`), the baseline;
- ``group``: one message per device and round (`PayloadModes`, the group closed
  at the end of each round as the loop turn would);
- ``deadband``: ``{"absolute": 1}``, the values moving by 0.1 (all held back but
  the first of each address);
- ``rate``: ``min_interval_s: 1`` on a manual clock, every round within the
  interval (all coalesced but the first).

Ratios are against ``datapoint`` in the same run (best of ``--repeat``).

    .venv/bin/python bench/bridge_modes.py --points 200000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from _common import emit, machine_info, r

from edgelink import ConnectionManager
from edgelink.bridge.modes import PayloadModes
from edgelink.bridge.mqtt import MqttBridge
from edgelink.bridge.settings import BridgeSettings
from edgelink.router.datapoint import DataPoint
from edgelink.store import Database, UplinkBuffer
from edgelink.testing import ManualClock

MODES: dict[str, dict[str, Any]] = {
    "datapoint": {},
    "group": {"mode": "group"},
    "deadband": {"deadband": {"absolute": 1.0}},
    "rate": {"min_interval_s": 1.0},
}


def rounds(devices: int, points: int) -> list[list[DataPoint]]:
    """Poll rounds: per device, 10 registers with one timestamp."""
    out = []
    n = 0
    ts = 1.7e9
    while n < points:
        for d in range(devices):
            source = f"dev{d}"
            out.append(
                [
                    DataPoint(
                        f"{source}.r{i}", 100 + (n // (devices * 10)) * 0.1, ts, "good", source
                    )
                    for i in range(10)
                ]
            )
            n += 10
        ts += 1.0
    return out


async def measure(name: str, data: list[list[DataPoint]], repeat: int) -> float:
    settings = BridgeSettings(connection="broker", **MODES[name])
    manager = ConnectionManager()
    db = Database(":memory:")
    bridge = MqttBridge(manager, manager.router, settings, UplinkBuffer(db), clock=ManualClock())
    sent: list[tuple[str, bytes]] = []

    def out(topic: str, payload: bytes) -> None:
        sent.append((topic, payload))

    best = float("inf")
    for _ in range(repeat):
        sent.clear()
        if name == "datapoint":
            message = bridge._message
            end_turn = None
        else:
            modes = PayloadModes(
                settings,
                "smarthome",
                clock=ManualClock(),
                loop=asyncio.get_running_loop(),
                encoder=bridge._encoder,
                point_message=bridge._message,
                emit=out,
                dead_letter=lambda t, p, why: None,
            )
            message = modes.message
            end_turn = modes.end_turn
        start = time.perf_counter()
        for batch in data:
            for dp in batch:
                m = message(dp)
                if m is not None:
                    out(m[0], m[1])
            if end_turn is not None:
                end_turn()
        best = min(best, time.perf_counter() - start)
    await db.close()
    return best


async def main(args: argparse.Namespace) -> dict[str, Any]:
    data = rounds(args.devices, args.points)
    points = sum(len(b) for b in data)
    us = {name: 1e6 * await measure(name, data, args.repeat) / points for name in MODES}
    return {
        "benchmark": "bridge_modes",
        "points": points,
        "devices": args.devices,
        "us_per_datapoint": {k: r(v, 3) for k, v in us.items()},
        "ratio_vs_datapoint": {k: r(v / us["datapoint"], 2) for k, v in us.items()},
        "machine": machine_info(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    emit(asyncio.run(main(parser.parse_args())))
