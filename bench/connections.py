"""Benchmark 1: N supervised ``tcp`` connections: connect time, steady CPU, RSS per link.

The N simulated devices run in ``--procs`` subprocesses (``python -m
edgelink.sim tcp``), so the simulator's CPU is not in the manager's process.

Figures:

- ``connect_s``: from ``manager.start()`` to the last connection's
  ``connected_at`` (each link opened and its first PING answered).
- ``steady_cpu_pct``: the manager process's CPU (user + system, psutil on its
  own process) over ``--steady`` seconds once every link is up, in % of one core;
  health checks run every ``--health-interval`` seconds per connection.
- ``rss_per_conn_kb``: (RSS with all connected - RSS before adding any) / N.

Targets (at N=10,000): connected in under 10 s, steady CPU under 15 %,
under 20 KB RSS per connection.

    .venv/bin/python bench/connections.py --n 10000 --steady 30
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import random
import sys
import time
from typing import Any

import psutil
from _common import (
    LOOPBACK,
    GcTimer,
    LoopLag,
    SimProcess,
    busy_ports,
    check,
    cpu_seconds,
    log,
    percentile,
    poll_until,
    r,
    raise_nofile,
    run_benchmark,
)

from edgelink import ConnectionManager, ConnectionState


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="connections (default 2000; full: 10000)")
    p.add_argument("--steady", type=float, default=10.0, help="steady-state window, s (full: 30)")
    p.add_argument("--procs", type=int, default=3, help="simulator subprocesses (default 3)")
    p.add_argument("--base-port", type=int, default=10000, help="first device port (default 10000)")
    p.add_argument("--health-interval", type=float, default=5.0, help="health check interval, s")
    p.add_argument("--settle", type=float, default=2.0, help="wait after all connected, s")
    p.add_argument(
        "--connect-limit", type=float, default=120.0, help="give up connecting after this, s"
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also measure plain asyncio clients (streams, same checks) on the same devices",
    )
    p.add_argument(
        "--profile",
        choices=("none", "connect", "steady"),
        default="none",
        help="cProfile one phase; the top functions go to stderr (inflates CPU figures)",
    )
    p.add_argument(
        "--gc-policy",
        choices=("off", "fleet"),
        default="off",
        help="the manager's garbage-collection policy (edgelink.gcpolicy)",
    )
    p.add_argument("--max-runtime", type=float, default=900.0, help="hard time limit of the run, s")
    args = p.parse_args(argv)
    if args.n < 1 or args.procs < 1 or args.steady <= 0:
        p.error("--n, --procs and --steady must be positive")
    return args


def _profile_text(prof: cProfile.Profile, limit: int = 30) -> str:
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


async def measure_floor(args: argparse.Namespace, me: psutil.Process) -> dict[str, Any]:
    """Plain asyncio, no edgelink: what the same work costs at the least on this machine.

    One task per device: connect (64 at once, like max_concurrent_connects),
    PING, then every ``--health-interval`` s (random phase) a PING under
    ``asyncio.timeout`` -- the health check without the supervision.
    """
    n = args.n
    interval = args.health_interval
    admission = asyncio.Semaphore(64)
    up = 0
    checks = 0

    async def client(port: int) -> None:
        nonlocal up, checks
        async with admission:
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            writer.write(b"PING\n")
            await reader.readuntil(b"\n")
        up += 1
        try:
            await asyncio.sleep(random.uniform(0, interval))
            while True:
                await asyncio.sleep(interval)
                async with asyncio.timeout(5):
                    writer.write(b"PING\n")
                    await writer.drain()
                    await reader.readuntil(b"\n")
                checks += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(client(args.base_port + i)) for i in range(n)]
    try:
        await poll_until(lambda: up == n, args.connect_limit, 0.25)
        connect_s = time.perf_counter() - t0
        await asyncio.sleep(args.settle + interval)
        checks0 = checks
        cpu0 = cpu_seconds(me)
        w0 = time.perf_counter()
        await asyncio.sleep(args.steady)
        cpu = cpu_seconds(me) - cpu0
        wall = time.perf_counter() - w0
        done = checks - checks0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "connected": up,
        "connect_s_approx": r(connect_s, 2),
        "cpu_pct_one_core": r(100 * cpu / wall, 2),
        "cpu_us_per_check": r(1e6 * cpu / done, 1) if done else None,
        "checks": done,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    me = psutil.Process()
    result: dict[str, Any] = {
        "benchmark": "connections",
        "params": {
            "n": n,
            "steady_s": args.steady,
            "procs": args.procs,
            "health_check_interval": args.health_interval,
            "base_port": args.base_port,
            "gc_policy": args.gc_policy,
        },
    }
    nofile = result["nofile"] = raise_nofile()
    if nofile["soft"] < n + 256:
        raise RuntimeError(f"RLIMIT_NOFILE {nofile} too low for {n} connections (ulimit -Hn)")
    if args.base_port + n - 1 > 65535:
        raise RuntimeError("--base-port + --n exceeds 65535")
    if busy := busy_ports(args.base_port, n):
        raise RuntimeError(f"ports already in use in the device range: {busy[:10]}")

    # Spread the devices over a few simulator processes, consecutive port ranges.
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
        t = time.perf_counter()
        await asyncio.gather(*(s.start(timeout=120) for s in sims))
        log(f"{len(sims)} simulators listening in {time.perf_counter() - t:.1f} s")
        sim_ps = [psutil.Process(s.pid) for s in sims if s.pid is not None]

        gc.collect()
        rss_before = me.memory_info().rss
        tracked_before = len(gc.get_objects())
        manager = ConnectionManager(
            health_check_interval=args.health_interval, gc_policy=args.gc_policy
        )
        t = time.perf_counter()
        ids = [f"d{i}" for i in range(n)]
        for i, cid in enumerate(ids):
            manager.add_connection(cid, "tcp", {"host": LOOPBACK, "port": args.base_port + i})
        add_s = time.perf_counter() - t
        gc.collect()
        rss_added = me.memory_info().rss
        sups = [manager.get_supervisor(cid) for cid in ids]
        connected = ConnectionState.CONNECTED

        def n_connected() -> int:
            return sum(1 for s in sups if s.state is connected)

        prof = cProfile.Profile() if args.profile == "connect" else None
        cpu0 = cpu_seconds(me)
        wall0 = time.time()
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        await manager.start()
        start_call_s = time.perf_counter() - t0
        deadline = t0 + args.connect_limit
        up = 0
        while time.perf_counter() < deadline:
            up = n_connected()
            if up == n:
                break
            await asyncio.sleep(0.25)  # the figure comes from connected_at stamps
        polled_s = time.perf_counter() - t0
        if prof is not None:
            prof.disable()
            log("profile of the connect phase:\n" + _profile_text(prof))
        connect_cpu = cpu_seconds(me) - cpu0
        stamps = sorted(s.connected_at - wall0 for s in sups if s.connected_at is not None)
        connect_s = stamps[-1] if up == n and stamps else None
        log(f"{up}/{n} connected; last at {connect_s} s (poll saw it at {polled_s:.2f} s)")
        result["connect"] = {
            "connected": up,
            "add_connections_s": r(add_s),
            "start_call_s": r(start_call_s),
            "connect_s": r(connect_s),
            "p50_s": r(percentile(stamps, 50)),
            "p90_s": r(percentile(stamps, 90)),
            "p99_s": r(percentile(stamps, 99)),
            "manager_cpu_s": r(connect_cpu),
            "connects_per_s": r(n / connect_s, 1) if connect_s else None,
        }

        gc.collect()
        rss_connected = me.memory_info().rss
        tracked_connected = len(gc.get_objects())

        result["memory"] = {
            "rss_before_mb": r(rss_before / 2**20, 1),
            "rss_after_add_mb": r(rss_added / 2**20, 1),
            "rss_connected_mb": r(rss_connected / 2**20, 1),
            "per_conn_added_kb": r((rss_added - rss_before) / n / 1024, 2),
            "rss_per_conn_kb": r((rss_connected - rss_before) / n / 1024, 2),
            "gc_tracked_per_conn": r((tracked_connected - tracked_before) / n, 1),
        }

        # Steady state: everything up, health checks every interval (and the
        # gc policy's freeze done: it waits for the fleet to settle).
        await asyncio.sleep(args.settle)
        if args.gc_policy != "off":
            await poll_until(lambda: manager.runtime_status()["gc"]["freezes"] > 0, 30.0)
        sent0 = sum(s.connection.stats.packets_sent for s in sups)
        sim_cpu0 = [cpu_seconds(p) for p in sim_ps]
        lag = LoopLag()
        lag.start()
        prof = cProfile.Profile() if args.profile == "steady" else None
        if prof is not None:
            prof.enable()
        cpu0 = cpu_seconds(me)
        w0 = time.perf_counter()
        with GcTimer() as gc_steady:
            await asyncio.sleep(args.steady)
        steady_cpu = cpu_seconds(me) - cpu0
        wall = time.perf_counter() - w0
        if prof is not None:
            prof.disable()
            log("profile of the steady phase:\n" + _profile_text(prof))
        lag_stats = await lag.stop()
        sent = sum(s.connection.stats.packets_sent for s in sups) - sent0
        sim_cpu = sum(cpu_seconds(p) for p in sim_ps) - sum(sim_cpu0)
        still = n_connected()
        steady_pct = 100 * steady_cpu / wall
        result["steady"] = {
            "window_s": r(wall, 2),
            "cpu_pct_one_core": r(steady_pct, 2),
            "cpu_us_per_health_check": r(1e6 * steady_cpu / sent, 1) if sent else None,
            "health_checks": sent,
            "health_checks_expected": int(n * wall / args.health_interval),
            "still_connected": still,
            "loop_lag": lag_stats,
            "loop_lag_manager": manager.loop_lag(),
            "gc": gc_steady.as_dict(),
            "simulators_cpu_pct": r(100 * sim_cpu / wall, 2),
        }

        t = time.perf_counter()
        async with asyncio.timeout(120):
            await manager.stop()
        result["stop_s"] = r(time.perf_counter() - t)
        if args.floor:
            del manager, sups
            gc.collect()
            log("floor: plain asyncio clients on the same devices")
            floor = result["floor_plain_asyncio"] = await measure_floor(args, me)
            steady = result["steady"]
            if floor["cpu_pct_one_core"]:
                steady["cpu_ratio_vs_plain_asyncio"] = r(
                    steady["cpu_pct_one_core"] / floor["cpu_pct_one_core"], 2
                )
    finally:
        await asyncio.gather(*(s.stop() for s in sims), return_exceptions=True)
        for s in sims:
            s.close()

    mem = result["memory"]
    result["targets"] = {
        "connect_under_10s": check(result["connect"]["connect_s"], "<", 10.0),
        "steady_cpu_under_15pct": check(result["steady"]["cpu_pct_one_core"], "<", 15.0),
        "rss_per_conn_under_20kb": check(mem["rss_per_conn_kb"], "<", 20.0),
        "all_stay_connected": check(result["steady"]["still_connected"], "==", n),
    }
    result["pass"] = all(t["pass"] for t in result["targets"].values())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark("connections", lambda: run(args), max_runtime=args.max_runtime)


if __name__ == "__main__":
    sys.exit(main())
