"""Fleet benchmark: Modbus TCP devices polled and mirrored to MQTT, edgelink vs a bare baseline.

``--devices`` simulated inverters (``edgelink.sim modbus``, as many
subprocesses as ``--sim-per-process`` asks, so the simulator is not the
bottleneck) each serve ``--registers`` input registers. Two measured sides,
each in its own process, one after the other against the same simulators:

- **edgelink**: the real gateway (`edgelink.service.Gateway`) from a temp
  config folder: one ``modbus_tcp`` connection per device polling ``ir:0`` ..
  (one coalesced request) every ``--interval`` s, and the MQTT bridge
  publishing every datapoint to ``fleet/<device>/<tag>`` through one ``mqtt``
  connection (QoS 0, retained), with the service's defaults (fleet gc policy);
- **baseline**: a minimal hand-written poller: one pymodbus
  ``AsyncModbusTcpClient`` per device, one read of the block per device per
  interval, and for each value one paho publish (its own network thread) of
  ``{"value", "ts", "quality"}`` to the same topic, QoS 0, retained; no
  supervision, no reconnects, no buffering.

Datapoints are counted where they arrive: at a private mosquitto (free port)
by a raw-socket subscriber to ``fleet/#`` in its own process. With
``--no-bridge`` there is no broker: both sides only poll and decode, and
count datapoints in-process (the poll path's own cost).

Per side, over ``--duration`` s after ``--warmup`` s: CPU % of the measured
process (user + system, all threads, % of one core), CPU per delivered
datapoint (µs) and the ratio edgelink / baseline, delivered % of what the
interval asks for, RSS at the start and the end of the window and its
least-squares slope (MB/min), loop lag p99 (a 100 ms sleep sampler in the
measured loop).

``--search`` raises the tags/s (registers first, up to 100, then devices)
by ``--step-factor`` per step, edgelink only, until a step uses more than
``--max-cores`` cores or delivers less than 99 %; the highest passing step
is reported.

    .venv/bin/python bench/fleet.py --devices 500 --registers 10 --interval 1
    .venv/bin/python bench/fleet.py --devices 500 --registers 10 --interval 1 --no-bridge
    .venv/bin/python bench/fleet.py --devices 500 --duration 600 --sides edgelink
    .venv/bin/python bench/fleet.py --devices 500 --search
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from _common import (
    LOOPBACK,
    ChildProcess,
    LoopLag,
    SimProcess,
    check,
    cpu_seconds,
    log,
    mqtt_packet,
    mqtt_utf8,
    r,
    raw_mqtt_connect,
    run_benchmark,
    slope_per_min,
    split_mqtt_packets,
    start_modbus_sims,
    stop_sims,
)

BASE = "fleet"
SIDES = ("baseline", "edgelink")
#: Registers the simulator serves per device (ir:0 .. ir:99).
MAX_REGISTERS = 100
#: py-spy, for ``--profile``: beside this Python, else on PATH.
PY_SPY = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or "py-spy"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=500, help="simulated devices (500)")
    p.add_argument("--registers", type=int, default=10, help="registers polled per device (10)")
    p.add_argument("--interval", type=float, default=1.0, help="poll interval, s (1)")
    p.add_argument("--warmup", type=float, default=10.0, help="s after ready before measuring")
    p.add_argument("--duration", type=float, default=30.0, help="s measured per side (30)")
    p.add_argument("--no-bridge", action="store_true", help="no broker: polling only")
    p.add_argument("--sides", default="baseline,edgelink", help="which sides, in order")
    p.add_argument("--sim-per-process", type=int, default=250, help="devices per simulator")
    p.add_argument("--search", action="store_true", help="raise tags/s until a limit is hit")
    p.add_argument("--step-factor", type=float, default=1.5, help="search: tags/s growth")
    p.add_argument("--max-cores", type=float, default=1.5, help="search: CPU limit, cores")
    p.add_argument("--max-devices", type=int, default=4000, help="search: most devices")
    p.add_argument("--max-runtime", type=float, default=3600.0, help="hard time limit, s")
    p.add_argument(
        "--profile", metavar="FILE", help="py-spy the edgelink side's window into FILE (raw)"
    )
    p.add_argument("--role", choices=("counter", *SIDES), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        return args
    if not 1 <= args.registers <= MAX_REGISTERS:
        p.error(f"--registers must be 1..{MAX_REGISTERS} (the simulator's input registers)")
    if args.devices < 1 or args.interval <= 0 or args.duration <= 0:
        p.error("need --devices >= 1, --interval > 0 and --duration > 0")
    args.side_list = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not args.side_list or any(s not in SIDES for s in args.side_list):
        p.error(f"--sides: a comma-separated list of {', '.join(SIDES)}")
    return args


def answer(line: str) -> None:
    """A child's answer to the orchestrator: one line on stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------- the counter


def run_counter(port: int) -> int:
    """Child: subscribe to ``fleet/#`` raw and count PUBLISH frames.

    ``count`` answers ``<publishes> <subscribed 0|1>``.
    """
    sock = raw_mqtt_connect(port, f"fleet-counter-{os.getpid()}")
    sock.sendall(mqtt_packet(0x82, struct.pack("!H", 1) + mqtt_utf8(f"{BASE}/#".encode()) + b"\0"))
    sock.settimeout(None)
    buf = bytearray()
    count = 0
    subscribed = False
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([sock, stdin], [], [], 5.0)
        if stdin in ready:
            line = os.read(stdin, 4096).decode()
            if not line:
                return 0
            for cmd in line.split("\n"):
                if cmd == "count":
                    answer(f"{count} {int(subscribed)}")
        if sock in ready:
            data = sock.recv(1 << 20)
            if not data:
                return 1
            buf += data
            packets, consumed = split_mqtt_packets(buf)
            for kind, _, _ in packets:
                if kind & 0xF0 == 0x30:
                    count += 1
                elif kind == 0x90:
                    subscribed = True
            del buf[:consumed]


# ------------------------------------------------------ the measured sides


async def serve_commands(stats: Any) -> None:
    """Answer the orchestrator's stdin lines until it closes stdin.

    ``stats`` answers with ``stats()`` as JSON; ``lag`` restarts the loop-lag sampler.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    lag = LoopLag()
    lag.start()
    while line := await reader.readline():
        cmd = line.decode().strip()
        if cmd == "stats":
            answer(json.dumps(stats()))
        elif cmd == "lag":
            answer(json.dumps(await lag.stop()))
            lag = LoopLag()
            lag.start()
    await lag.stop()


def write_folder(folder: Path, spec: dict[str, Any]) -> None:
    """The gateway's config folder for ``spec`` (ports, registers, interval, broker port)."""
    tags = [f"ir:{i}" for i in range(spec["registers"])]
    connections: dict[str, Any] = {
        f"inv{i:04d}": {
            "type": "modbus_tcp",
            "config": {"host": LOOPBACK, "port": port},
            "poll": [{"tags": tags, "interval": spec["interval"]}],
        }
        for i, port in enumerate(spec["ports"])
    }
    service: dict[str, Any] = {"api": {"token": "fleet-bench-token-0123456789"}}
    if spec["broker_port"]:
        connections["broker"] = {
            "type": "mqtt",
            "config": {"host": LOOPBACK, "port": spec["broker_port"], "qos": 0},
            "settings": {"spam_max_pps": None},
        }
        service["bridge"] = {"connection": "broker", "base_topic": BASE, "qos": 0}
    settings = {"reconnect_max_attempts": None}
    (folder / "connections.json").write_text(
        json.dumps({"settings": settings, "connections": connections})
    )
    (folder / "edgelink.json").write_text(json.dumps(service))


def run_edgelink(spec: dict[str, Any]) -> int:
    """Child: the gateway from a temp config folder, as ``edgelink run`` builds it."""
    from edgelink.service.gateway import Gateway

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
            folder = Path(tmp)
            write_folder(folder, spec)
            gateway = Gateway(folder, watch=False)
            await gateway.start()
            points = 0

            def on_data(cid: str, tag: str, value: Any, quality: str, ts: float) -> None:
                nonlocal points
                points += 1

            gateway.manager.on_data(on_data)

            def stats() -> dict[str, Any]:
                connected = sum(
                    1
                    for cid, s in gateway.manager.get_status().items()
                    if cid != "broker" and s["status"] == "connected"
                )
                out: dict[str, Any] = {"connected": connected, "points": points}
                if gateway.bridge is not None:
                    out["bridge"] = gateway.bridge_stats()
                return out

            try:
                await serve_commands(stats)
            finally:
                await gateway.stop()

    logging.getLogger("edgelink").setLevel(logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(main())
    return 0


def run_baseline(spec: dict[str, Any]) -> int:
    """Child: pymodbus clients + paho, one read per device per interval, one publish per value."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from pymodbus.client import AsyncModbusTcpClient

    registers, interval = spec["registers"], spec["interval"]
    client: paho.Client | None = None
    if spec["broker_port"]:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-base-{os.getpid()}")
        client.connect(LOOPBACK, spec["broker_port"])
        client.loop_start()
    points = 0
    connected = 0

    async def device(index: int, port: int) -> None:
        nonlocal points, connected
        modbus = AsyncModbusTcpClient(LOOPBACK, port=port)
        await modbus.connect()
        connected += 1
        topics = [f"{BASE}/inv{index:04d}/ir:{i}" for i in range(registers)]
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            rr = await modbus.read_input_registers(0, count=registers, device_id=1)
            ts = time.time()
            if client is not None:
                for topic, value in zip(topics, rr.registers, strict=True):
                    body = json.dumps({"value": value, "ts": ts, "quality": "good"})
                    client.publish(topic, body, qos=0, retain=True)
            points += len(rr.registers)
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def main() -> None:
        tasks = [
            asyncio.get_running_loop().create_task(device(i, port))
            for i, port in enumerate(spec["ports"])
        ]
        try:
            await serve_commands(lambda: {"connected": connected, "points": points})
        finally:
            for task in tasks:
                task.cancel()

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(main())
    if client is not None:
        client.loop_stop()
    return 0


# ----------------------------------------------------------- orchestrator


class Counter:
    """Where delivered datapoints are counted: the broker's subscriber, or the side itself."""

    def __init__(self, child: ChildProcess | None) -> None:
        self.child = child

    def count(self, side: ChildProcess) -> int:
        if self.child is None:
            return int(json.loads(side.ask("stats", 30))["points"])
        return int(self.child.ask("count", 30).split()[0])


def measure(
    side: str,
    spec: dict[str, Any],
    counter: Counter,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Run one side for warm-up + duration; return its figures."""
    n, registers, interval = len(spec["ports"]), spec["registers"], spec["interval"]
    child = ChildProcess(__file__, side, "--spec", json.dumps(spec))
    try:
        ps = psutil.Process(child.pid)
        t0 = time.monotonic()
        while True:
            st = json.loads(child.ask("stats", 60))
            if st["connected"] >= n and st["points"] >= n * registers:
                break
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"{side}: {st['connected']} of {n} connected after 120 s")
            time.sleep(0.5)
        ready_s = time.monotonic() - t0
        log(f"{side}: {n} devices polled in {ready_s:.1f} s; warming up {args.warmup:g} s")
        time.sleep(args.warmup)
        child.ask("lag", 30)
        rss: list[tuple[float, float]] = []
        cpu0, got0 = cpu_seconds(ps), counter.count(child)
        polled0 = json.loads(child.ask("stats", 30))["points"]
        spy = None
        if args.profile and side == "edgelink":
            spy = subprocess.Popen(
                [
                    *(PY_SPY, "record", "--pid", str(child.pid)),
                    *("--duration", str(int(args.duration)), "--rate", "200", "--nonblocking"),
                    *("--format", "raw", "--output", args.profile),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        w0 = time.monotonic()
        end = w0 + args.duration
        while (now := time.monotonic()) < end:
            rss.append((now - w0, ps.memory_info().rss / 2**20))
            time.sleep(min(2.0, max(0.0, end - now)))
        cpu1, got1 = cpu_seconds(ps), counter.count(child)
        wall = time.monotonic() - w0
        last = json.loads(child.ask("stats", 30))
        rss.append((wall, ps.memory_info().rss / 2**20))
        lag = json.loads(child.ask("lag", 30))
        if spy is not None:
            spy.wait(timeout=60)
    finally:
        child.close()
    cpu = cpu1 - cpu0
    delivered = got1 - got0
    expected = n * registers * wall / interval
    out = {
        "ready_s": r(ready_s, 1),
        "cpu_pct": r(100 * cpu / wall, 1),
        "cpu_us_per_datapoint": r(1e6 * cpu / delivered, 2) if delivered else None,
        "delivered_per_s": r(delivered / wall, 1),
        "delivered_pct": r(100 * delivered / expected, 2),
        "polled_per_s": r((last["points"] - polled0) / wall, 1),
        "rss_start_mb": r(rss[0][1], 1),
        "rss_end_mb": r(rss[-1][1], 1),
        "rss_slope_mb_per_min": r(slope_per_min(rss), 3),
        "rss_slope_second_half_mb_per_min": r(
            slope_per_min([x for x in rss if x[0] >= wall / 2]), 3
        ),
        "loop_lag": lag,
    }
    if "bridge" in last:
        bridge = last["bridge"]
        out["bridge"] = {
            k: bridge.get(k) for k in ("live", "published", "buffered", "depth", "dropped")
        }
    log(f"{side}: {json.dumps(out)}")
    return out


async def ensure_sims(sims: list[SimProcess], ports: list[int], devices: int, per: int) -> None:
    """Grow the simulator fleet to at least ``devices`` devices."""
    if len(ports) < devices:
        more, more_ports = await start_modbus_sims(devices - len(ports), per)
        sims.extend(more)
        ports.extend(more_ports)


def ratio(x: float | None, y: float | None) -> float | None:
    return r(x / y, 3) if x is not None and y else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgelink.testing.mosquitto import MosquittoBroker

    sims: list[SimProcess] = []
    ports: list[int] = []
    broker = None if args.no_bridge else MosquittoBroker(extra_config="set_tcp_nodelay true")
    counter_child: ChildProcess | None = None
    try:
        await ensure_sims(sims, ports, args.devices, args.sim_per_process)
        sim_pids = [s.pid for s in sims]
        if broker is not None:
            broker.start()
            counter_child = ChildProcess(__file__, "counter", "--port", str(broker.port))
            while counter_child.ask("count", 30).split()[1] != "1":
                time.sleep(0.1)
        counter = Counter(counter_child)
        spec = {
            "registers": args.registers,
            "interval": args.interval,
            "broker_port": broker.port if broker is not None else 0,
        }
        params = {
            "devices": args.devices,
            "registers": args.registers,
            "interval": args.interval,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "bridge": broker is not None,
            "simulators": len(sims),
        }
        if args.search:
            return await search(args, spec, sims, ports, counter, params)
        spec["ports"] = ports[: args.devices]
        sim_cpu0 = sum(cpu_seconds(psutil.Process(p)) for p in sim_pids if p)
        t0 = time.monotonic()
        sides = {side: measure(side, spec, counter, args) for side in args.side_list}
        sim_cpu = sum(cpu_seconds(psutil.Process(p)) for p in sim_pids if p) - sim_cpu0
        sim_pct = r(100 * sim_cpu / (time.monotonic() - t0), 1)
    finally:
        if counter_child is not None:
            counter_child.close()
        if broker is not None:
            broker.stop()
        await stop_sims(sims)
    result: dict[str, Any] = {
        "benchmark": "fleet",
        "params": params,
        "sides": sides,
        "simulators_cpu_pct_avg": sim_pct,
    }
    if len(sides) == 2:
        el, base = sides["edgelink"], sides["baseline"]
        cpu_ratio = ratio(el["cpu_us_per_datapoint"], base["cpu_us_per_datapoint"])
        result["cpu_per_datapoint_ratio"] = cpu_ratio
        result["targets"] = {
            "cpu_per_datapoint_ratio": check(cpu_ratio, "<=", 1.5),
            "delivered_pct": check(el["delivered_pct"], ">=", 99.0),
        }
        result["pass"] = all(t["pass"] for t in result["targets"].values())
    return result


async def search(
    args: argparse.Namespace,
    spec: dict[str, Any],
    sims: list[SimProcess],
    ports: list[int],
    counter: Counter,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Raise tags/s step by step (edgelink only) until CPU or delivery fails."""
    rate = args.devices * args.registers / args.interval
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    while True:
        per_device = rate * args.interval / args.devices
        registers = min(MAX_REGISTERS, max(args.registers, math.ceil(per_device)))
        devices = math.ceil(rate * args.interval / registers)
        if devices > args.max_devices:
            break
        await ensure_sims(sims, ports, devices, args.sim_per_process)
        step_spec = {**spec, "registers": registers, "ports": ports[:devices]}
        got = measure("edgelink", step_spec, counter, args)
        tags = devices * registers / args.interval
        ok = got["cpu_pct"] <= 100 * args.max_cores and got["delivered_pct"] >= 99.0
        steps.append({"devices": devices, "registers": registers, "tags_per_s": tags, **got})
        log(f"search: {tags:,.0f} tags/s {'pass' if ok else 'FAIL'}")
        if not ok:
            break
        best = steps[-1]
        rate *= args.step_factor
    return {
        "benchmark": "fleet",
        "mode": "search",
        "params": {**params, "max_cores": args.max_cores},
        "highest_tags_per_s": best["tags_per_s"] if best else None,
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "counter":
        return run_counter(args.port)
    if args.role == "edgelink":
        return run_edgelink(json.loads(args.spec))
    if args.role == "baseline":
        return run_baseline(json.loads(args.spec))
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    return run_benchmark("fleet", lambda: run(args), max_runtime=args.max_runtime)


if __name__ == "__main__":
    sys.exit(main())
