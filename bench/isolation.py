"""Isolation benchmark: CPU per datapoint of a process-isolated Modbus connection vs in-process.

One simulated inverter (``python -m edgelink.sim modbus``, its own process,
not counted) and two ``modbus_tcp`` connections to it from one manager, the
same poll group on both (``--registers`` holding registers every
``--interval`` seconds): ``inproc`` runs the driver in this process,
``isolated`` with ``isolation: "process"``. They run one at a time, in
``--blocks`` alternating blocks of ``--seconds`` (inproc, isolated, isolated,
inproc, ...), the other stopped. Per block: CPU seconds of this process plus,
for the isolated one, its child (psutil), divided by the datapoints the
manager delivered. Figures: the per-block CPU per datapoint of each, and the
median over block pairs of (isolated / inproc).

Then a CPU share check: a busy-looping isolated driver limited to
``--share`` of one core, its CPU over ``--share-seconds`` (30 s: the issue's
figure).

Targets: median ratio at most 1.5; the share within ±3 points of a core.

    .venv/bin/python bench/isolation.py
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import sys
import time
from typing import Any

import psutil
from _common import LOOPBACK, SimProcess, check, cpu_seconds, log, r, run_benchmark

from edgelink import ConnectionManager
from edgelink.isolation.parent import ProcessConnection
from edgelink.testing.isolation import BusyConnection

KINDS = ("inproc", "isolated")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--registers", type=int, default=10, help="registers per poll (default 10)")
    p.add_argument("--interval", type=float, default=0.005, help="poll interval, s")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per block")
    p.add_argument("--blocks", type=int, default=6, help="blocks of each kind")
    p.add_argument("--share", type=float, default=0.1, help="CPU share of the busy check")
    p.add_argument("--share-seconds", type=float, default=30.0, help="busy check window, s")
    p.add_argument("--max-runtime", type=float, default=900.0, help="hard time limit, s")
    return p.parse_args(argv)


async def measure_block(
    manager: ConnectionManager, cid: str, counts: dict[str, int], seconds: float
) -> dict[str, float]:
    await manager.start_connection(cid)
    await manager.wait_for_state(cid, "connected", timeout=30)
    await asyncio.sleep(0.5)  # warm: the child's imports and first polls are not the steady state
    conn = manager.get_connection(cid)
    me = psutil.Process()
    child = psutil.Process(conn.pid) if isinstance(conn, ProcessConnection) and conn.pid else None
    gc.collect()
    n0 = counts[cid]
    c0 = cpu_seconds(me)
    k0 = cpu_seconds(child) if child is not None else 0.0
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - t0
    parent_cpu = cpu_seconds(me) - c0
    child_cpu = (cpu_seconds(child) - k0) if child is not None else 0.0
    points = counts[cid] - n0
    await manager.stop_connection(cid)
    return {
        "datapoints": points,
        "rate": points / wall,
        "parent_cpu_s": parent_cpu,
        "child_cpu_s": child_cpu,
        "us_per_dp": 1e6 * (parent_cpu + child_cpu) / max(1, points),
    }


async def busy_share(share: float, seconds: float) -> dict[str, Any]:
    manager = ConnectionManager(connect_timeout=20)
    manager.register_connection_type("busy", BusyConnection)
    manager.add_connection("busy", "busy", isolation={"mode": "process", "max_cpu_share": share})
    async with manager:
        await manager.wait_for_state("busy", "connected", timeout=30)
        conn = manager.get_connection("busy")
        assert isinstance(conn, ProcessConnection)
        assert conn.pid is not None
        proc = psutil.Process(conn.pid)
        await asyncio.sleep(1.0)
        c0, t0 = cpu_seconds(proc), time.monotonic()
        await asyncio.sleep(seconds)
        used = cpu_seconds(proc) - c0
        wall = time.monotonic() - t0
        restarted = conn.pid != proc.pid
        mode = conn.cpu_limit_mode
    return {
        "share_asked": share,
        "share_measured": r(used / wall, 4),
        "seconds": r(wall, 1),
        "mode": mode,
        "restarted": restarted,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sim = SimProcess(1, 0, kind="modbus")
    tags = [f"hr:{i}" for i in range(args.registers)]
    blocks: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    try:
        await sim.start()
        assert sim.first_port is not None
        config = {"host": LOOPBACK, "port": sim.first_port}
        manager = ConnectionManager(spam_max_pps=None, connect_timeout=20)
        counts = dict.fromkeys(KINDS, 0)

        def count(cid: str, tag: str, value: Any, quality: str, ts: float) -> None:
            counts[cid] += 1

        manager.on_data(count)
        poll = [{"tags": tags, "interval": args.interval}]
        manager.add_connection("inproc", "modbus_tcp", config, poll=poll, enabled=False)
        manager.add_connection(
            "isolated", "modbus_tcp", config, poll=poll, enabled=False, isolation="process"
        )
        async with manager:
            for i in range(args.blocks):
                for kind in KINDS if i % 2 == 0 else tuple(reversed(KINDS)):
                    block = await measure_block(manager, kind, counts, args.seconds)
                    us, rate = block["us_per_dp"], block["rate"]
                    log(f"block {i} {kind}: {us:.1f} us/dp, {rate:.0f} dp/s")
                    blocks[kind].append(block)
    finally:
        await sim.stop()
        sim.close()

    ratios = [
        iso["us_per_dp"] / inp["us_per_dp"]
        for inp, iso in zip(blocks["inproc"], blocks["isolated"], strict=True)
    ]
    median_ratio = statistics.median(ratios)
    log(f"median ratio {median_ratio:.3f}; busy check for {args.share_seconds:g} s")
    share = await busy_share(args.share, args.share_seconds)

    def figures(kind: str) -> dict[str, Any]:
        b = blocks[kind]
        return {
            "us_per_dp_median": r(statistics.median(x["us_per_dp"] for x in b), 2),
            "us_per_dp_blocks": [r(x["us_per_dp"], 2) for x in b],
            "dp_per_s_median": r(statistics.median(x["rate"] for x in b), 1),
            "parent_cpu_share_median": r(
                statistics.median(x["parent_cpu_s"] / args.seconds for x in b), 4
            ),
            "child_cpu_share_median": r(
                statistics.median(x["child_cpu_s"] / args.seconds for x in b), 4
            ),
        }

    result: dict[str, Any] = {
        "benchmark": "isolation",
        "params": {
            "registers": args.registers,
            "interval": args.interval,
            "seconds": args.seconds,
            "blocks": args.blocks,
            "peer": "edgelink.sim modbus (subprocess, pymodbus server, not counted)",
        },
        "inproc": figures("inproc"),
        "isolated": figures("isolated"),
        "block_ratios": [r(x) for x in ratios],
        "median_ratio": r(median_ratio, 4),
        "busy_share": share,
        "targets": {
            "median_ratio_at_most_1.5": check(r(median_ratio, 4), "<=", 1.5),
            "share_within_3_points": check(
                r(abs(share["share_measured"] - args.share), 4), "<=", 0.03
            ),
        },
    }
    result["pass"] = all(t["pass"] for t in result["targets"].values())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    return run_benchmark("isolation", lambda: run(args), max_runtime=args.max_runtime)


if __name__ == "__main__":
    sys.exit(main())
