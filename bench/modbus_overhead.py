"""Modbus benchmark: ``execute_with_retry`` over a bare pymodbus client, same register block.

One simulated inverter (``python -m edgelink.sim modbus``, its own process)
and two links to it from this process: a supervised ``modbus_tcp``
connection and a bare ``AsyncModbusTcpClient`` as pymodbus's docs set one up.
Per call, the same block of ``--registers`` holding registers from ``hr:0``:

- bare:  ``await client.read_holding_registers(0, count=N, device_id=1)``
- retry: ``await manager.execute_with_retry(id, lambda c: c.read_registers("hr", 0, N))``
- tags (reported, not a target): ``execute_with_retry`` of ``c.read_many(tags)``
  with one tag per register, i.e. the poll path: parsed tags, one coalesced
  request, a dict of decoded values.

The kinds run in ``--blocks`` interleaved blocks (bare, retry, tags, tags,
retry, bare, ...), each call timed alone. Figures: per-call medians of each
kind and the median over blocks of (median retry call / median bare call).

Target: median ratio at most 1.10.

    .venv/bin/python bench/modbus_overhead.py --n 20000
"""

from __future__ import annotations

import argparse
import gc
import logging
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
from pymodbus.client import AsyncModbusTcpClient

from edgelink import ConnectionManager
from edgelink.drivers.modbus import ModbusTcpConnection

KINDS = ("bare", "retry", "tags")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=6000, help="calls of each kind (full: 20000)")
    p.add_argument("--blocks", type=int, default=20, help="blocks of each kind (default 20)")
    p.add_argument("--registers", type=int, default=20, help="registers per call (default 20)")
    p.add_argument("--warmup", type=int, default=500, help="warm-up calls of each kind")
    p.add_argument("--max-runtime", type=float, default=900.0, help="hard time limit, s")
    args = p.parse_args(argv)
    if args.n < args.blocks or args.blocks < 2:
        p.error("need --blocks >= 2 and --n >= --blocks")
    if not 1 <= args.registers <= 100:
        p.error("--registers must be 1..100 (the simulator has 100 holding registers)")
    return args


async def timed_block(call: Callable[[], Awaitable[Any]], count: int, expect: int) -> list[int]:
    times: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(count):
        t = clock()
        answer = await call()
        times.append(clock() - t)
        if len(answer) != expect:
            raise RuntimeError(f"unexpected answer {answer!r}")
    return times


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sim = SimProcess(1, 0, kind="modbus")
    n_regs = args.registers
    tags = [f"hr:{i}" for i in range(n_regs)]
    client: AsyncModbusTcpClient | None = None
    try:
        await sim.start()
        assert sim.first_port is not None
        port = sim.first_port
        manager = ConnectionManager()
        manager.add_connection("dev", "modbus_tcp", {"host": LOOPBACK, "port": port})
        client = AsyncModbusTcpClient(LOOPBACK, port=port)
        if not await client.connect():
            raise RuntimeError("the bare pymodbus client could not connect")
        async with manager:
            await manager.wait_for_state("dev", "connected", timeout=10)
            conn = manager.get_connection("dev")
            assert isinstance(conn, ModbusTcpConnection)
            bare_client = client

            async def bare() -> list[int]:
                response = await bare_client.read_holding_registers(0, count=n_regs, device_id=1)
                if response.isError():
                    raise RuntimeError(f"exception response {response}")
                return list(response.registers)

            def block_op(c: ModbusTcpConnection) -> Awaitable[list[int] | list[bool]]:
                return c.read_registers("hr", 0, n_regs)

            def tags_op(c: ModbusTcpConnection) -> Awaitable[dict[str, Any]]:
                return c.read_many(tags)

            def retry() -> Awaitable[list[int] | list[bool]]:
                return manager.execute_with_retry("dev", block_op)

            def tagged() -> Awaitable[dict[str, Any]]:
                return manager.execute_with_retry("dev", tags_op)

            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "bare": bare,
                "retry": retry,
                "tags": tagged,
            }
            for kind in KINDS:
                await timed_block(calls[kind], args.warmup, n_regs)

            per_block = args.n // args.blocks
            blocks: dict[str, list[list[int]]] = {k: [] for k in KINDS}
            for i in range(args.blocks):
                order = KINDS if i % 2 == 0 else tuple(reversed(KINDS))
                for kind in order:
                    gc.collect()
                    blocks[kind].append(await timed_block(calls[kind], per_block, n_regs))
            state = str(manager.get_state("dev"))
            status = manager.get_status("dev")
    finally:
        if client is not None:
            client.close()
        await sim.stop()
        sim.close()

    us = 1e-3
    med = {k: [statistics.median(b) * us for b in v] for k, v in blocks.items()}
    flat = {k: [t * us for b in v for t in b] for k, v in blocks.items()}
    ratios = [rt / b for b, rt in zip(med["bare"], med["retry"], strict=True)]
    tag_ratios = [tg / b for b, tg in zip(med["bare"], med["tags"], strict=True)]
    median_ratio = statistics.median(ratios)
    log(f"median ratio {median_ratio:.3f} over {len(ratios)} blocks")

    def figures(kind: str) -> dict[str, float | None]:
        return {
            "median": r(statistics.median(flat[kind]), 2),
            "p99": r(percentile(flat[kind], 99), 2),
            "mean": r(statistics.fmean(flat[kind]), 2),
        }

    result: dict[str, Any] = {
        "benchmark": "modbus_overhead",
        "params": {
            "n": args.n,
            "blocks": args.blocks,
            "per_block": per_block,
            "registers": n_regs,
            "peer": "edgelink.sim modbus (subprocess, pymodbus server)",
        },
        "bare_pymodbus_us": figures("bare"),
        "execute_with_retry_us": figures("retry"),
        "execute_with_retry_tags_us": figures("tags"),
        "added_us_median": r(statistics.median(flat["retry"]) - statistics.median(flat["bare"]), 2),
        "block_ratios": [r(x) for x in ratios],
        "median_block_ratio": r(median_ratio, 4),
        "min_max_block_ratio": [r(min(ratios)), r(max(ratios))],
        "median_block_ratio_tags": r(statistics.median(tag_ratios), 4),
        "connection_state_at_end": state,
        "reconnects_during_run": status["stats"]["reconnects"],
        "packets_sent": status["stats"]["packets_sent"],
        "targets": {"median_ratio_at_most_1.10": check(r(median_ratio, 4), "<=", 1.10)},
    }
    result["pass"] = all(t["pass"] for t in result["targets"].values())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    return run_benchmark("modbus_overhead", lambda: run(args), max_runtime=args.max_runtime)


if __name__ == "__main__":
    sys.exit(main())
