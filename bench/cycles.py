"""Benchmark 3: connect -> lost -> reconnect cycles: rate and leaks.

``--conns`` ``tcp`` connections to one in-process `PingPongPeer` on loopback.
A cycle is ``manager.mark_tx_drop(id)`` (the link counts as lost: the
supervisor closes it, goes ``reconnecting`` and takes the fast path) and the
wait for the next link to be up (``wait_for_generation``: connected and
its first PING answered). The connections cycle concurrently.

Phase 1 (rate, no tracing): warm-up, then FDs (``/proc/self/fd``), asyncio
tasks and threads; ``--cycles`` timed cycles; settle; the same counts again.
Phase 2 (memory): ``tracemalloc`` started, warm-up, traced size; ``--cycles``
more cycles; settle; traced size again. Tracing slows Python down several
times, which is why the rate comes from phase 1.

Targets: at least 1,000 cycles/s; FDs, tasks and threads back to the
baseline exactly; tracemalloc growth under 1 MiB.

    .venv/bin/python bench/cycles.py --cycles 10000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import linecache
import os
import sys
import threading
import time
import tracemalloc
from typing import Any

import psutil
from _common import (
    LOOPBACK,
    GcTimer,
    check,
    cpu_seconds,
    log,
    poll_until,
    r,
    raise_nofile,
    run_benchmark,
)

from edgelink import ConnectionManager, ConnectionState
from edgelink.testing import PingPongPeer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=3000, help="cycles per phase (full: 10000)")
    p.add_argument("--conns", type=int, default=16, help="connections cycling at once")
    p.add_argument("--warmup", type=int, default=300, help="warm-up cycles before each baseline")
    p.add_argument("--phase-limit", type=float, default=120.0, help="time bound per phase, s")
    p.add_argument("--no-trace", action="store_true", help="skip the tracemalloc phase")
    p.add_argument("--max-runtime", type=float, default=900.0, help="hard time limit of the run, s")
    args = p.parse_args(argv)
    if args.cycles < 1 or args.conns < 1 or args.warmup < 0:
        p.error("--cycles and --conns must be positive")
    return args


def counts() -> dict[str, int]:
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
        "threads": threading.active_count(),
    }


class Driver:
    def __init__(self, manager: ConnectionManager, ids: list[str]) -> None:
        self.manager = manager
        self.ids = ids
        self.sups = [manager.get_supervisor(cid) for cid in ids]

    async def cycles(self, total: int, limit: float) -> dict[str, Any]:
        """Run ``total`` cycles over all connections; bounded by ``limit`` seconds."""
        claimed = 0
        completed = 0
        timeouts = 0
        deadline = time.perf_counter() + limit
        manager = self.manager

        async def worker(cid: str) -> None:
            nonlocal claimed, completed, timeouts
            sup = manager.get_supervisor(cid)
            while claimed < total and time.perf_counter() < deadline:
                claimed += 1
                generation = sup.link_generation
                manager.mark_tx_drop(cid)
                try:
                    async with asyncio.timeout(5):
                        await sup.wait_for_generation(generation + 1)
                except TimeoutError:
                    timeouts += 1
                    continue
                completed += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(cid) for cid in self.ids))
        wall = time.perf_counter() - t0
        return {"completed": completed, "timeouts": timeouts, "wall_s": wall}

    async def settle(self) -> bool:
        connected = ConnectionState.CONNECTED
        ok = await poll_until(lambda: all(s.state is connected for s in self.sups), 10, 0.01)
        for _ in range(3):
            await asyncio.sleep(0.1)
        gc.collect()
        return ok


def _top_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[str]:
    lines = []
    for stat in after.compare_to(before, "lineno")[:8]:
        frame = stat.traceback[0]
        where = frame.filename.split("site-packages/")[-1].split("/src/")[-1]
        where = where.split("/lib/python3.11/")[-1]
        code = linecache.getline(frame.filename, frame.lineno).strip()[:60]
        size = f"{stat.size_diff:+d} B {stat.count_diff:+d} obj"
        lines.append(f"{size} {where}:{frame.lineno} {code}")
    return lines


async def run(args: argparse.Namespace) -> dict[str, Any]:
    me = psutil.Process()
    result: dict[str, Any] = {
        "benchmark": "cycles",
        "params": {"cycles": args.cycles, "conns": args.conns, "warmup": args.warmup},
        "nofile": raise_nofile(),
    }
    async with PingPongPeer(host=LOOPBACK) as peer:
        # The cycles are flaps on purpose: dampening would (rightly) hold the
        # links down after three; this measures the reconnect machinery itself.
        manager = ConnectionManager(flap_dampening=False)
        ids = [f"c{i}" for i in range(args.conns)]
        for cid in ids:
            manager.add_connection(cid, "tcp", {"host": LOOPBACK, "port": peer.port})
        async with manager:
            drv = Driver(manager, ids)
            if not await drv.settle():
                raise RuntimeError("connections did not come up")

            # ---- phase 1: rate and handles
            await drv.cycles(args.warmup, args.phase_limit)
            await drv.settle()
            before = counts()
            cpu0 = cpu_seconds(me)
            with GcTimer() as gct:
                res = await drv.cycles(args.cycles, args.phase_limit)
            cpu = cpu_seconds(me) - cpu0
            settled = await drv.settle()
            after = counts()
            rate = res["completed"] / res["wall_s"]
            log(f"phase 1: {res['completed']} cycles in {res['wall_s']:.2f} s = {rate:.0f}/s")
            result["rate"] = {
                "completed": res["completed"],
                "timeouts": res["timeouts"],
                "wall_s": r(res["wall_s"]),
                "cycles_per_s": r(rate, 1),
                "cpu_pct_one_core": r(100 * cpu / res["wall_s"], 1),
                "cpu_us_per_cycle": r(1e6 * cpu / max(1, res["completed"]), 1),
                "gc": gct.as_dict(),
                "peer_connections_at_end": peer.connections,
            }
            result["handles"] = {"before": before, "after": after, "settled": settled}

            # ---- phase 2: memory growth under tracemalloc
            if not args.no_trace:
                tracemalloc.start()
                try:
                    await drv.cycles(args.warmup, args.phase_limit)
                    await drv.settle()
                    mem0 = tracemalloc.get_traced_memory()[0]
                    snap0 = tracemalloc.take_snapshot()
                    before2 = counts()
                    res2 = await drv.cycles(args.cycles, args.phase_limit)
                    await drv.settle()
                    mem1 = tracemalloc.get_traced_memory()[0]
                    snap1 = tracemalloc.take_snapshot()
                    after2 = counts()
                finally:
                    tracemalloc.stop()
                growth = mem1 - mem0
                log(f"phase 2: {res2['completed']} cycles, traced growth {growth} B")
                result["memory"] = {
                    "completed": res2["completed"],
                    "timeouts": res2["timeouts"],
                    "traced_after_warmup_kb": r(mem0 / 1024, 1),
                    "traced_after_run_kb": r(mem1 / 1024, 1),
                    "growth_bytes": growth,
                    "growth_per_cycle_bytes": r(growth / max(1, res2["completed"]), 1),
                    "top_growth": _top_growth(snap0, snap1),
                    "handles_before": before2,
                    "handles_after": after2,
                }

    t = result["targets"] = {
        "cycles_per_s_at_least_1000": check(result["rate"]["cycles_per_s"], ">=", 1000),
        "no_timeouts": check(result["rate"]["timeouts"], "==", 0),
    }
    for key in ("fds", "tasks", "threads"):
        t[f"{key}_back_to_baseline"] = check(after[key] - before[key], "==", 0)
    if "memory" in result:
        mem = result["memory"]
        t["tracemalloc_growth_under_1MiB"] = check(mem["growth_bytes"], "<", 1 << 20)
        for key in ("fds", "tasks", "threads"):
            t[f"{key}_back_to_baseline_traced"] = check(
                mem["handles_after"][key] - mem["handles_before"][key], "==", 0
            )
    result["pass"] = all(x["pass"] for x in t.values())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark("cycles", lambda: run(args), max_runtime=args.max_runtime)


if __name__ == "__main__":
    sys.exit(main())
