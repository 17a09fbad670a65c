"""Benchmark: MQTT in -> route -> MQTT out with a new topic per message, edgelink vs bare paho.

The workload of issue 10: every message on its own topic (``--topics unique``,
``bench/in/u<9 digits>``, never one twice), or on 100 fixed topics
(``--topics fixed``, as `bench/bridge.py`). One private mosquitto on a free
loopback port (`edgelink.testing.MosquittoBroker`); the load generator and
counting subscriber, the bare paho republisher and edgelink are the child
processes of `bench/_common.py` (shared with `bench/bridge.py`):

- **edgelink** (measured): a `ConnectionManager`, one ``mqtt`` connection
  ``broker`` subscribed to ``bench/in/+`` (stock settings, ``spam_max_pps:
  null``), one route ``broker.bench/in/+`` -> ``broker.bench/out/{1}`` with
  condition ``value > 10`` and transform ``scale(0.001)``;
- **paho** (the baseline, in the same run): a bare paho-mqtt client whose
  ``on_message`` decodes the JSON, checks ``value > 10`` and publishes
  ``value * 0.001`` to ``bench/out/<last level>``.

Each payload is the JSON send time (CLOCK_MONOTONIC, > 10 s on any running
machine, so the condition passes); a message's latency is its receipt time
minus the send time its payload carries (divided back by 0.001).

Sessions come in adjacent pairs (edgelink paho, paho edgelink, ...), each in
a fresh process: a priming message, then a fixed-rate step per ``--rates``
(CPU % of one core over the step after its warm-up, loss, p50/p99), and with
``--topics unique`` a long step of ``--million`` messages (a new topic each)
at ``--million-rate`` while the orchestrator samples the subject's RSS (this
step is never cut short: a backlog shows as latency and loss, the RSS still
covers every topic that got through).
Ratios are edgelink / paho per session pair, their median taken; CPU per
message at one rate is CPU % / rate, so its ratio is the CPU ratio.

Targets (issue 10): CPU per message <= 1.5x paho's at 1,000 and 10,000 msg/s;
zero loss and p99 < 50 ms at 10,000 msg/s; RSS flat across the million topics
(growth over the last 70 % of them <= 10 MiB).

    .venv/bin/python bench/route_topics.py --topics unique
    .venv/bin/python bench/route_topics.py --topics fixed --million 0
    BENCH_LOOP=uvloop .venv/bin/python bench/route_topics.py --million 0  # edgelink on uvloop
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from typing import Any

from _common import (
    ChildProcess,
    check,
    emit,
    install_signal_cleanup,
    log,
    machine_info,
    peak_rss,
    r,
    run_edgelink,
    run_loadgen,
    run_paho,
    step_brief,
    step_passes,
)

ROUTE = {
    "id": "topics",
    "from": "broker.bench/in/+",
    "to": "broker.bench/out/{1}",
    "condition": "value > 10",
    "transform": "scale(0.001)",
}
THRESHOLD, FACTOR = 10.0, 0.001
SUBJECTS = ("edgelink", "paho")
SCRIPT = os.path.abspath(__file__)
#: RSS growth allowed over the last 70 % of the million topics, MiB.
RSS_GROWTH_LIMIT_MB = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topics", choices=("unique", "fixed"), default="unique")
    p.add_argument("--sessions", type=int, default=2, help="sessions in all, A B B A ... (2)")
    p.add_argument("--rates", default="1000,10000", help="msg/s of the fixed-rate steps")
    p.add_argument("--seconds", type=float, default=6.0, help="length of a fixed-rate step")
    p.add_argument("--warmup", type=float, default=1.0, help="s of a step before measuring")
    p.add_argument("--million", type=int, default=1_000_000, help="messages of the RSS step")
    p.add_argument("--million-rate", type=float, default=10_000.0, help="msg/s of the RSS step")
    p.add_argument("--p99-ms", type=float, default=50.0, help="p99 latency limit of a step")
    p.add_argument("--max-runtime", type=float, default=1200.0, help="hard time limit, s")
    p.add_argument("--role", choices=("loadgen", *SUBJECTS), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._t0 = time.monotonic()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = peak_rss(self.pid)["rss_mb"]
            if rss is not None:
                self.samples.append((time.monotonic() - self._t0, rss))


def rss_curve(samples: list[tuple[float, float]], rate: float, total: int) -> dict[str, Any]:
    """RSS at tenths of the topics sent (by time x rate), and the growth over the last 70 %."""
    if not samples:
        return {"samples": 0}
    at: dict[str, float] = {}
    for tenth in range(1, 11):
        topics = total * tenth / 10
        near = min(samples, key=lambda s: abs(s[0] * rate - topics))
        at[f"{tenth * 10}%"] = near[1]
    return {
        "samples": len(samples),
        "rss_mb_at_share_of_topics": at,
        "growth_mb_last_70pct": r(at["100%"] - at["30%"], 1),
        "max_mb": max(s[1] for s in samples),
    }


def session(
    subject: str, broker: Any, loadgen: ChildProcess, args: argparse.Namespace, rates: list[float]
) -> dict[str, Any]:
    child = ChildProcess(SCRIPT, subject, "--port", str(broker.port))
    try:
        if child.readline(30) != "ready":
            raise RuntimeError(f"{subject} did not start")
        idle = peak_rss(child.pid)
        json.loads(loadgen.ask("prime", 30))
        pids = f"subject={child.pid} broker={broker.pid}"
        steps: dict[str, dict[str, Any]] = {}
        for rate in rates:
            step = json.loads(
                loadgen.ask(f"step {rate} {args.seconds} {args.warmup} {pids}", args.seconds + 30)
            )
            step["pass"] = step_passes(step, args)
            steps[f"{rate:.0f}"] = step
            log(f"{subject} {step_brief(step)}")
        million: dict[str, Any] | None = None
        if args.topics == "unique" and args.million > 0:
            seconds = args.million / args.million_rate
            with RssSampler(child.pid) as sampler:
                step = json.loads(
                    loadgen.ask(
                        f"step {args.million_rate} {seconds} {args.warmup} {pids} noabort",
                        seconds + 60,
                    )
                )
            step["pass"] = step_passes(step, args)
            million = {
                "step": {k: v for k, v in step.items() if k != "cpu"}
                | {"cpu_pct": step["cpu"].get("subject_pct")},
                "rss": rss_curve(sampler.samples, args.million_rate, step["sent"]),
            }
            log(f"{subject} million {step_brief(step)}, RSS {million['rss']}")
        stats = json.loads(child.ask("stats", 10))
        end = peak_rss(child.pid)
    finally:
        child.close()
    return {
        "subject": subject,
        "steps": steps,
        "million": million,
        "rss_mb_idle": idle["rss_mb"],
        "rss_mb_end": end["rss_mb"],
        "peak_rss_mb": end["peak_rss_mb"],
        "process_counters": stats,
    }


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    from edgelink.testing.mosquitto import MosquittoBroker

    t_start = time.monotonic()
    rates = [float(x) for x in args.rates.split(",")]
    order = [SUBJECTS[0] if i % 4 in (0, 3) else SUBJECTS[1] for i in range(args.sessions)]
    sessions: list[dict[str, Any]] = []
    with MosquittoBroker(extra_config="set_tcp_nodelay true") as broker:
        loadgen = ChildProcess(
            SCRIPT, "loadgen", "--port", str(broker.port), "--topics", args.topics
        )
        try:
            if loadgen.readline(30) != "ready":
                raise RuntimeError("the load generator did not start")
            for i, subject in enumerate(order):
                log(f"session {i + 1}/{len(order)}: {subject}")
                sessions.append(session(subject, broker, loadgen, args, rates))
        finally:
            loadgen.close()
        broker_log = broker.log_text()
    pairs = [
        (a, b) if a["subject"] == "edgelink" else (b, a)
        for a, b in zip(sessions[0::2], sessions[1::2], strict=False)
        if {a["subject"], b["subject"]} == set(SUBJECTS)
    ]
    per_rate: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for rate in rates:
        key = f"{rate:.0f}"
        cpu_pairs = [
            r(e["steps"][key]["cpu"]["subject_pct"] / p["steps"][key]["cpu"]["subject_pct"])
            if e["steps"][key]["cpu"]["subject_pct"] and p["steps"][key]["cpu"]["subject_pct"]
            else None
            for e, p in pairs
        ]
        side = {
            s: {
                "cpu_pct": [
                    x["steps"][key]["cpu"]["subject_pct"] for x in sessions if x["subject"] == s
                ],
                "lost": [x["steps"][key]["lost"] for x in sessions if x["subject"] == s],
                "p99_ms": [x["steps"][key]["p99_ms"] for x in sessions if x["subject"] == s],
                "achieved_rate": [
                    x["steps"][key]["achieved_rate"] for x in sessions if x["subject"] == s
                ],
            }
            for s in SUBJECTS
        }
        cpu_ratio = _median(cpu_pairs)
        per_rate[key] = side | {
            "cpu_per_msg_ratio_pairs": cpu_pairs,
            "cpu_per_msg_ratio": cpu_ratio,
        }
        targets[f"cpu_per_msg_at_{key}_at_most_1.5x_paho"] = check(cpu_ratio, "<=", 1.5)
    top = f"{max(rates):.0f}"
    el_top = [s["steps"][top] for s in sessions if s["subject"] == "edgelink"]
    targets[f"lost_at_{top}_is_zero"] = check(sum(s["lost"] for s in el_top), "==", 0)
    # A step cut short (half a second of messages owed) did not keep up, whatever it lost.
    targets[f"kept_up_at_{top}"] = check(sum(s["aborted"] is not None for s in el_top), "==", 0)
    targets[f"p99_at_{top}_below_{args.p99_ms:g}_ms"] = check(
        max((s["p99_ms"] or 1e9) for s in el_top), "<", args.p99_ms
    )
    growth = [
        s["million"]["rss"].get("growth_mb_last_70pct")
        for s in sessions
        if s["subject"] == "edgelink" and s["million"]
    ]
    if growth:
        targets["rss_growth_over_last_70pct_of_million_topics_mb"] = check(
            max(g if g is not None else 1e9 for g in growth), "<=", RSS_GROWTH_LIMIT_MB
        )
    result: dict[str, Any] = {
        "benchmark": "route_topics",
        "params": {
            "topics": args.topics,
            "rates": rates,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "million": args.million if args.topics == "unique" else 0,
            "million_rate": args.million_rate,
            "p99_ms_limit": args.p99_ms,
            "qos": 0,
            "route": ROUTE,
            "order": order[: len(sessions)],
        },
        "per_rate": per_rate,
        "million_topics": {
            s: [x["million"] for x in sessions if x["subject"] == s and x["million"]]
            for s in SUBJECTS
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
        return run_loadgen(args.port, None if args.topics == "unique" else 100, FACTOR)
    if args.role == "paho":
        return run_paho(args.port, THRESHOLD, FACTOR)
    if args.role == "edgelink":
        return run_edgelink(args.port, ROUTE)
    install_signal_cleanup()

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"benchmark exceeded its time limit of {args.max_runtime:g} s")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(max(1, int(args.max_runtime)))
    info = machine_info()
    try:
        result = orchestrate(args)
    except (Exception, SystemExit) as exc:
        emit({"benchmark": "route_topics", "error": repr(exc), "pass": False, "machine": info})
        return 1
    finally:
        signal.alarm(0)
    result["machine"] = info | {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    emit(result)
    return 0 if result["pass"] else 2


if __name__ == "__main__":
    sys.exit(main())
