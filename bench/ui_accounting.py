"""The cost of per-connection CPU accounting (`edgelink.cpuaccount`) at 10,000 connections.

``--n`` supervised ``tcp`` connections to simulated PING/PONG devices
(``python -m edgelink.sim tcp`` in ``--procs`` subprocesses, so the devices'
CPU is not in the measured process), each health-checked every
``--health-interval`` s and polling one tag every ``--poll-interval`` s
(every answer routed into the data space). Once all are up, the same
manager runs ``--blocks`` windows of ``--window`` s with the accounting off
and on in the order A B B A A B ... (a drift in machine load hits both
alike); the accounting is switched between windows (`CpuAccounting.install`
/ ``uninstall``: the same connections, the same sockets, the same run).

Per window: the process's CPU (user + system, psutil) per request the
connections sent (health checks and polls), so a window that happened to do
more work does not count as slower. Figure: ``ratio`` = median CPU per request
with the accounting on / median with it off; target under 1.03.

A second figure: the cost per event-loop handle, from a loop that runs
``--handles`` trivial callbacks (1,000 per loop turn, and one per turn) with
the accounting off, on for handles of no connection, and on for handles of a
connection (medians of 5 rounds).

    .venv/bin/python bench/ui_accounting.py --n 10000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import psutil
from _common import (
    LOOPBACK,
    SimProcess,
    busy_ports,
    check,
    cpu_seconds,
    log,
    poll_until,
    r,
    run_benchmark,
)

from edgelink import ConnectionManager, ConnectionState
from edgelink.cpuaccount import CpuAccount, CpuAccounting, account_context


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10000, help="connections (default 10000)")
    p.add_argument("--procs", type=int, default=3, help="simulator subprocesses (default 3)")
    p.add_argument("--base-port", type=int, default=12000, help="first device port")
    p.add_argument("--health-interval", type=float, default=2.0, help="health checks, s")
    p.add_argument("--poll-interval", type=float, default=2.0, help="one tag polled, s")
    p.add_argument("--window", type=float, default=6.0, help="one measured window, s")
    p.add_argument("--blocks", type=int, default=8, help="windows per side (default 8)")
    p.add_argument("--handles", type=int, default=200_000, help="callbacks per micro round")
    p.add_argument("--max-runtime", type=float, default=900.0, help="give up after this, s")
    return p.parse_args(argv)


async def handle_costs(count: int) -> dict[str, Any]:
    """Return ns per trivial loop callback: accounting off, on (nobody's), on (a connection's).

    Two shapes: ``batched`` runs 1,000 callbacks per loop turn (the turn's
    own cost is spread over them: the figure is a handle's), ``chained`` one
    callback per turn, each scheduling the next (the figure is a whole turn's:
    the accounting's per-turn hook is all there is to pay for).
    """
    loop = asyncio.get_running_loop()
    account = CpuAccount("bench")
    accounted = account_context(account)

    async def batched(context: Any) -> float:
        done = loop.create_future()
        left = count

        def tick() -> None:
            nonlocal left
            left -= 1
            if left == 0:
                done.set_result(None)

        start = time.perf_counter_ns()
        for _ in range(count // 1000):
            for _ in range(1000):
                loop.call_soon(tick, context=context)
            await asyncio.sleep(0)
        await done
        return (time.perf_counter_ns() - start) / count

    async def chained(context: Any) -> float:
        done = loop.create_future()
        turns = count // 10
        left = turns

        def tick() -> None:
            nonlocal left
            left -= 1
            if left == 0:
                done.set_result(None)
            else:
                loop.call_soon(tick, context=context)

        start = time.perf_counter_ns()
        loop.call_soon(tick, context=context)
        await done
        return (time.perf_counter_ns() - start) / turns

    result: dict[str, Any] = {}
    # Like against like: a handle given no context copies the current one
    # (call_soon's own cost), a connection's does not.
    contexts = {"nobody": None, "connection": accounted}
    for shape, one_round in (("batched", batched), ("chained", chained)):
        rounds: dict[str, list[float]] = {
            f"{side}_{who}": [] for side in ("off", "on") for who in contexts
        }
        for _ in range(5):
            for who, context in contexts.items():
                rounds[f"off_{who}"].append(await one_round(context))
            CpuAccounting.install()
            try:
                for who, context in contexts.items():
                    rounds[f"on_{who}"].append(await one_round(context))
            finally:
                CpuAccounting.uninstall()
        med = {k: statistics.median(v) for k, v in rounds.items()}
        result[shape] = {
            "ns_per_handle": {k: r(v, 1) for k, v in med.items()},
            "added_ns_nobody": r(med["on_nobody"] - med["off_nobody"], 1),
            "added_ns_connection": r(med["on_connection"] - med["off_connection"], 1),
        }
    result["accounted_s"] = r(account.seconds, 3)
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    me = psutil.Process()
    result: dict[str, Any] = {
        "benchmark": "ui_accounting",
        "params": {
            k: getattr(args, k)
            for k in ("n", "procs", "health_interval", "poll_interval", "window", "blocks")
        },
    }
    if CpuAccounting.installed():
        raise RuntimeError("the accounting is on already")
    result["handle_cost"] = await handle_costs(args.handles)
    log(f"handle cost: {result['handle_cost']}")
    if busy := busy_ports(args.base_port, n):
        raise RuntimeError(f"ports already in use in the device range: {busy[:10]}")
    per = -(-n // args.procs)
    sims = []
    port = args.base_port
    left = n
    while left > 0:
        count = min(per, left)
        sims.append(SimProcess(count, port))
        port += count
        left -= count
    try:
        await asyncio.gather(*(s.start(timeout=120) for s in sims))
        manager = ConnectionManager(
            health_check_interval=args.health_interval, gc_policy="fleet", spam_max_pps=None
        )
        ids = [f"d{i}" for i in range(n)]
        for i, cid in enumerate(ids):
            manager.add_connection(
                cid,
                "tcp",
                {"host": LOOPBACK, "port": args.base_port + i},
                poll=[{"tags": ["temperature"], "interval": args.poll_interval}],
            )
        sups = [manager.get_supervisor(cid) for cid in ids]
        await manager.start()
        up = await poll_until(
            lambda: all(s.state is ConnectionState.CONNECTED for s in sups), 180.0, 0.25
        )
        if not up:
            raise RuntimeError("not every connection came up")
        await poll_until(lambda: manager.runtime_status()["gc"]["freezes"] > 0, 30.0)
        await asyncio.sleep(2 * max(args.health_interval, args.poll_interval))
        log(f"{n} connected; measuring {2 * args.blocks} windows of {args.window} s")

        order = [("off", "on", "on", "off")[i % 4] for i in range(2 * args.blocks)]
        windows: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        accounted_s = 0.0
        for side in order:
            if side == "on":
                CpuAccounting.install()
            try:
                ns0 = sum(s.cpu.ns for s in sups)
                sent0 = sum(s.connection.stats.packets_sent for s in sups)
                cpu0, w0 = cpu_seconds(me), time.perf_counter()
                await asyncio.sleep(args.window)
                cpu, wall = cpu_seconds(me) - cpu0, time.perf_counter() - w0
                sent = sum(s.connection.stats.packets_sent for s in sups) - sent0
                accounted = (sum(s.cpu.ns for s in sups) - ns0) / 1e9
            finally:
                if side == "on":
                    CpuAccounting.uninstall()
            if side == "on":
                accounted_s += accounted
            windows[side].append(
                {
                    "cpu_pct": 100 * cpu / wall,
                    "requests_per_s": sent / wall,
                    "cpu_us_per_request": 1e6 * cpu / sent if sent else float("nan"),
                    "accounted_share": accounted / cpu if cpu else 0.0,
                }
            )
            log(f"{side}: {windows[side][-1]}")
        still = sum(1 for s in sups if s.state is ConnectionState.CONNECTED)
        async with asyncio.timeout(120):
            await manager.stop()
    finally:
        await asyncio.gather(*(s.stop() for s in sims), return_exceptions=True)
        for s in sims:
            s.close()

    def med(side: str, key: str) -> float:
        return statistics.median(w[key] for w in windows[side])

    ratio = med("on", "cpu_us_per_request") / med("off", "cpu_us_per_request")
    result["steady"] = {
        side: {
            "cpu_pct_one_core": r(med(side, "cpu_pct"), 2),
            "requests_per_s": r(med(side, "requests_per_s"), 0),
            "cpu_us_per_request": r(med(side, "cpu_us_per_request"), 2),
            "windows_cpu_us_per_request": [r(w["cpu_us_per_request"], 2) for w in windows[side]],
        }
        for side in ("off", "on")
    }
    result["steady"]["on"]["accounted_share_of_process_cpu"] = r(med("on", "accounted_share"), 3)
    result["steady"]["still_connected"] = still
    result["ratio_on_off"] = r(ratio, 4)
    result["targets"] = {
        "accounting_under_3pct": check(ratio, "<", 1.03),
        "all_stay_connected": check(still, "==", n),
    }
    result["pass"] = all(t["pass"] for t in result["targets"].values())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark("ui_accounting", lambda: run(args), max_runtime=args.max_runtime)


if __name__ == "__main__":
    sys.exit(main())
