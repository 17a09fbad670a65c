"""Benchmark: a Modbus fleet back from an outage: resume time, connections, herd.

``--devices`` simulated inverters (``python -m edgelink.sim modbus``, split
over ``--procs`` processes, consecutive loopback ports), each polled by one
``modbus_tcp`` connection (``--registers`` input registers every
``--interval`` s). Every device stops listening at once (the simulators'
``--control`` ``down``: every link closes, every port refuses) and listens
again ``--outage`` seconds later (``up``). Three runs in one process, same
scenario:

- ``fleet``: the defaults (fleet recovery on, proportional jitter 0.2);
- ``no_jitter``: ``reconnect_jitter=0`` and ``fleet_recovery=false``: the
  herd baseline (every device retries at the same instant);
- ``fleet_off``: the defaults with ``fleet_recovery=false``: recovery as it
  was before fleet recovery.

Figures per run (``T_j`` = when simulator process j said ``listening:`` again,
all its devices listening):

- ``resume_s``: per device, its first good poll after the outage minus the
  ``T_j`` of its process; median, p90, max;
- ``connections_per_device``: this process's established TCP links per device
  port once all are back (psutil); ``not_one`` counts ports with 0 or 2+;
- ``peak_attempts_wanted_per_100ms``: the most connect attempts *wanted*
  (a supervisor's wait before an attempt ended: its backoff ran out, or a
  wake or probe cut it short) within one 100 ms bin after the first ``T_j``:
  the herd before the manager's admission control and this process's CPU
  shape it (the target uses this one);
- ``peak_connects_started_per_100ms``: the most TCP connects to device ports
  *started* within one 100 ms bin after the first ``T_j`` (the herd as the
  devices see it; the bench wraps the loop's ``create_connection`` to see
  them);
- ``peak_attempts_per_100ms``: the most connect attempts (``reconnect_ok`` +
  ``reconnect_failed``) *finishing* within one 100 ms bin after the first
  ``T_j`` (bounded by how fast this process gets through them).

Targets (fleet run): resume median < 1 s and max < 2 s, exactly one connection
per device, peak of wanted attempts at most 40 % of the no-jitter run's. The
ratios of started and finished attempts are reported too: on a small machine
admission control and the CPU cap the no-jitter herd, so they understate it.

    .venv/bin/python bench/recovery.py --devices 500 --outage 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import sys
import time
from typing import Any

import psutil
from _common import (
    LOOPBACK,
    ReconnectRecorder,
    SimProcess,
    busy_ports,
    check,
    log,
    median,
    peak_per_bin,
    percentile,
    poll_until,
    r,
    raise_nofile,
    run_benchmark,
)

from edgelink import ConnectionManager, ConnectionState

BIN = 0.1
RUNS: dict[str, dict[str, Any]] = {
    "fleet": {},
    "no_jitter": {"reconnect_jitter": 0.0, "fleet_recovery": False},
    "fleet_off": {"fleet_recovery": False},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=500, help="devices (default 500)")
    p.add_argument("--outage", type=float, default=10.0, help="seconds the fleet is away")
    p.add_argument("--procs", type=int, default=0, help="simulator processes (default: 1 per 64)")
    p.add_argument("--registers", type=int, default=10, help="registers polled per device")
    p.add_argument("--interval", type=float, default=1.0, help="poll interval, s")
    p.add_argument("--base-port", type=int, default=23000, help="first device port")
    p.add_argument(
        "--runs", default=",".join(RUNS), help=f"which runs, comma-separated (default {list(RUNS)})"
    )
    p.add_argument("--back-limit", type=float, default=40.0, help="give up waiting after, s")
    p.add_argument("--max-runtime", type=float, default=900.0, help="hard time limit, s")
    args = p.parse_args(argv)
    if args.devices < 1 or args.outage < 0 or args.registers < 1 or args.interval <= 0:
        p.error("--devices, --registers and --interval must be positive, --outage not negative")
    args.procs = args.procs or math.ceil(args.devices / 64)
    args.runs = [name.strip() for name in args.runs.split(",") if name.strip()]
    if unknown := set(args.runs) - set(RUNS):
        p.error(f"unknown runs {sorted(unknown)}; choose from {list(RUNS)}")
    return args


def simulators(args: argparse.Namespace) -> list[tuple[SimProcess, range]]:
    """The simulator processes and the device indexes each serves."""
    per = math.ceil(args.devices / args.procs)
    out = []
    for first in range(0, args.devices, per):
        count = min(per, args.devices - first)
        out.append(
            (
                SimProcess(count, args.base_port + first, kind="modbus", extra=["--control"]),
                range(first, first + count),
            )
        )
    return out


class ConnectStarts:
    """Records when each TCP connect to a device port starts: the herd as the devices see it.

    Bench-only instrumentation: it wraps the running loop's
    ``create_connection`` (what the Modbus driver opens its link with).
    """

    def __init__(self, ports: range) -> None:
        self.ports = ports
        self.times: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        inner = loop.create_connection

        async def create_connection(*args: Any, **kwargs: Any) -> Any:
            port = args[2] if len(args) > 2 else kwargs.get("port")
            if port in self.ports:
                self.times.append(time.time())
            return await inner(*args, **kwargs)

        loop.create_connection = create_connection  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._loop is not None:
            del self._loop.create_connection  # back to the class's method
            self._loop = None


def record_wait_ends(manager: ConnectionManager) -> list[float]:
    """Record when each supervisor's wait before an attempt ends: the attempts wanted.

    That is the herd before admission control (``max_concurrent_connects``)
    and this process's CPU shape it. Bench-only: it wraps the observer hook
    every supervisor calls (`FleetRecovery.on_wait_end`, called whether or not
    the connection is in a recovery group).
    """
    fleet = manager.fleet
    inner = fleet.on_wait_end
    times: list[float] = []

    def on_wait_end(link: Any) -> None:
        times.append(time.time())
        inner(link)

    fleet.on_wait_end = on_wait_end  # type: ignore[method-assign]
    return times


def bins_after(times: list[float], start: float, count: int) -> list[int]:
    """Return how many of ``times`` fall in each of the ``count`` 100 ms bins from ``start``."""
    bins = [0] * count
    for t in times:
        k = int((t - start) // BIN)
        if 0 <= k < count:
            bins[k] += 1
    return bins


def links_per_port(ports: range) -> collections.Counter[int]:
    """Count this process's established TCP links to each of ``ports``."""
    counts: collections.Counter[int] = collections.Counter()
    for c in psutil.Process().net_connections(kind="tcp"):
        if c.raddr and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED:
            counts[c.raddr.port] += 1
    return counts


async def one_run(args: argparse.Namespace, name: str) -> dict[str, Any]:
    n = args.devices
    ids = [f"inv{i:04d}" for i in range(n)]
    ports = range(args.base_port, args.base_port + n)
    sims = simulators(args)
    manager = ConnectionManager(**RUNS[name])
    rec = ReconnectRecorder()
    for t in ReconnectRecorder.TYPES:
        manager.on_event(t, rec)
    tags = [f"ir:{i}" for i in range(args.registers)]
    starts = ConnectStarts(ports)
    wanted = record_wait_ends(manager)
    #: After every link is down: connection id -> wall time of its first good datapoint.
    first_good: dict[str, float] = {}
    armed = False

    def on_data(cid: str, tag: str, value: Any, quality: str, ts: float) -> None:
        if armed and quality == "good" and cid not in first_good:
            first_good[cid] = time.time()

    manager.on_data(on_data)
    for i, cid in enumerate(ids):
        manager.add_connection(
            cid,
            "modbus_tcp",
            {"host": LOOPBACK, "port": args.base_port + i},
            poll=[{"tags": tags, "interval": args.interval}],
        )
    sups = [manager.get_supervisor(cid) for cid in ids]
    connected = ConnectionState.CONNECTED

    def n_up() -> int:
        return sum(1 for s in sups if s.state is connected)

    starts.install()
    try:
        await asyncio.gather(*(sim.start() for sim, _ in sims))
        async with manager:
            if not await poll_until(lambda: n_up() == n, 60):
                raise RuntimeError(f"{name}: only {n_up()}/{n} connected before the outage")
            await asyncio.sleep(2.0)
            t_kill = time.time()
            await asyncio.gather(*(sim.command("down", "down:") for sim, _ in sims))
            log(f"{name}: {n} devices stopped listening; away for {args.outage} s")
            down_ok = await poll_until(lambda: n_up() == 0, 10)
            # Only now: a poll answered just before the outage is not a resumption.
            armed = True
            await asyncio.sleep(max(0.0, t_kill + args.outage - time.time()))
            back = await asyncio.gather(*(sim.command("up", "listening:") for sim, _ in sims))
            listen = {i: at for (_, devices), at in zip(sims, back, strict=True) for i in devices}
            t_listen = min(listen.values())
            log(
                f"{name}: devices listen again {t_listen - t_kill:.2f}-"
                f"{max(listen.values()) - t_kill:.2f} s after they stopped"
            )
            await poll_until(lambda: len(first_good) == n, args.back_limit)
            await asyncio.sleep(1.0)
            await manager.events.drain(timeout=10)
            links = links_per_port(ports)
            up_end = n_up()
            fleet = manager.fleet.snapshot()
    finally:
        starts.uninstall()
        await asyncio.gather(*(sim.stop() for sim, _ in sims))
        for sim, _ in sims:
            sim.close()
    resume = [first_good[cid] - listen[i] for i, cid in enumerate(ids) if cid in first_good]
    per_device = [links.get(port, 0) for port in ports]
    return {
        "run": name,
        "settings": RUNS[name],
        "resume_s": {
            "median": r(median(resume)),
            "p90": r(percentile(resume, 90)),
            "max": r(max(resume) if resume else None),
            "min": r(min(resume) if resume else None),
        },
        "resumed": len(resume),
        "missing": n - len(resume),
        "connections_per_device": {
            "max": max(per_device),
            "not_one": sum(1 for c in per_device if c != 1),
        },
        "peak_attempts_wanted_per_100ms": peak_per_bin(wanted, t_listen, BIN),
        "attempts_wanted_per_100ms": bins_after(wanted, t_listen, 30),
        "peak_connects_started_per_100ms": peak_per_bin(starts.times, t_listen, BIN),
        "peak_attempts_per_100ms": peak_per_bin(rec.attempts_after(t_listen), t_listen, BIN),
        "connects_started_after_listen": sum(1 for t in starts.times if t >= t_listen),
        "attempts_after_listen": len(rec.attempts_after(t_listen)),
        "attempts_total": len(rec.attempts_after(t_kill)),
        "fleet_wakes": fleet["wakes"],
        "fleet_woken": fleet["woken"],
        "fleet_probes": fleet["probes"],
        "all_lost_seen": down_ok,
        "connected_at_end": up_end,
        "outage_s": r(t_listen - t_kill),
        "listen_spread_s": r(max(listen.values()) - t_listen),
    }


def ratio_of(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    """``a[key] / b[key]`` rounded, None when ``b[key]`` is 0."""
    return r(a[key] / b[key]) if b[key] else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    if nofile["soft"] < 3 * args.devices + 256:
        raise RuntimeError(f"RLIMIT_NOFILE {nofile} too low")
    if busy := busy_ports(args.base_port, args.devices):
        raise RuntimeError(f"ports already in use in the device range: {busy[:10]}")
    runs = {name: await one_run(args, name) for name in args.runs}
    result: dict[str, Any] = {
        "benchmark": "recovery",
        "params": {
            "devices": args.devices,
            "outage_s": args.outage,
            "procs": args.procs,
            "registers": args.registers,
            "interval_s": args.interval,
            "base_port": args.base_port,
        },
        "runs": runs,
    }
    targets: dict[str, Any] = {}
    fleet = runs.get("fleet")
    if fleet is not None:
        targets["resume_median_under_1s"] = check(fleet["resume_s"]["median"], "<", 1.0)
        targets["resume_max_under_2s"] = check(fleet["resume_s"]["max"], "<", 2.0)
        targets["one_connection_per_device"] = check(
            fleet["connections_per_device"]["not_one"], "==", 0
        )
        targets["all_resumed"] = check(fleet["missing"], "==", 0)
        base = runs.get("no_jitter")
        if base is not None:
            ratios = {
                kind: ratio_of(fleet, base, f"peak_{kind}_per_100ms")
                for kind in ("attempts_wanted", "connects_started", "attempts")
            }
            result["peak_ratio_fleet_vs_no_jitter"] = {
                "wanted": ratios["attempts_wanted"],
                "started": ratios["connects_started"],
                "finished": ratios["attempts"],
            }
            targets["peak_ratio_at_most_0.40"] = check(ratios["attempts_wanted"], "<=", 0.40)
        off = runs.get("fleet_off")
        if off is not None and off["resume_s"]["median"] and fleet["resume_s"]["median"]:
            result["resume_median_ratio_fleet_vs_off"] = r(
                fleet["resume_s"]["median"] / off["resume_s"]["median"]
            )
            result["peak_wanted_ratio_fleet_vs_off"] = ratio_of(
                fleet, off, "peak_attempts_wanted_per_100ms"
            )
    result["targets"] = targets
    result["pass"] = all(t["pass"] for t in targets.values())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark("recovery", lambda: run(args), max_runtime=args.max_runtime)


if __name__ == "__main__":
    sys.exit(main())
