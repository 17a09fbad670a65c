"""Memory per Modbus device: where the gateway's bytes go, by file, line and object type.

Runs the gateway in this process as ``bench/fleet.py`` builds it (``--devices``
simulated devices, ``--registers`` input registers each, polled every
``--interval`` s, every datapoint bridged to a private mosquitto) with
``tracemalloc`` on from before the gateway is built. After ``--settle`` s
(the history rings fill in ``history`` intervals) it takes a snapshot and
reports, per device: the traced bytes in all, the top files and lines, and the
gc-tracked objects by type (``gc.get_objects()`` counted before and after).
With ``--no-trace`` it reports the RSS growth per device only (tracemalloc
itself costs memory per block).

    .venv/bin/python bench/memory.py --devices 500 --registers 10 --interval 1
    .venv/bin/python bench/memory.py --devices 2000 --no-trace
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
from _common import log, poll_until, r, run_benchmark, start_modbus_sims, stop_sims
from fleet import write_folder

#: Source lines reported (the largest).
TOP = 25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=500, help="simulated devices (500)")
    p.add_argument("--registers", type=int, default=10, help="registers per device (10)")
    p.add_argument("--interval", type=float, default=1.0, help="poll interval, s (1)")
    p.add_argument("--settle", type=float, default=20.0, help="s connected before the snapshot")
    p.add_argument("--no-trace", action="store_true", help="RSS only, no tracemalloc")
    p.add_argument("--no-bridge", action="store_true", help="no broker, no bridge")
    p.add_argument("--sim-per-process", type=int, default=250, help="devices per simulator")
    p.add_argument("--max-runtime", type=float, default=900.0, help="hard time limit, s")
    return p.parse_args(argv)


def _types() -> Counter[str]:
    return Counter(type(o).__name__ for o in gc.get_objects())


def _short(filename: str) -> str:
    for marker in ("/src/edgelink/", "/site-packages/", "/lib/python3"):
        pos = filename.find(marker)
        if pos >= 0:
            return filename[pos + 1 :]
    return filename


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgelink.service.gateway import Gateway
    from edgelink.testing.mosquitto import MosquittoBroker

    proc = psutil.Process()
    n = args.devices
    sims, ports = await start_modbus_sims(n, args.sim_per_process)
    broker = None if args.no_bridge else MosquittoBroker()
    try:
        if broker is not None:
            broker.start()
        spec = {
            "registers": args.registers,
            "interval": args.interval,
            "ports": ports,
            "broker_port": broker.port if broker is not None else 0,
        }
        with tempfile.TemporaryDirectory(prefix="memory-") as tmp:
            folder = Path(tmp)
            write_folder(folder, spec)
            gc.collect()
            types0 = _types()
            rss0 = proc.memory_info().rss
            if not args.no_trace:
                tracemalloc.start(1)
            gateway = Gateway(folder, watch=False)
            await gateway.start()
            try:
                manager = gateway.manager
                connected = await poll_until(
                    lambda: (
                        sum(
                            1
                            for cid, s in manager.get_status().items()
                            if cid != "broker" and s["status"] == "connected"
                        )
                        >= n
                    ),
                    120,
                    0.5,
                )
                log(f"connected={connected}; settling {args.settle} s")
                t_rss = []
                end = time.monotonic() + args.settle
                while time.monotonic() < end:
                    await asyncio.sleep(1.0)
                    t_rss.append(proc.memory_info().rss)
                gc.collect()
                rss1 = proc.memory_info().rss
                snap = None if args.no_trace else tracemalloc.take_snapshot()
                types1 = _types()
                addresses = len(gateway.manager.router.data)
            finally:
                await gateway.stop()
                if not args.no_trace:
                    tracemalloc.stop()
    finally:
        if broker is not None:
            broker.stop()
        await stop_sims(sims)
    result: dict[str, Any] = {
        "benchmark": "memory",
        "params": vars(args),
        "connected": connected,
        "addresses": addresses,
        "rss_mb": r(rss1 / 2**20, 1),
        "rss_growth_per_device_kb": r((rss1 - rss0) / n / 1024, 2),
        "rss_last_10s_mb": r((t_rss[-1] - t_rss[-11]) / 2**20, 2) if len(t_rss) > 10 else None,
    }
    types = {k: v - types0.get(k, 0) for k, v in types1.items()}
    result["gc_objects_per_device"] = {
        k: r(v / n, 2) for k, v in sorted(types.items(), key=lambda kv: -kv[1])[:20]
    }
    if snap is not None:
        snap = snap.filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<*")]
        )
        total = sum(s.size for s in snap.statistics("filename"))
        result["traced_per_device_bytes"] = round(total / n)
        result["by_file_per_device_bytes"] = {
            _short(str(s.traceback[0].filename)): round(s.size / n)
            for s in snap.statistics("filename")[:15]
        }
        result["by_line_per_device"] = [
            {
                "at": f"{_short(str(s.traceback[0].filename))}:{s.traceback[0].lineno}",
                "bytes": round(s.size / n),
                "blocks": r(s.count / n, 2),
            }
            for s in snap.statistics("lineno")[:TOP]
        ]
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    return run_benchmark("memory", lambda: run(args), max_runtime=args.max_runtime)


if __name__ == "__main__":
    sys.exit(main())
