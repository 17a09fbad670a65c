"""Benchmark 5: the router's in-process throughput, and wildcard lookup against route count.

Throughput: ``Router.route_data`` on one thread, one exact route with a
condition and a ``scale`` transform into an in-memory target, deliveries
included: the clock stops after ``await router.drain()``. Datapoints arrive
in bursts of ``--burst`` calls between event-loop turns (how drivers report),
and the router delivers each burst to the target in one batch.

The baseline is the same job hand-written: build the address, look the route
up in a dict, call a condition lambda and a transform lambda, stamp the time,
append ``(tag, value, ts)`` to a list that is swapped out per burst. Router
and baseline run in alternating blocks (A B B A ...) in the same process, so
drift in machine load hits both alike; the ratio is the median over block
pairs.

Lookup: the compiled wildcard index (`PatternIndex.match`, no plan cache)
holding 10 and 10,000 wildcard routes of three shapes (``dev<i>.*.temp``,
``dev<i>.**``, ``mqtt.site/dev<i>/+/value``), each lookup matching one route;
alternating blocks, ratio = median(10,000 / 10). Measured twice:

- ``hot``: 1,000 distinct addresses, looked up over and over (a gateway's
  active tags); with 10,000 routes they match 1,000 different routes, with
  10 routes all hit the same 10. This is the target.
- ``uniform``: every lookup a new address, spread over all routes: with
  10,000 routes nearly every lookup touches index nodes no recent lookup
  touched, so it also measures cache misses (reported, not a target).

The router's own path, ``route_data`` to a wildcard route through its plan
cache (2,000 distinct addresses either way), is reported alongside.

Targets: >= 500,000 datapoints/s; >= 0.2x the baseline; hot lookup with
10,000 routes within 1.3x of hot lookup with 10.

    .venv/bin/python bench/router.py --n 2000000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from _common import check, log, r, run_benchmark

from edgelink.router import DataPoint, Router, Target
from edgelink.router.address import PatternIndex, parse_pattern

ROUTE = {
    "id": "bench",
    "from": "src.temp",
    "to": "sink.out",
    "condition": "value > 10",
    "transform": "scale(0.5)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="datapoints of each kind (full: 2M)")
    p.add_argument("--blocks", type=int, default=20, help="blocks of each kind")
    p.add_argument("--burst", type=int, default=1000, help="route_data calls per loop turn")
    p.add_argument("--lookups", type=int, default=60_000, help="lookups per block")
    p.add_argument("--hot", type=int, default=1000, help="distinct addresses of the hot set")
    p.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    p.add_argument(
        "--general-path",
        action="store_true",
        help="time the loop-guarded path (echoes, virtual hops), not the inlined first hop",
    )
    args = p.parse_args(argv)
    if args.n < args.blocks * args.burst or args.blocks < 2:
        p.error("need --blocks >= 2 and --n >= --blocks * --burst")
    return args


class Sink(Target):
    """An in-memory target that keeps the last batch and counts what it got."""

    def __init__(self) -> None:
        self.count = 0
        self.last: Sequence[tuple[str, DataPoint]] = ()

    async def send(self, tag: str, dp: DataPoint) -> None:
        self.count += 1

    async def send_batch(self, items: Sequence[tuple[str, DataPoint]]) -> None:
        self.count += len(items)
        self.last = items


async def router_block(router: Router, sink: Sink, count: int, burst: int) -> float:
    route_data = router.route_data
    values = range(burst)
    gc.collect()
    before = sink.count
    t = time.perf_counter()
    for _ in range(count // burst):
        for v in values:
            route_data("src", "temp", v)
        await asyncio.sleep(0)
    await router.drain()
    elapsed = time.perf_counter() - t
    delivered = sink.count - before
    expected = (count // burst) * sum(1 for v in values if v > 10)
    if delivered != expected:
        raise RuntimeError(f"router delivered {delivered}, expected {expected}")
    return elapsed


async def baseline_block(count: int, burst: int) -> float:
    out: list[tuple[str, Any, float]] = []
    routes: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any], str]] = {
        "src.temp": (lambda v: v > 10, lambda v: v * 0.5, "out")
    }
    now = time.time
    delivered = 0
    values = range(burst)
    gc.collect()
    t = time.perf_counter()
    for _ in range(count // burst):
        for v in values:
            source, tag = "src", "temp"
            route = routes.get(f"{source}.{tag}")
            if route is not None and route[0](v):
                out.append((route[2], route[1](v), now()))
        await asyncio.sleep(0)
        batch, out = out, []
        delivered += len(batch)
    elapsed = time.perf_counter() - t
    if delivered != (count // burst) * sum(1 for v in values if v > 10):
        raise RuntimeError("baseline miscounted")
    return elapsed


class GeneralPathRouter(Router):
    """Every datapoint through the loop-guarded path (`Dispatch._fire`), as echoes take it."""

    _INLINE_FIRST_HOP = False


async def throughput(args: argparse.Namespace) -> dict[str, Any]:
    router = GeneralPathRouter() if args.general_path else Router()
    sink = Sink()
    router.add_target("sink", sink)
    router.load_routes({"version": "1.0", "routes": [ROUTE]})
    per_block = (args.n // args.blocks) // args.burst * args.burst
    # warm-up: plan cache, specialization, allocator
    await router_block(router, sink, min(per_block, 50_000), args.burst)
    await baseline_block(min(per_block, 50_000), args.burst)
    order = ["router", "baseline", "baseline", "router"]
    times: dict[str, list[float]] = {"router": [], "baseline": []}
    for i in range(2 * args.blocks):
        kind = order[i % 4]
        if kind == "router":
            times[kind].append(await router_block(router, sink, per_block, args.burst))
        else:
            times[kind].append(await baseline_block(per_block, args.burst))
    rates = {k: [per_block / t for t in v] for k, v in times.items()}
    ratios = [a / b for a, b in zip(rates["router"], rates["baseline"], strict=True)]
    total = {k: per_block * len(v) / sum(v) for k, v in times.items()}
    stats = router.route_stats("bench")
    last = sink.last[-1][1] if sink.last else None
    return {
        "params": {
            "n": per_block * args.blocks,
            "blocks": args.blocks,
            "burst": args.burst,
            "path": "general" if args.general_path else "inlined",
        },
        "router_per_s": r(total["router"], 0),
        "router_per_s_best_block": r(max(rates["router"]), 0),
        "router_ns_per_datapoint": r(1e9 / total["router"], 1),
        "baseline_per_s": r(total["baseline"], 0),
        "baseline_ns_per_datapoint": r(1e9 / total["baseline"], 1),
        "block_ratios": [r(x) for x in ratios],
        "median_ratio": r(statistics.median(ratios), 4),
        "route_stats": {k: stats[k] for k in ("matched", "passed", "filtered", "errors")},
        "last_delivered": None if last is None else {"value": last.value, "path": last.path},
    }


def lookup_sets(count: int, distinct: int, total: int) -> tuple[PatternIndex[int], list[str]]:
    """An index of ``count`` wildcard routes and ``total`` lookups over ``distinct`` addresses."""
    index: PatternIndex[int] = PatternIndex()
    for i in range(count):
        shape = i % 3
        if shape == 0:
            text = f"dev{i}.*.temp"
        elif shape == 1:
            text = f"dev{i}.**"
        else:
            text = f"mqtt.site/dev{i}/+/value"
        index.add(parse_pattern(text), i)
    addresses = []
    for j in range(distinct):
        i = (j * 7919) % count
        shape = i % 3
        if shape == 0:
            addresses.append(f"dev{i}.room{j}.temp")
        elif shape == 1:
            addresses.append(f"dev{i}.a.b{j}")
        else:
            addresses.append(f"mqtt.site/dev{i}/s{j}/value")
    # Fresh string objects each round, as addresses built from a report would be.
    rounds = max(1, total // distinct)
    return index, [a.encode().decode() for _ in range(rounds) for a in addresses]


def time_lookups(index: PatternIndex[int], addresses: list[str]) -> float:
    match = index.match
    gc.collect()
    t = time.perf_counter()
    for address in addresses:
        if len(match(address)) != 1:
            raise RuntimeError(f"{address} should match one route")
    return (time.perf_counter() - t) / len(addresses)


async def cached_route_data(count: int, lookups: int) -> float:
    router = Router()
    sink = Sink()
    router.add_target("sink", sink)
    routes = [{"id": f"r{i}", "from": f"dev{i}.*.temp", "to": "sink.x"} for i in range(count)]
    router.load_routes({"routes": routes})
    # 2,000 distinct addresses either way, each matching one route.
    addresses = [(f"dev{(j * 7919) % count}", f"room{j}.temp") for j in range(2000)]
    route_data = router.route_data
    for source, tag in addresses:  # fill the plan cache
        route_data(source, tag, 1)
    await router.drain()
    gc.collect()
    t = time.perf_counter()
    done = 0
    while done < lookups:
        for source, tag in addresses:
            route_data(source, tag, 1)
        done += len(addresses)
        await asyncio.sleep(0)
    await router.drain()
    return (time.perf_counter() - t) / done


def compare_lookups(
    small: tuple[PatternIndex[int], list[str]], big: tuple[PatternIndex[int], list[str]]
) -> dict[str, Any]:
    time_lookups(*small)
    time_lookups(*big)
    per: dict[str, list[float]] = {"10": [], "10000": []}
    order = ["10", "10000", "10000", "10"]
    for i in range(24):
        kind = order[i % 4]
        per[kind].append(time_lookups(*(small if kind == "10" else big)))
    ratios = [b / a for a, b in zip(per["10"], per["10000"], strict=True)]
    return {
        "ns": {k: r(statistics.median(v) * 1e9, 1) for k, v in per.items()},
        "block_ratios": [r(x) for x in ratios],
        "median_ratio": r(statistics.median(ratios), 4),
    }


async def lookup(args: argparse.Namespace) -> dict[str, Any]:
    hot = compare_lookups(
        lookup_sets(10, args.hot, args.lookups), lookup_sets(10_000, args.hot, args.lookups)
    )
    uniform = compare_lookups(
        lookup_sets(10, args.lookups, args.lookups),
        lookup_sets(10_000, args.lookups, args.lookups),
    )
    cached = {
        "10": await cached_route_data(10, args.lookups),
        "10000": await cached_route_data(10_000, args.lookups),
    }
    return {
        "index_hot": {"distinct_addresses": args.hot, **hot},
        "index_uniform": {"distinct_addresses": args.lookups, **uniform},
        "cached_route_data_ns": {k: r(v * 1e9, 1) for k, v in cached.items()},
        "cached_route_data_ratio": r(cached["10000"] / cached["10"], 4),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    log(f"throughput: {args.n} datapoints of each kind in {args.blocks} blocks")
    tp = await throughput(args)
    log(
        f"router {tp['router_per_s']:.0f}/s, baseline {tp['baseline_per_s']:.0f}/s, "
        f"median ratio {tp['median_ratio']}"
    )
    log("wildcard lookup: 10 vs 10,000 routes")
    lk = await lookup(args)
    log(
        f"index lookup hot {lk['index_hot']['ns']} ns (ratio {lk['index_hot']['median_ratio']}), "
        f"uniform {lk['index_uniform']['ns']} ns (ratio {lk['index_uniform']['median_ratio']})"
    )
    result: dict[str, Any] = {
        "benchmark": "router",
        "threads": 1,
        "throughput": tp,
        "lookup": lk,
        "targets": {
            "throughput_at_least_500k_per_s": check(tp["router_per_s"], ">=", 500_000),
            "ratio_to_baseline_at_least_0.2": check(tp["median_ratio"], ">=", 0.2),
            "hot_lookup_10k_routes_within_1.3x_of_10": check(
                lk["index_hot"]["median_ratio"], "<=", 1.3
            ),
        },
    }
    result["pass"] = all(t["pass"] for t in result["targets"].values())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    return run_benchmark("router", lambda: run(args), max_runtime=None, nofile=False)


if __name__ == "__main__":
    sys.exit(main())
