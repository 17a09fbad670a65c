"""ZKTeco benchmark: reading a terminal's tables with the ``zkteco`` driver, against pyzk.

One simulated terminal (`edgelink.sim.zkteco.ZkSimulator`, in this process)
with ``--users`` users and ``--records`` attendance records. Per round, the
same work pyzk's ``get_attendance()`` does (sizes, users, attendance):

- edgelink: ``get_users()`` then ``get_attendance()`` on a connected driver
- pyzk (the baseline, if importable; ``--pyzk-path`` adds its folder to
  ``sys.path``): ``conn.get_attendance()`` on a connected ``ZK``, in a thread
  so the simulator's loop keeps serving

Rounds alternate (edgelink, pyzk, pyzk, edgelink, ...). Figures: median
seconds per round of each, their ratio, and the peak Python memory
(tracemalloc) of streaming the attendance with ``iter_attendance()`` against
collecting it with ``get_attendance()``.

Targets: edgelink / pyzk median time at most 1.0; streaming peak below a
tenth of the list's.

    .venv/bin/python bench/zkteco_tables.py --pyzk-path /tmp/pyzk
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import tracemalloc
from typing import Any

from _common import check, log, r, run_benchmark

from edgelink.drivers.zkteco import ZktecoConnection
from edgelink.testing import ZkDevice, ZkSimulator

KEY = 1234


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=3000, help="users (default 3000)")
    p.add_argument("--records", type=int, default=30000, help="attendance records (30000)")
    p.add_argument("--rounds", type=int, default=10, help="rounds of each client (default 10)")
    p.add_argument("--pyzk-path", default=None, help="a folder holding pyzk's 'zk' package")
    return p.parse_args(argv)


def pyzk_client(port: int) -> Any:
    """A connected pyzk client, or None if pyzk cannot be imported."""
    try:
        from zk import ZK  # type: ignore[import-not-found]
    except ImportError:
        return None
    return ZK("127.0.0.1", port=port, timeout=10, password=KEY, ommit_ping=True).connect()


async def stream_peak(conn: ZktecoConnection) -> tuple[int, int]:
    """Peak traced bytes of iterating the attendance, and of collecting it as a list."""
    tracemalloc.start()
    count = 0
    async for _ in conn.iter_attendance():
        count += 1
    stream = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    records = await conn.get_attendance()
    listed = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == len(records)
    return stream, listed


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.pyzk_path:
        sys.path.insert(0, args.pyzk_path)
    device = ZkDevice(comm_key=KEY, user_count=args.users, record_count=args.records)
    async with ZkSimulator(device=device) as sim:
        conn = ZktecoConnection(
            "door", {"host": "127.0.0.1", "port": sim.port, "password": KEY, "timeout": 10}
        )
        await conn.connect()
        baseline = await asyncio.to_thread(pyzk_client, sim.port)
        ours: list[float] = []
        theirs: list[float] = []
        try:
            for i in range(args.rounds):
                order = ("edgelink", "pyzk") if i % 2 == 0 else ("pyzk", "edgelink")
                for kind in order:
                    started = time.perf_counter()
                    if kind == "edgelink":
                        await conn.get_users()
                        got = len(await conn.get_attendance())
                        ours.append(time.perf_counter() - started)
                    elif baseline is not None:
                        got = len(await asyncio.to_thread(baseline.get_attendance))
                        theirs.append(time.perf_counter() - started)
                    else:
                        continue
                    assert got == args.records, (kind, got)
                log(f"round {i + 1}/{args.rounds}")
            stream, listed = await stream_peak(conn)
        finally:
            await conn.disconnect()
            if baseline is not None:
                await asyncio.to_thread(baseline.disconnect)
    ours_med = statistics.median(ours)
    theirs_med = statistics.median(theirs) if theirs else None
    ratio = ours_med / theirs_med if theirs_med else None
    targets = {"stream_peak_ratio": check(r(stream / listed), "<", 0.1)}
    if ratio is not None:
        targets["time_ratio_vs_pyzk"] = check(r(ratio), "<=", 1.0)
    return {
        "benchmark": "zkteco_tables",
        "users": args.users,
        "records": args.records,
        "rounds": args.rounds,
        "edgelink_median_s": r(ours_med, 4),
        "pyzk_median_s": r(theirs_med, 4),
        "stream_peak_bytes": stream,
        "list_peak_bytes": listed,
        "targets": targets,
        "pass": all(t["pass"] for t in targets.values()),
    }


def main() -> int:
    args = parse_args()
    return run_benchmark("zkteco_tables", lambda: bench(args), max_runtime=600)


if __name__ == "__main__":
    raise SystemExit(main())
