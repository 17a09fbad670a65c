"""The web UI's cost to the gateway: 5,000 datapoints/s with 0 and with 3 browsers on /data.

One gateway runs in this process with the UI mounted; a load task routes
5,000 datapoints a second (50 devices x 10 tags, in 10-ms batches) into its
router, as drivers would. Phases alternate in the same run: no browser, then
3 headless chromium sessions (Debian's chromium, separate processes) logged
in on ``/data`` with the load's branch open (its points' live values on
screen) and one point's history chart shown. Per phase: the gateway
process's CPU (its own CPU time; the browsers and playwright's driver are
other processes) and the event loop's lag (how late a 10-ms sleep wakes up).

Targets (issue 11): CPU with browsers <= 1.15x without, and loop lag p99 <=
20 ms with browsers.

    PYTHONPATH=src .venv/bin/python bench/ui.py --seconds 10 --blocks 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import check, log, median, percentile, r, run_benchmark

TOKEN = "bench-ui-token-0123456789abcdef"
DEVICES = 50
TAGS = 10


async def load(router: Any, rate: int, stop: asyncio.Event, sent: list[int]) -> None:
    """Route ``rate`` datapoints a second in 10-ms batches."""
    per_batch = rate // 100
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    n = 0
    while not stop.is_set():
        for _ in range(per_batch):
            d, t = divmod(n % (DEVICES * TAGS), TAGS)
            router.route_data("load", f"d{d:02d}_t{t}", float(n % 1000))
            n += 1
        sent[0] = n
        next_at += 0.01
        await asyncio.sleep(max(0.0, next_at - loop.time()))


async def lag_sampler(samples: list[float], stop: asyncio.Event) -> None:
    """Record how late each 10-ms sleep wakes up, in seconds."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t0 = loop.time()
        await asyncio.sleep(0.01)
        samples.append(max(0.0, loop.time() - t0 - 0.01))


#: The browsers run in a child process: playwright's client would otherwise
#: take its share of this process's CPU and be counted as the gateway's.
BROWSERS = """
import asyncio, shutil, sys
from playwright.async_api import async_playwright

async def main(base, token, count):
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=shutil.which("chromium"))
        for _ in range(count):
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            await page.goto(base + "/login")
            await page.get_by_label("Token").fill(token)
            await page.get_by_role("button", name="Log in").click()
            await page.wait_for_url(base + "/", timeout=20000)
            await page.goto(base + "/data")
            header = page.locator(".q-tree__node-header")
            await header.filter(has=page.get_by_text("load", exact=True)).click(timeout=20000)
            point = page.get_by_test_id("point-load.d00_t0")
            await point.wait_for(timeout=20000)
            await point.click()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await browser.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def open_browsers(base: str, count: int) -> asyncio.subprocess.Process:
    """Start ``count`` logged-in sessions on /data in a child process; return once ready."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BROWSERS, base, TOKEN, str(count),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 90)
    if line.strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"the browsers did not start: {line!r}")
    return proc


async def close_browsers(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def phase(seconds: float, sent: list[int]) -> dict[str, Any]:
    samples: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.get_running_loop().create_task(lag_sampler(samples, stop))
    n0, cpu0, t0 = sent[0], time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1, n1 = time.process_time(), time.monotonic(), sent[0]
    stop.set()
    await sampler
    return {
        "cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
        "dp_per_s": (n1 - n0) / (t1 - t0),
        "lag_p99_ms": (percentile(samples, 0.99) or 0.0) * 1000,
        "lag_max_ms": max(samples, default=0.0) * 1000,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from edgelink.api.server import ApiServer
    from edgelink.service.gateway import Gateway
    from edgelink.ui import mount_ui

    folder = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    (folder / "connections.json").write_text(json.dumps({"connections": {}}))
    (folder / "edgelink.json").write_text(
        json.dumps({"api": {"token": TOKEN}, "storage": {"path": "logs/system.db"}})
    )
    gw = Gateway(folder, watch=False)
    await gw.start()
    await ApiServer(gw, port=0, mounts=[mount_ui]).start()
    assert gw.api_address is not None
    host, port = gw.api_address
    base = f"http://{host}:{port}"
    stop = asyncio.Event()
    sent = [0]
    loader = asyncio.get_running_loop().create_task(load(gw.manager.router, args.rate, stop, sent))
    rows: list[dict[str, Any]] = []
    try:
        await asyncio.sleep(2.0)  # the load's addresses exist; the loop is warm
        for block in range(args.blocks):
            row = {"block": block, "browsers": 0, **await phase(args.seconds, sent)}
            log(f"no browser: {row}")
            rows.append(row)
            browsers = await open_browsers(base, args.browsers)
            await asyncio.sleep(2.0)  # the pages settle (first full render)
            row = {"block": block, "browsers": args.browsers, **await phase(args.seconds, sent)}
            log(f"{args.browsers} browsers: {row}")
            rows.append(row)
            await close_browsers(browsers)
            await asyncio.sleep(1.0)
    finally:
        stop.set()
        await loader
        await gw.stop()
        shutil.rmtree(folder, ignore_errors=True)
    without = [x for x in rows if x["browsers"] == 0]
    with_b = [x for x in rows if x["browsers"] > 0]
    cpu0 = median([x["cpu_pct"] for x in without])
    cpu3 = median([x["cpu_pct"] for x in with_b])
    ratio = cpu3 / cpu0 if cpu0 and cpu3 is not None else None
    lag99 = max(x["lag_p99_ms"] for x in with_b)
    checks = {
        "cpu_ratio": check(ratio, "<=", 1.15),
        "lag_p99_ms_with_browsers": check(lag99, "<=", 20.0),
    }
    return {
        "benchmark": "ui",
        "rate": args.rate,
        "browsers": args.browsers,
        "seconds": args.seconds,
        "cpu_pct_without": r(cpu0, 1),
        "cpu_pct_with": r(cpu3, 1),
        "cpu_ratio": r(ratio, 3),
        "lag_p99_ms_without": r(max(x["lag_p99_ms"] for x in without), 2),
        "lag_p99_ms_with": r(lag99, 2),
        "phases": [{k: r(v, 2) if isinstance(v, float) else v for k, v in x.items()} for x in rows],
        "checks": checks,
        "pass": all(c["pass"] for c in checks.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=5000, help="datapoints per second")
    parser.add_argument("--browsers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--blocks", type=int, default=2, help="no-browser/browser pairs")
    args = parser.parse_args()
    return run_benchmark("ui", lambda: bench(args), max_runtime=600)


if __name__ == "__main__":
    sys.exit(main())
