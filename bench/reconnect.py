"""Benchmark 2: a fleet returning from an outage: lateness, time to recover, herd size.

N ``tcp`` connections to one simulator subprocess (``python -m edgelink.sim
tcp``) with the default reconnect policy (0.1 s initial, x2, 10 s cap,
proportional jitter 0.2). The simulator is killed (SIGKILL: every link
closes, every port refuses) and listens again on the same ports ``--outage``
seconds after the kill (the new process is spawned early by the start-up time
the first one took, so the return does not drift with process start-up). The
same scenario then runs with ``reconnect_jitter=0`` as the baseline of the herd
figure (same process, same run).

Figures per run, from the events (``reconnect_start`` carries the delay,
event ``ts`` is wall time; ``T`` = when the new simulator said ``listening:``):

- ``lateness``: per connection, when it was back ``connected`` minus its
  first attempt scheduled after ``T`` (or the attempt that succeeded, if
  that was scheduled earlier); p50/p99/max.
- ``all_back_s``: last connection back minus ``T``.
- ``peak_attempts_per_100ms``: the most connect attempts (``reconnect_ok`` +
  ``reconnect_failed``) finishing within one 100 ms bin after ``T``; also by
  scheduled start.

Targets (jitter run): p99 lateness under 50 ms; all back within
``reconnect_max_delay * 1.2 + 1`` s; its peak at most 40 % of the no-jitter peak.

    .venv/bin/python bench/reconnect.py --n 1000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

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
MAX_DELAY = 10.0  # the default reconnect_max_delay, stated for the target


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300, help="connections (default 300; full: 1000)")
    p.add_argument("--outage", type=float, default=3.0, help="seconds the peer is away")
    p.add_argument("--base-port", type=int, default=21000, help="first device port")
    p.add_argument(
        "--mode",
        choices=("proportional", "full"),
        default="proportional",
        help="reconnect_jitter_mode of the jitter run (default proportional, the default)",
    )
    p.add_argument("--rounds", type=int, default=1, help="jitter/no-jitter pairs (default 1)")
    p.add_argument(
        "--back-limit", type=float, default=40.0, help="give up waiting for recovery after, s"
    )
    p.add_argument("--max-runtime", type=float, default=900.0, help="hard time limit of the run, s")
    args = p.parse_args(argv)
    if args.n < 1 or args.outage < 0 or args.rounds < 1:
        p.error("--n and --rounds must be positive, --outage not negative")
    return args


def analyse(
    events: list[tuple[str, str, float, float | None]],
    ids: list[str],
    t_kill: float,
    t_listen: float,
) -> dict[str, Any]:
    per: dict[str, list[tuple[str, float, float | None]]] = {cid: [] for cid in ids}
    for typ, cid, ts, delay in events:
        if ts >= t_kill and cid in per:
            per[cid].append((typ, ts, delay))
    lateness: list[float] = []
    back: list[float] = []
    missing = 0
    done_times: list[float] = []  # attempt completions
    sched_times: list[float] = []  # attempt scheduled starts
    attempts_per_conn: list[int] = []
    for cid in ids:
        evs = sorted(per[cid], key=lambda e: e[1])
        scheduled: list[float] = []
        ok_at: float | None = None
        last_sched: float | None = None
        n_attempts = 0
        for typ, ts, delay in evs:
            if typ == "reconnect_start" and delay is not None:
                last_sched = ts + delay
                scheduled.append(last_sched)
                sched_times.append(last_sched)
            elif typ in ("reconnect_ok", "reconnect_failed"):
                done_times.append(ts)
                n_attempts += 1
                if typ == "reconnect_ok" and ok_at is None:
                    ok_at = ts
                    break
        attempts_per_conn.append(n_attempts)
        if ok_at is None or last_sched is None:
            missing += 1
            continue
        after = [s for s in scheduled if s >= t_listen]
        due = min(last_sched, after[0]) if after else last_sched
        lateness.append(ok_at - due)
        back.append(ok_at - t_listen)

    def peak(times: list[float]) -> int:
        return peak_per_bin(times, t_listen, BIN)

    ms = 1000.0
    return {
        "back": len(back),
        "missing": missing,
        "all_back_s": r(max(back)) if back and not missing else None,
        "first_back_s": r(min(back)) if back else None,
        "lateness_ms": {
            "p50": r(_scale(percentile(lateness, 50), ms), 2),
            "p90": r(_scale(percentile(lateness, 90), ms), 2),
            "p99": r(_scale(percentile(lateness, 99), ms), 2),
            "max": r(_scale(max(lateness) if lateness else None, ms), 2),
        },
        "peak_attempts_per_100ms": peak(done_times),
        "peak_scheduled_per_100ms": peak(sched_times),
        "attempts_after_listen": sum(1 for t in done_times if t >= t_listen),
        "attempts_total": len(done_times),
        "attempts_per_conn_max": max(attempts_per_conn) if attempts_per_conn else None,
    }


def _scale(value: float | None, k: float) -> float | None:
    return None if value is None else value * k


async def one_run(args: argparse.Namespace, jitter: float, mode: str) -> dict[str, Any]:
    n = args.n
    ids = [f"r{i}" for i in range(n)]
    sim = SimProcess(n, args.base_port)
    # The baseline is proportional with jitter 0: full mode ignores reconnect_jitter.
    # Fleet recovery off: this measures each link's own backoff schedule, which
    # a sibling's wake cuts short on purpose (bench/recovery.py measures that).
    manager = ConnectionManager(
        reconnect_jitter=jitter, reconnect_jitter_mode=mode, fleet_recovery=False
    )
    rec = ReconnectRecorder()
    for t in ReconnectRecorder.TYPES:
        manager.on_event(t, rec)
    for i, cid in enumerate(ids):
        manager.add_connection(cid, "tcp", {"host": LOOPBACK, "port": args.base_port + i})
    sups = [manager.get_supervisor(cid) for cid in ids]
    connected = ConnectionState.CONNECTED

    def n_up() -> int:
        return sum(1 for s in sups if s.state is connected)

    try:
        await sim.start()
        assert sim.listening_at is not None
        assert sim.spawned_at is not None
        startup = sim.listening_at - sim.spawned_at
        async with manager:
            if not await poll_until(lambda: n_up() == n, 60):
                raise RuntimeError(f"only {n_up()}/{n} connected before the outage")
            await asyncio.sleep(0.5)
            t_kill = time.time()
            await sim.kill()
            log(f"jitter={jitter}: simulator killed; away for {args.outage} s")
            down_ok = await poll_until(lambda: n_up() == 0, 10)
            # The peer is away --outage seconds until it *listens* again: spawn the new
            # simulator early by the start-up time the first one took.
            await asyncio.sleep(max(0.0, t_kill + args.outage - startup - time.time()))
            await sim.start()
            assert sim.listening_at is not None
            t_listen = sim.listening_at
            log(
                f"jitter={jitter}: simulator back ({t_listen - t_kill:.2f} s after the kill, "
                f"spawn-to-listen {t_listen - (sim.spawned_at or t_listen):.2f} s)"
            )
            await poll_until(lambda: n_up() == n, args.back_limit)
            await asyncio.sleep(0.3)
            await manager.events.drain(timeout=10)
            up_end = n_up()
            suspended = sum(1 for s in sups if s.state is ConnectionState.SUSPENDED)
    finally:
        await sim.stop()
        sim.close()
    out = analyse(rec.events, ids, t_kill, t_listen)
    out.update(
        {
            "jitter": jitter,
            "jitter_mode": mode,
            "all_lost_seen": down_ok,
            "connected_at_end": up_end,
            "suspended": suspended,
            "outage_s": r(t_listen - t_kill),
            "events_recorded": len(rec.events),
        }
    )
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    if nofile["soft"] < 2 * args.n + 256:
        raise RuntimeError(f"RLIMIT_NOFILE {nofile} too low")
    if busy := busy_ports(args.base_port, args.n):
        raise RuntimeError(f"ports already in use in the device range: {busy[:10]}")
    runs: dict[str, list[dict[str, Any]]] = {"jitter": [], "no_jitter": []}
    for _ in range(args.rounds):
        runs["jitter"].append(await one_run(args, 0.2, args.mode))
        runs["no_jitter"].append(await one_run(args, 0.0, "proportional"))

    j, z = runs["jitter"], runs["no_jitter"]
    inf = float("inf")
    p99s = [x["lateness_ms"]["p99"] if x["lateness_ms"]["p99"] is not None else inf for x in j]
    backs = [x["all_back_s"] if x["all_back_s"] is not None else inf for x in j]
    ratios = [
        a["peak_attempts_per_100ms"] / b["peak_attempts_per_100ms"]
        if b["peak_attempts_per_100ms"]
        else inf
        for a, b in zip(j, z, strict=True)
    ]
    sched_ratios = [
        a["peak_scheduled_per_100ms"] / b["peak_scheduled_per_100ms"]
        if b["peak_scheduled_per_100ms"]
        else inf
        for a, b in zip(j, z, strict=True)
    ]
    limit = MAX_DELAY * 1.2 + 1.0
    summary = {
        "p99_lateness_ms": {"jitter": p99s, "no_jitter": [x["lateness_ms"]["p99"] for x in z]},
        "p50_lateness_ms": {
            "jitter": [x["lateness_ms"]["p50"] for x in j],
            "no_jitter": [x["lateness_ms"]["p50"] for x in z],
        },
        "all_back_s": {"jitter": backs, "no_jitter": [x["all_back_s"] for x in z]},
        "peak_attempts_per_100ms": {
            "jitter": [x["peak_attempts_per_100ms"] for x in j],
            "no_jitter": [x["peak_attempts_per_100ms"] for x in z],
        },
        "peak_ratio": [r(x) for x in ratios],
        "peak_scheduled_ratio": [r(x) for x in sched_ratios],
    }
    result: dict[str, Any] = {
        "benchmark": "reconnect",
        "params": {
            "n": args.n,
            "outage_s": args.outage,
            "rounds": args.rounds,
            "policy": f"initial 0.1 s, x2, max 10 s, {args.mode} jitter 0.2 (baseline: 0)",
            "base_port": args.base_port,
        },
        "summary_per_round": summary,
        "targets_use": "the median over rounds (worst round in 'worst')",
        "worst": {
            "p99_lateness_ms": max(p99s),
            "all_back_s": max(backs),
            "peak_ratio": r(max(ratios)),
        },
        "targets": {
            "p99_lateness_under_50ms": check(r(median(p99s), 2), "<", 50.0),
            f"all_back_within_{limit:g}s": check(r(median(backs)), "<=", limit),
            "peak_ratio_at_most_0.40": check(r(median(ratios)), "<=", 0.40),
        },
        "runs": runs,
    }
    result["pass"] = all(t["pass"] for t in result["targets"].values())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark("reconnect", lambda: run(args), max_runtime=args.max_runtime)


if __name__ == "__main__":
    sys.exit(main())
