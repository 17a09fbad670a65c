"""Modbus benchmark: steady CPU and RSS of edgelink polling a fleet of Modbus TCP devices.

``--devices`` simulated inverters run in one subprocess (``python -m
edgelink.sim modbus``); this process supervises one ``modbus_tcp`` connection
to each, polling one group of ``--registers`` input registers (``ir:0`` ..,
one tag per register, coalesced into one request) every ``--interval``
seconds, with the default health checks (every 30 s).

Figures, over ``--steady`` seconds after ``--warmup`` seconds connected:

- ``steady_cpu_pct``: this process's CPU (user + system) in % of one core;
- ``rss_mb``: its RSS at the end, and ``rss_per_device_kb`` over the RSS
  before the manager was built;
- ``datapoints_per_s`` and ``requests_per_s`` (what the simulators saw), so
  the CPU can be read per request; event-loop lag; the simulator's own CPU.

    .venv/bin/python bench/modbus_fleet.py --devices 100 --registers 20 --interval 1
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any

import psutil
from _common import (
    LOOPBACK,
    LoopLag,
    SimProcess,
    cpu_seconds,
    log,
    poll_until,
    r,
    run_benchmark,
)

from edgelink import ConnectionManager, ConnectionState
from edgelink.drivers import modbus as _modbus_driver  # imported before the RSS baseline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=100, help="simulated devices (default 100)")
    p.add_argument("--registers", type=int, default=20, help="registers polled per device")
    p.add_argument("--interval", type=float, default=1.0, help="poll interval, s (default 1)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    p.add_argument("--steady", type=float, default=30.0, help="seconds measured (default 30)")
    p.add_argument("--max-runtime", type=float, default=600.0, help="hard time limit, s")
    args = p.parse_args(argv)
    if not 1 <= args.registers <= 100:
        p.error("--registers must be 1..100 (the simulator has 100 input registers)")
    if args.devices < 1 or args.interval <= 0:
        p.error("need --devices >= 1 and --interval > 0")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    me = psutil.Process()
    sim = SimProcess(args.devices, 0, kind="modbus")
    try:
        await sim.start()
        assert sim.pid is not None
        sim_ps = psutil.Process(sim.pid)
        # The simulator's ports come from the kernel, one per device; ask it.
        ports = sorted(
            c.laddr.port
            for c in sim_ps.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        )
        if len(ports) != args.devices:
            raise RuntimeError(f"simulator listens on {len(ports)} ports, not {args.devices}")
        tags = [f"ir:{i}" for i in range(args.registers)]
        assert _modbus_driver.ModbusTcpConnection.type_name == "modbus_tcp"
        rss_before = me.memory_info().rss
        manager = ConnectionManager(reconnect_max_attempts=None)
        points = 0
        bad = 0

        def on_data(cid: str, tag: str, value: Any, quality: str, ts: float) -> None:
            nonlocal points, bad
            points += 1
            if quality != "good":
                bad += 1

        manager.on_data(on_data)
        for i, port in enumerate(ports):
            manager.add_connection(
                f"inv{i:04d}",
                "modbus_tcp",
                {"host": LOOPBACK, "port": port},
                poll=[{"tags": tags, "interval": args.interval}],
            )
        async with manager:

            def n_connected() -> int:
                return sum(
                    1
                    for s in manager.get_status().values()
                    if s["status"] == ConnectionState.CONNECTED
                )

            t0 = time.monotonic()
            if not await poll_until(lambda: n_connected() == args.devices, 60):
                raise RuntimeError(f"only {n_connected()} of {args.devices} connected")
            connect_s = time.monotonic() - t0
            log(f"{args.devices} connected in {connect_s:.2f} s; warming up {args.warmup:g} s")
            await asyncio.sleep(args.warmup)
            lag = LoopLag()
            lag.start()
            cpu0, sim_cpu0 = cpu_seconds(me), cpu_seconds(sim_ps)
            points0, bad0 = points, bad
            packets0 = sum(s["stats"]["packets_sent"] for s in manager.get_status().values())
            wall0 = time.monotonic()
            await asyncio.sleep(args.steady)
            wall = time.monotonic() - wall0
            cpu = cpu_seconds(me) - cpu0
            sim_cpu = cpu_seconds(sim_ps) - sim_cpu0
            packets = (
                sum(s["stats"]["packets_sent"] for s in manager.get_status().values()) - packets0
            )
            lag_figures = await lag.stop()
            rss = me.memory_info().rss
            connected_at_end = n_connected()
            reconnects = sum(s["stats"]["reconnects"] for s in manager.get_status().values())
        steady_points = points - points0
        steady_bad = bad - bad0
    finally:
        await sim.stop()
        sim.close()

    expected_points = args.devices * args.registers * wall / args.interval
    return {
        "benchmark": "modbus_fleet",
        "params": {
            "devices": args.devices,
            "registers": args.registers,
            "interval": args.interval,
            "warmup_s": args.warmup,
            "steady_s": args.steady,
            "peer": "edgelink.sim modbus (one subprocess, pymodbus servers)",
        },
        "connect_s": r(connect_s, 2),
        "steady_cpu_pct": r(100 * cpu / wall, 2),
        "cpu_us_per_request": r(1e6 * cpu / packets, 1) if packets else None,
        "rss_mb": r(rss / 2**20, 1),
        "rss_per_device_kb": r((rss - rss_before) / args.devices / 1024, 1),
        "datapoints_per_s": r(steady_points / wall, 1),
        "datapoints_expected_per_s": r(expected_points / wall, 1),
        "bad_datapoints": steady_bad,
        "requests_per_s": r(packets / wall, 1),
        "connected_at_end": connected_at_end,
        "reconnects": reconnects,
        "loop_lag": lag_figures,
        "simulator_cpu_pct": r(100 * sim_cpu / wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    return run_benchmark("modbus_fleet", lambda: run(args), max_runtime=args.max_runtime)


if __name__ == "__main__":
    sys.exit(main())
