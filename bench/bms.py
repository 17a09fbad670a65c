"""Benchmark: BMS parser cost per frame against a bare ``struct.unpack`` of the same fields.

For each protocol one poll's worth of frames, as the simulator's encoders
build them from a 16-cell battery with two sensors (Daly: the nine data ids,
14 frames; JBD: basic info and cell voltages, 2 frames; VE.Direct: the live
and the history block, 2 frames), is fed to the parser as one chunk:
reassembly, start/length/end checks, checksum, decoding to a `BmsReading`,
merging into the parser's state.

The baseline takes the same frames already cut apart (a list of bytes) and
only unpacks the same fields with a precompiled ``struct.Struct`` (Daly,
JBD) or splits the text fields and calls ``int`` (VE.Direct has no binary
layout to unpack): no search for the frame start, no checksum, no
validation, no reading object. Parser and baseline run in alternating
blocks (A B B A ...) in one process so load drift hits both; the ratio is
the median over blocks. A ratio says what verification and a typed reading
cost; the absolute µs per frame say what a gateway pays (a BMS polled once a
second sends 2 to 14 frames).

Target: below 50 µs per frame for every protocol (1,000 BMS polled every
second would cost well under one core); the ratio is reported, not a target.

    .venv/bin/python bench/bms.py --n 20000
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
from collections.abc import Callable
from typing import Any

from _common import check, log, r, run_benchmark

from edgelink.bms import get_parser
from edgelink.bms.daly import DATA_IDS
from edgelink.sim.bms import BmsModel, daly_answers, jbd_answer, victron_blocks

#: The VE.Direct fields the parser reads as numbers.
VEDIRECT_NUMBERS = frozenset((b"V", b"I", b"P", b"CE", b"SOC", b"TTG", b"T", b"AR", b"H4"))

DALY_PACK = struct.Struct(">HHHH")
DALY_CELLS = struct.Struct(">BHHHx")
DALY_TEMPS = struct.Struct(">B7B")
DALY_MOS = struct.Struct(">BBBBI")
DALY_STATUS = struct.Struct(">BBBBBHx")
DALY_MINMAX = struct.Struct(">HBHBxx")
DALY_ALARMS = struct.Struct(">8B")


def frames(kind: str, model: BmsModel) -> list[bytes]:
    """Return one poll's frames of ``kind``."""
    if kind == "daly":
        return [f for data_id in DATA_IDS for f in daly_answers(model, data_id)]
    if kind == "jbd":
        return [jbd_answer(model, 0x03) or b"", jbd_answer(model, 0x04) or b""]
    return victron_blocks(model)


def baseline(kind: str, model: BmsModel) -> Callable[[list[bytes]], int]:
    """Return the bare unpacking of ``kind``'s fields from pre-cut frames."""
    if kind == "daly":
        by_id = {
            0x90: DALY_PACK,
            0x91: DALY_MINMAX,
            0x92: DALY_ALARMS,
            0x93: DALY_MOS,
            0x94: DALY_STATUS,
            0x95: DALY_CELLS,
            0x96: DALY_TEMPS,
            0x97: DALY_ALARMS,
            0x98: DALY_ALARMS,
        }

        def run_daly(batch: list[bytes]) -> int:
            n = 0
            for f in batch:
                n += len(by_id[f[2]].unpack_from(f, 4))
            return n

        return run_daly
    if kind == "jbd":
        ntc = len(model.temperatures)
        basic = struct.Struct(">HhHHHHHHHBBBBB" + "H" * ntc)
        cells = struct.Struct(">" + "H" * model.cells)

        def run_jbd(batch: list[bytes]) -> int:
            return len(basic.unpack_from(batch[0], 4)) + len(cells.unpack_from(batch[1], 4))

        return run_jbd

    def run_victron(batch: list[bytes]) -> int:
        n = 0
        for block in batch:
            for line in block[2:-11].split(b"\r\n"):
                label, _, value = line.partition(b"\t")
                if label in VEDIRECT_NUMBERS:
                    n += int(value)
        return n

    return run_victron


def measure(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    model = BmsModel(cells=16, temperatures=(21.0, -4.0), animate=False)
    results: dict[str, Any] = {}
    ok = True
    for kind in ("daly", "jbd", "victron"):
        batch = frames(kind, model)
        chunk = b"".join(batch)
        parser = get_parser(kind)
        if kind == "victron":
            parser.feed(chunk)  # the first block only brings the parser in step
        assert all(not isinstance(i, Exception) for i in parser.feed(chunk))
        bare = baseline(kind, model)
        reps = max(1, args.n // len(batch))
        ratios, parser_us, bare_us = [], [], []
        for block in range(args.blocks):
            order = (0, 1) if block % 2 == 0 else (1, 0)
            times: dict[int, float] = {}
            for which in order:
                if which == 0:
                    times[0] = measure(lambda: parser.feed(chunk), reps)  # noqa: B023
                else:
                    times[1] = measure(lambda: bare(batch), reps)  # noqa: B023
            per_parser = times[0] / (reps * len(batch)) * 1e6
            per_bare = times[1] / (reps * len(batch)) * 1e6
            parser_us.append(per_parser)
            bare_us.append(per_bare)
            ratios.append(per_parser / per_bare)
        target = check(r(statistics.median(parser_us), 2), "<", 50.0)
        ok = ok and target["pass"]
        results[kind] = {
            "frames_per_poll": len(batch),
            "bytes_per_poll": len(chunk),
            "parser_us_per_frame": r(statistics.median(parser_us), 2),
            "struct_us_per_frame": r(statistics.median(bare_us), 3),
            "ratio": r(statistics.median(ratios), 1),
            "target_parser_us": target,
        }
        log(f"{kind}: {results[kind]}")
    return {"benchmark": "bms", "n": args.n, "blocks": args.blocks, **results, "pass": ok}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="frames per block (default 20000)")
    ap.add_argument("--blocks", type=int, default=8, help="alternating blocks (default 8)")
    args = ap.parse_args()

    async def run() -> dict[str, Any]:
        return await bench(args)

    return run_benchmark("bms", run, nofile=False)


if __name__ == "__main__":
    raise SystemExit(main())
