"""Benchmark: MQTT in -> route (condition + transform) -> MQTT out, edgelink vs bare paho.

One private mosquitto on a free loopback port (`edgelink.testing.MosquittoBroker`,
``set_tcp_nodelay true``). Three kinds of child process, one broker:

- the **load generator** (also the counting subscriber): a raw-socket MQTT
  client that publishes QoS 0 to ``bench/in/00`` .. ``bench/in/99`` at a fixed
  rate (paced in batches on a ~1 ms tick), each payload the JSON number of its
  send time (CLOCK_MONOTONIC, shared by every process on the machine), and
  subscribes to ``bench/out/#``. The latency of a message is its receipt time
  minus the send time it carries (halved back: the route doubled it). It also
  samples the CPU of the measured process, the broker, itself and the machine;
- **edgelink** (measured): a `ConnectionManager` with one ``mqtt`` connection
  ``broker`` subscribed to ``bench/in/+`` (``spam_max_pps: null``) and one
  route ``broker.bench/in/+`` -> ``broker.bench/out/{1}`` with condition
  ``value > 0`` and transform ``scale(2)``: the connection-write path through
  the router (``execute_with_retry`` -> ``conn.write``), stock settings;
- **paho** (the baseline, measured the same way): a bare paho-mqtt client in
  ``loop_forever()`` whose ``on_message`` decodes the JSON, checks ``value >
  0``, publishes ``value * 2`` to ``bench/out/<last level>`` (QoS 0, TCP_NODELAY).

Each measured process runs alone (both would republish the same input), in
its own process, started fresh per session; sessions come in adjacent pairs
(A B, B A, A B, ...) so that drift in machine load hits both alike. A session:
prime (one message through), a fixed-rate run at ``--fixed-rate`` (CPU %,
latency, loss, RSS), then a step search. A step passes with zero loss, p99
latency < ``--p99-ms`` (over the messages sent after its warm-up) and the load
generator keeping the rate (>= 97 %); a step whose backlog exceeds 0.5 s of
messages is cut short as failed (its backlog would poison the next step), and
a failed step is run once more and fails only if it fails again (the machine
is shared: one stall of a neighbour must not end a search). The fixed run is
the search's first step; rates rise by ``--step-factor`` until a step fails
(or fall until one passes, if the first fails), then ``--refine`` bisections
between the last pass and the first fail. Sustained rate = the highest
passing step. CPU % is user+system time of the whole process (all threads)
over the step's window after its warm-up, in % of one core.

Reported: per side the medians over its sessions (and every session), the
ratio edgelink / paho per session pair and their median (what the targets
use; the ratio of the medians is shown too), and the targets of issue 5:
sustained rate >= 0.7x the baseline, CPU at the fixed rate <= 1.3x the
baseline, zero loss at the fixed rate.

    .venv/bin/python bench/bridge.py
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from _common import (
    ChildProcess,
    peak_rss,
    run_edgelink,
    run_loadgen,
    run_paho,
    step_brief,
    step_passes,
)

LOOPBACK = "127.0.0.1"
TOPICS = 100
ROUTE = {
    "id": "bench",
    "from": "broker.bench/in/+",
    "to": "broker.bench/out/{1}",
    "condition": "value > 0",
    "transform": "scale(2)",
}
SUBJECTS = ("edgelink", "paho")
SCRIPT = os.path.abspath(__file__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=6, help="sessions in all, A B B A ... (6)")
    p.add_argument("--fixed-rate", type=float, default=5000.0, help="msg/s of the fixed run")
    p.add_argument("--fixed-seconds", type=float, default=6.0, help="length of the fixed run")
    p.add_argument("--warmup", type=float, default=1.0, help="fixed run: s before measuring")
    p.add_argument("--step-seconds", type=float, default=3.0, help="length of a search step")
    p.add_argument("--step-warmup", type=float, default=0.5, help="search step: s before CPU/p99")
    p.add_argument("--min-rate", type=float, default=1000.0, help="the search gives up below")
    p.add_argument("--step-factor", type=float, default=1.25, help="rate growth per step")
    p.add_argument("--refine", type=int, default=2, help="bisections after the first fail")
    p.add_argument("--max-rate", type=float, default=60_000.0, help="the search stops here")
    p.add_argument("--p99-ms", type=float, default=50.0, help="p99 latency limit of a step")
    p.add_argument("--no-search", action="store_true", help="fixed-rate runs only")
    p.add_argument("--max-runtime", type=float, default=420.0, help="hard time limit, s")
    p.add_argument("--role", choices=("loadgen", *SUBJECTS), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------ measured processes


# ---------------------------------------------------------- orchestrator


def session(
    subject: str, broker: Any, loadgen: ChildProcess, args: argparse.Namespace, deadline: float
) -> dict[str, Any]:
    from _common import log

    child = ChildProcess(SCRIPT, subject, "--port", str(broker.port))
    try:
        if child.readline(30) != "ready":
            raise RuntimeError(f"{subject} did not start")
        idle = peak_rss(child.pid)
        json.loads(loadgen.ask("prime", 30))
        pids = f"subject={child.pid} broker={broker.pid}"
        fixed = json.loads(
            loadgen.ask(
                f"step {args.fixed_rate} {args.fixed_seconds} {args.warmup} {pids}",
                args.fixed_seconds + 30,
            )
        )
        fixed_rss = peak_rss(child.pid)
        log(f"{subject} fixed {step_brief(fixed)}, RSS {fixed_rss['rss_mb']} MiB")
        steps: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        limited_by = None
        if not args.no_search:

            def run_step(rate: float) -> bool:
                """One step at ``rate``; a fail is run again and counts only if it fails twice."""
                nonlocal best, limited_by
                for attempt in (1, 2):
                    step = json.loads(
                        loadgen.ask(
                            f"step {rate:.0f} {args.step_seconds} {args.step_warmup} {pids}",
                            args.step_seconds + 30,
                        )
                    )
                    ok = step_passes(step, args)
                    step["pass"] = ok
                    step["attempt"] = attempt
                    steps.append(step)
                    log(f"{subject} step {step_brief(step)} -> {'pass' if ok else 'fail'}")
                    if ok:
                        if best is None or step["rate"] > best["rate"]:
                            best = step
                        return True
                    if step["achieved_rate"] < 0.97 * step["rate"]:
                        limited_by = "load generator"
                return False

            rate, lo, hi = args.fixed_rate, None, None
            fixed["pass"] = step_passes(fixed, args)
            if fixed["pass"]:
                # The fixed run is the search's first step, and a longer one.
                best, lo, rate = fixed, rate, rate * args.step_factor
            while rate <= args.max_rate and time.monotonic() < deadline:
                if run_step(rate):
                    lo, rate = rate, rate * args.step_factor
                else:
                    hi = rate
                    break
            # The first rate failed: go down until one passes.
            while lo is None and hi is not None and time.monotonic() < deadline:
                rate = hi / args.step_factor
                if rate < args.min_rate:
                    break
                if run_step(rate):
                    lo = rate
                else:
                    hi = rate
            if hi is None and lo is not None and rate > args.max_rate:
                limited_by = "--max-rate"
            for _ in range(args.refine):
                if lo is None or hi is None or time.monotonic() >= deadline:
                    break
                mid = (lo * hi) ** 0.5
                if run_step(mid):
                    lo = mid
                else:
                    hi = mid
        stats = json.loads(child.ask("stats", 10))
        peak = peak_rss(child.pid)
    finally:
        child.close()
    return {
        "subject": subject,
        "fixed": fixed,
        "rss_mb_idle": idle["rss_mb"],
        "rss_mb_at_fixed_rate": fixed_rss["rss_mb"],
        "peak_rss_mb": peak["peak_rss_mb"],
        "sustained_msgs_per_s": best["rate"] if best else None,
        "sustained_step": (
            None
            if best is None
            else {k: best[k] for k in ("rate", "p50_ms", "p99_ms", "max_ms", "cpu")}
        ),
        "search_limited_by": limited_by,
        "steps": [
            {
                k: s[k]
                for k in (
                    "rate",
                    "attempt",
                    "pass",
                    "lost",
                    "p50_ms",
                    "p99_ms",
                    "achieved_rate",
                    "aborted",
                )
            }
            | {"cpu_pct": s["cpu"].get("subject_pct")}
            for s in steps
        ],
        "process_counters": stats,
    }


def _median(values: list[Any]) -> float | None:
    import statistics

    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(sessions: list[dict[str, Any]], subject: str) -> dict[str, Any]:
    mine = [s for s in sessions if s["subject"] == subject]
    fixed = [s["fixed"] for s in mine]
    return {
        "sessions": len(mine),
        "sustained_msgs_per_s_median": _median([s["sustained_msgs_per_s"] for s in mine]),
        "sustained_msgs_per_s_sessions": [s["sustained_msgs_per_s"] for s in mine],
        "fixed_rate": {
            "cpu_pct_median": _median([f["cpu"]["subject_pct"] for f in fixed]),
            "cpu_pct_sessions": [f["cpu"]["subject_pct"] for f in fixed],
            "p50_ms_median": _median([f["p50_ms"] for f in fixed]),
            "p99_ms_median": _median([f["p99_ms"] for f in fixed]),
            "p99_ms_sessions": [f["p99_ms"] for f in fixed],
            "max_ms_sessions": [f["max_ms"] for f in fixed],
            "lost_total": sum(f["lost"] for f in fixed),
            "sent_total": sum(f["sent"] for f in fixed),
            "broker_cpu_pct_median": _median([f["cpu"]["broker_pct"] for f in fixed]),
            "loadgen_cpu_pct_median": _median([f["cpu"]["loadgen_pct"] for f in fixed]),
            "machine_busy_pct_sessions": [f["cpu"]["machine_busy_pct"] for f in fixed],
        },
        "rss_mb_idle_median": _median([s["rss_mb_idle"] for s in mine]),
        "rss_mb_at_fixed_rate_median": _median([s["rss_mb_at_fixed_rate"] for s in mine]),
        "peak_rss_mb_max": max((s["peak_rss_mb"] or 0 for s in mine), default=None),
    }


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    from _common import check, log, r

    from edgelink.testing.mosquitto import MosquittoBroker

    t_start = time.monotonic()
    # Leave room for the last session to finish inside the hard limit.
    deadline = t_start + args.max_runtime * 0.8
    order = [SUBJECTS[0] if i % 4 in (0, 3) else SUBJECTS[1] for i in range(args.sessions)]
    sessions: list[dict[str, Any]] = []
    with MosquittoBroker(extra_config="set_tcp_nodelay true") as broker:
        loadgen = ChildProcess(SCRIPT, "loadgen", "--port", str(broker.port))
        try:
            if loadgen.readline(30) != "ready":
                raise RuntimeError("the load generator did not start")
            for i, subject in enumerate(order):
                if sessions and time.monotonic() >= deadline:
                    log(f"time budget used up: {len(order) - i} sessions skipped")
                    break
                log(f"session {i + 1}/{len(order)}: {subject}")
                sessions.append(session(subject, broker, loadgen, args, deadline))
        finally:
            loadgen.close()
        broker_log = broker.log_text()
    summary = {s: summarize(sessions, s) for s in SUBJECTS}
    el, pa = summary["edgelink"], summary["paho"]
    # Sessions come in adjacent pairs (A B, B A, ...): a ratio per pair cancels
    # the drift of machine load between pairs; the targets use their median.
    pairs = [
        (a, b) if a["subject"] == "edgelink" else (b, a)
        for a, b in zip(sessions[0::2], sessions[1::2], strict=False)
        if {a["subject"], b["subject"]} == set(SUBJECTS)
    ]

    def ratio(x: float | None, y: float | None) -> float | None:
        return x / y if x and y else None

    rate_pairs = [ratio(e["sustained_msgs_per_s"], p["sustained_msgs_per_s"]) for e, p in pairs]
    cpu_pairs = [
        ratio(e["fixed"]["cpu"]["subject_pct"], p["fixed"]["cpu"]["subject_pct"]) for e, p in pairs
    ]
    rate_ratio = _median(rate_pairs) if rate_pairs and None not in rate_pairs else None
    cpu_ratio = _median(cpu_pairs) if cpu_pairs and None not in cpu_pairs else None
    targets = {
        "sustained_rate_at_least_0.7x_paho": check(r(rate_ratio), ">=", 0.7),
        f"cpu_at_{args.fixed_rate:.0f}_msgs_at_most_1.3x_paho": check(r(cpu_ratio), "<=", 1.3),
        f"lost_at_{args.fixed_rate:.0f}_msgs_is_zero": check(
            el["fixed_rate"]["lost_total"], "==", 0
        ),
    }
    if args.no_search:
        targets.pop("sustained_rate_at_least_0.7x_paho")
    result: dict[str, Any] = {
        "benchmark": "bridge",
        "params": {
            "fixed_rate": args.fixed_rate,
            "fixed_seconds": args.fixed_seconds,
            "warmup": args.warmup,
            "step_seconds": args.step_seconds,
            "step_warmup": args.step_warmup,
            "step_factor": args.step_factor,
            "refine": args.refine,
            "p99_ms_limit": args.p99_ms,
            "qos": 0,
            "topics": TOPICS,
            "route": ROUTE,
            "order": order[: len(sessions)],
        },
        "edgelink": el,
        "paho": pa,
        "ratios": {
            "sustained_rate_edgelink_vs_paho": r(rate_ratio),
            "sustained_rate_pairs": [r(x) for x in rate_pairs],
            "sustained_rate_ratio_of_medians": r(
                ratio(el["sustained_msgs_per_s_median"], pa["sustained_msgs_per_s_median"])
            ),
            "cpu_at_fixed_rate_edgelink_vs_paho": r(cpu_ratio),
            "cpu_at_fixed_rate_pairs": [r(x) for x in cpu_pairs],
            "cpu_at_fixed_rate_ratio_of_medians": r(
                ratio(el["fixed_rate"]["cpu_pct_median"], pa["fixed_rate"]["cpu_pct_median"])
            ),
        },
        "targets": targets,
        "sessions": sessions,
        "broker_log_drop_notices": broker_log.count("Outgoing messages are being dropped"),
        "seconds": round(time.monotonic() - t_start, 1),
    }
    result["pass"] = all(t["pass"] for t in targets.values())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "loadgen":
        return run_loadgen(args.port, TOPICS, 2.0)
    if args.role == "paho":
        return run_paho(args.port)
    if args.role == "edgelink":
        return run_edgelink(args.port, ROUTE)

    from _common import emit, install_signal_cleanup, machine_info

    install_signal_cleanup()

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"benchmark exceeded its time limit of {args.max_runtime:g} s")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(max(1, int(args.max_runtime)))
    info = machine_info()
    try:
        result = orchestrate(args)
    except (Exception, SystemExit) as exc:
        # SystemExit: SIGTERM/SIGHUP; the children and the broker are gone by now.
        emit({"benchmark": "bridge", "error": repr(exc), "pass": False, "machine": info})
        return 1
    finally:
        signal.alarm(0)
    result["machine"] = info | {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    emit(result)
    return 0 if result["pass"] else 2


if __name__ == "__main__":
    sys.exit(main())
