"""Benchmark 4: the cost of ``execute_with_retry`` over a direct driver call.

One ``tcp`` connection to one simulated device. Per call, on the same
connection and peer, in the same run:

- direct: ``await conn.request(b"PING")``
- retry:  ``await manager.execute_with_retry(id, lambda c: c.request(b"PING"))``

The calls run sequentially in ``--blocks`` blocks of ``n / blocks`` calls,
alternating the kind in the order A B B A A B ... (so a drift in machine load
hits both kinds alike). Each call is timed alone (``perf_counter_ns``).
Figures: the per-call medians of each kind, and the median over block pairs
of (median retry call / median direct call) in the pair.

Target: median ratio at most 1.10.

    .venv/bin/python bench/overhead.py --n 20000
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import (
    LOOPBACK,
    SimProcess,
    check,
    log,
    percentile,
    r,
    run_benchmark,
)

from edgelink import ConnectionManager
from edgelink.drivers.tcp import TcpConnection
from edgelink.testing import PingPongPeer

PING = b"PING"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4000, help="calls of each kind (full: 20000)")
    p.add_argument("--blocks", type=int, default=20, help="blocks of each kind (default 20)")
    p.add_argument(
        "--peer",
        choices=("subprocess", "inprocess"),
        default="subprocess",
        help="the device: a simulator subprocess (default) or a PingPongPeer on this loop",
    )
    p.add_argument("--warmup", type=int, default=500, help="warm-up calls of each kind")
    p.add_argument("--limit", type=float, default=300.0, help="time bound for the run, s")
    p.add_argument("--max-runtime", type=float, default=900.0, help="hard time limit of the run, s")
    args = p.parse_args(argv)
    if args.n < args.blocks or args.blocks < 2:
        p.error("need --blocks >= 2 and --n >= --blocks")
    return args


async def timed_block(call: Callable[[], Awaitable[Any]], count: int) -> list[int]:
    times: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(count):
        t = clock()
        answer = await call()
        times.append(clock() - t)
        if answer != b"PONG":
            raise RuntimeError(f"unexpected answer {answer!r}")
    return times


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sim: SimProcess | None = None
    peer: PingPongPeer | None = None
    try:
        if args.peer == "subprocess":
            sim = SimProcess(1, 0)
            await sim.start()
            port = sim.first_port
        else:
            peer = PingPongPeer(host=LOOPBACK)
            await peer.start()
            port = peer.port
        manager = ConnectionManager()
        manager.add_connection("dev", "tcp", {"host": LOOPBACK, "port": port})
        async with manager:
            await manager.wait_for_state("dev", "connected", timeout=10)
            conn = manager.get_connection("dev")
            assert isinstance(conn, TcpConnection)

            def op(c: TcpConnection) -> Awaitable[bytes]:
                return c.request(PING)

            def direct() -> Awaitable[bytes]:
                return conn.request(PING)

            def retry() -> Awaitable[bytes]:
                return manager.execute_with_retry("dev", op)

            await timed_block(direct, args.warmup)
            await timed_block(retry, args.warmup)

            per_block = args.n // args.blocks
            order = ["direct", "retry", "retry", "direct"]
            blocks: dict[str, list[list[int]]] = {"direct": [], "retry": []}
            deadline = time.perf_counter() + args.limit
            for i in range(2 * args.blocks):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"time limit {args.limit} s reached in block {i}")
                kind = order[i % 4]
                gc.collect()
                call = direct if kind == "direct" else retry
                blocks[kind].append(await timed_block(call, per_block))
            state = str(manager.get_state("dev"))
            reconnects = manager.get_status("dev")["stats"]["reconnects"]
    finally:
        if sim is not None:
            await sim.stop()
            sim.close()
        if peer is not None:
            await peer.stop()

    us = 1e-3
    med = {k: [statistics.median(b) * us for b in v] for k, v in blocks.items()}
    ratios = [rt / d for d, rt in zip(med["direct"], med["retry"], strict=True)]
    flat = {k: [t * us for b in v for t in b] for k, v in blocks.items()}
    mean_ratio = statistics.fmean(flat["retry"]) / statistics.fmean(flat["direct"])
    median_ratio = statistics.median(ratios)
    log(f"median ratio {median_ratio:.3f} over {len(ratios)} block pairs")
    result: dict[str, Any] = {
        "benchmark": "overhead",
        "params": {"n": args.n, "blocks": args.blocks, "per_block": per_block, "peer": args.peer},
        "direct_us": {
            "median": r(statistics.median(flat["direct"]), 2),
            "p99": r(percentile(flat["direct"], 99), 2),
            "mean": r(statistics.fmean(flat["direct"]), 2),
        },
        "retry_us": {
            "median": r(statistics.median(flat["retry"]), 2),
            "p99": r(percentile(flat["retry"], 99), 2),
            "mean": r(statistics.fmean(flat["retry"]), 2),
        },
        "added_us_median": r(
            statistics.median(flat["retry"]) - statistics.median(flat["direct"]), 2
        ),
        "block_ratios": [r(x) for x in ratios],
        "median_block_ratio": r(median_ratio, 4),
        "min_max_block_ratio": [r(min(ratios)), r(max(ratios))],
        "mean_ratio": r(mean_ratio, 4),
        "connection_state_at_end": state,
        "reconnects_during_run": reconnects,
        "targets": {"median_ratio_at_most_1.10": check(r(median_ratio, 4), "<=", 1.10)},
    }
    result["pass"] = all(t["pass"] for t in result["targets"].values())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark("overhead", lambda: run(args), max_runtime=args.max_runtime)


if __name__ == "__main__":
    sys.exit(main())
