"""Benchmark: datapoints -> the MQTT bridge -> a private mosquitto, against a bare paho publisher.

One private mosquitto on a free loopback port. Child processes, one broker:

- the **counter**: a paho subscriber to ``up/#`` that counts messages per
  second level (``up/el/...``, ``up/paho/...``) and prints the counts;
- **edgelink** (measured): a `ConnectionManager` with one ``mqtt`` connection
  and an `MqttBridge` (base topic ``up/el``, QoS ``--qos``, SQLite buffer in a
  temporary file); datapoints are injected into the router's data space as a
  driver would (``router.route_data(source, tag, value)``), ``--topics``
  addresses (``dev<N>.r<M>``, 10 registers a device), paced on a 10 ms tick;
- **paho** (the baseline): a bare paho client (``loop_start`` thread) doing
  one ``publish`` per value to ``up/paho/dev<N>/r<M>``, same rate, same
  pacing, same JSON payload shape.

Each rate runs paho, then edgelink, each in a fresh process: a warm-up, then a
``--seconds`` window over which the CPU (user + system, all threads) and RSS
are measured. Delivered % is what the counter saw over what was injected.
CPU ratio = edgelink's CPU per delivered datapoint / paho's.

Outage run (``--outage S``): edgelink at the first rate, QoS 1; live for
2 s, the broker stopped for S s while datapoints keep coming (they go to
memory, then SQLite), started again; the drain rate (messages published from
SQLite per second of the drain, with new datapoints still arriving) is
compared with the live rate.

``--mode group``: edgelink's bridge runs with ``bridge.mode: "group"``: each
device's 10 registers are injected with one timestamp a tick (one poll
round) and go out as one message to ``up/el/dev<N>``; the counter counts the
values in it, so delivered and CPU per datapoint compare with the default
mode, and ``messages`` / ``messages_per_s`` show the messages that carried them.

    .venv/bin/python bench/bridge_uplink.py --rates 5000 20000 --seconds 10 --outage 5
    .venv/bin/python bench/bridge_uplink.py --rates 5000 20000 --seconds 10 --outage 0 --mode group
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import check, emit, machine_info, quiet_logging, r

LOOPBACK = "127.0.0.1"
TICK = 0.01


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# ------------------------------------------------------------------ children


def run_counter(port: int) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    counts: dict[str, int] = {}
    lock = threading.Lock()
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-uplink-counter", clean_session=False
    )
    client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]

    def on_connect(c: paho.Client, *_: Any) -> None:
        c.subscribe("up/#", qos=1)

    def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        levels = msg.topic.split("/")
        if len(levels) == 4:
            points = 1
        elif len(levels) == 3 and levels[2] != "status":
            points = len(json.loads(msg.payload)["values"])  # group mode: up/el/dev<N>
        else:
            return  # up/el/status
        key = levels[1]
        with lock:
            counts[key] = counts.get(key, 0) + points
            counts[key + "_msgs"] = counts.get(key + "_msgs", 0) + 1

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(LOOPBACK, port)
    client.loop_start()
    while True:
        time.sleep(0.2)
        with lock:
            say(json.dumps(counts))


def _address(n: int) -> tuple[str, str]:
    return f"dev{n // 10}", f"r{n % 10}"


def run_paho(port: int, rate: int, topics: int, warmup: float, seconds: float, qos: int) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect(LOOPBACK, port)
    client.loop_start()
    names = [f"up/paho/{d}/{t}" for d, t in map(_address, range(topics))]
    per_tick = max(1, round(rate * TICK))
    sent = n = 0
    start = time.monotonic()
    tick = start
    marks: dict[str, float] = {}
    while True:
        now = time.monotonic()
        if "cpu0" not in marks and now - start >= warmup:
            marks.update(cpu0=cpu_s(), t0=now, sent0=sent, rss0=rss_mb())
        if now - start >= warmup + seconds:
            marks.update(cpu1=cpu_s(), t1=now, sent1=sent, rss1=rss_mb())
            break
        for _ in range(per_tick):
            body = {"value": n, "ts": time.time(), "quality": "good"}
            client.publish(names[n % topics], json.dumps(body), qos, True)
            n += 1
            sent += 1
        tick += TICK
        time.sleep(max(0.0, tick - time.monotonic()))
    time.sleep(0.5)
    client.loop_stop()
    say(json.dumps({"sent": sent, **marks}))


def run_edgelink(
    port: int,
    rate: int,
    topics: int,
    warmup: float,
    seconds: float,
    qos: int,
    outage: bool,
    max_inflight: int,
    mode: str,
) -> None:
    from edgelink import ConnectionManager
    from edgelink.bridge.mqtt import MqttBridge
    from edgelink.bridge.settings import BridgeSettings
    from edgelink.store import Database, UplinkBuffer

    quiet_logging()

    async def main() -> None:
        manager = ConnectionManager()
        manager.add_connection(
            "broker",
            "mqtt",
            {"host": LOOPBACK, "port": port, "qos": qos, "max_inflight": max_inflight},
            settings={"spam_max_pps": None, "reconnect_initial_delay": 0.05},
        )
        settings = BridgeSettings.model_validate(
            {"connection": "broker", "base_topic": "up/el", "qos": qos, "mode": mode}
        )
        group = mode == "group"
        folder = tempfile.mkdtemp(prefix="edgelink-bench-")
        db = Database(Path(folder) / "uplink.db")
        async with manager:
            await manager.wait_for_state("broker", "connected", timeout=10)
            bridge = MqttBridge(manager, manager.router, settings, UplinkBuffer(db))
            await bridge.start()
            router = manager.router
            addresses = [_address(n) for n in range(topics)]
            per_tick = max(1, round(rate * TICK))
            loop = asyncio.get_running_loop()
            sent = n = 0
            start = tick = loop.time()
            marks: dict[str, Any] = {}
            phase = "live"
            outage_at = warmup + 2.0
            end = warmup + seconds
            drain: dict[str, float] = {}
            while True:
                now = loop.time()
                if "cpu0" not in marks and now - start >= warmup:
                    marks.update(cpu0=cpu_s(), t0=now, sent0=sent, rss0=rss_mb())
                if outage:
                    if phase == "live" and now - start >= outage_at:
                        phase = "stopping"
                        say("STOP")
                    elif phase == "stopping" and manager.get_state("broker") != "connected":
                        phase = "away"
                    elif phase == "away" and manager.get_state("broker") == "connected":
                        phase = "drain"
                        drain.update(t=now, flushed=bridge.flushed, depth=bridge.depth)
                    elif phase == "drain" and bridge.stats()["live"]:
                        phase = "done"
                        drain.update(
                            seconds=now - drain["t"], flushed=bridge.flushed - drain["flushed"]
                        )
                    if phase == "done":
                        break
                    assert now - start < 120, "the drain never ended"
                elif now - start >= end:
                    marks.update(cpu1=cpu_s(), t1=now, sent1=sent, rss1=rss_mb())
                    break
                if group:
                    # A poll round: each device's registers with one timestamp.
                    ts = time.time()
                    for _ in range(per_tick):
                        source, tag = addresses[n % topics]
                        router.route_data(source, tag, n, ts=ts)
                        n += 1
                        sent += 1
                else:
                    for _ in range(per_tick):
                        source, tag = addresses[n % topics]
                        router.route_data(source, tag, n)
                        n += 1
                        sent += 1
                tick += TICK
                await asyncio.sleep(max(0.0, tick - loop.time()))
            await asyncio.sleep(0.5)
            stats = bridge.stats()
            await bridge.stop()
            await db.close()
            say(json.dumps({"sent": sent, **marks, "drain": drain, "bridge": stats}))

    asyncio.run(main())


# ------------------------------------------------------------------ parent


class Counter:
    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--role", "counter", "--port", str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.counts: dict[str, int] = {}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.counts = json.loads(line)

    def get(self, key: str) -> int:
        return self.counts.get(key, 0)

    def settle(self, key: str, seconds: float = 3.0) -> int:
        last, still = self.get(key), time.monotonic()
        while time.monotonic() - still < 0.6 and time.monotonic() - still < seconds:
            time.sleep(0.2)
            now = self.get(key)
            if now != last:
                last, still = now, time.monotonic()
        return last

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def child(role: str, port: int, args: argparse.Namespace, rate: int, **extra: Any) -> Any:
    cmd = [
        sys.executable,
        __file__,
        "--role",
        role,
        "--port",
        str(port),
        "--rate",
        str(rate),
        "--topics",
        str(args.topics),
        "--warmup",
        str(args.warmup),
        "--seconds",
        str(args.seconds),
        "--qos",
        str(extra.get("qos", args.qos)),
        "--max-inflight",
        str(args.max_inflight),
        "--mode",
        args.mode if role == "edgelink" else "datapoint",
    ]
    if extra.get("outage"):
        cmd.append("--outage-child")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def measure(role: str, key: str, port: int, args: argparse.Namespace, rate: int, counter: Counter):
    before = counter.settle(key)
    messages_before = counter.settle(key + "_msgs")
    proc = child(role, port, args, rate)
    out, _ = proc.communicate(timeout=args.warmup + args.seconds + 60)
    result = json.loads(out.strip().splitlines()[-1])
    delivered = counter.settle(key) - before
    messages = counter.settle(key + "_msgs") - messages_before
    window = result["t1"] - result["t0"]
    sent_window = result["sent1"] - result["sent0"]
    cpu = result["cpu1"] - result["cpu0"]
    share = delivered / result["sent"] if result["sent"] else 0.0
    return {
        "sent": result["sent"],
        "delivered": delivered,
        "delivered_pct": r(100 * share, 2),
        "messages": messages,
        "messages_per_s": r(messages / (result["sent"] / rate), 0),
        "rate": r(sent_window / window, 0),
        "cpu_pct": r(100 * cpu / window, 1),
        "cpu_us_per_delivered": r(1e6 * cpu / max(1.0, sent_window * min(1.0, share)), 2),
        "rss_mb": [r(result["rss0"], 1), r(result["rss1"], 1)],
        **({"bridge": result["bridge"]} if "bridge" in result else {}),
    }


def outage_run(broker: Any, port: int, args: argparse.Namespace, rate: int) -> dict[str, Any]:
    proc = child("edgelink", port, args, rate, qos=1, outage=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "STOP", line
    broker.stop()
    time.sleep(args.outage)
    broker.start()
    out, _ = proc.communicate(timeout=180)
    result = json.loads(out.strip().splitlines()[-1])
    drain = result["drain"]
    drain_rate = drain["flushed"] / drain["seconds"] if drain.get("seconds") else None
    return {
        "rate": rate,
        "outage_s": args.outage,
        "buffered": drain.get("depth"),
        "drain_s": r(drain.get("seconds"), 2),
        "drained": drain.get("flushed"),
        "drain_rate": r(drain_rate, 0),
        "drain_vs_live": r(drain_rate / rate if drain_rate else None, 2),
        "bridge": result["bridge"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--topics", type=int, default=5000)
    parser.add_argument("--qos", type=int, default=0)
    parser.add_argument("--outage", type=float, default=5.0, help="0 = no outage run")
    parser.add_argument(
        "--max-inflight", type=int, default=20, help="the broker connection's max_inflight"
    )
    parser.add_argument(
        "--mode",
        choices=["datapoint", "group"],
        default="datapoint",
        help="edgelink's bridge.mode (group: one message per device and poll round)",
    )
    parser.add_argument("--role", default="parent", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--outage-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "counter":
        run_counter(args.port)
        return 0
    if args.role == "paho":
        run_paho(args.port, args.rate, args.topics, args.warmup, args.seconds, args.qos)
        return 0
    if args.role == "edgelink":
        run_edgelink(
            args.port,
            args.rate,
            args.topics,
            args.warmup,
            args.seconds,
            args.qos,
            args.outage_child,
            args.max_inflight,
            args.mode,
        )
        return 0

    from edgelink.testing.mosquitto import MosquittoBroker

    result: dict[str, Any] = {
        "benchmark": "bridge_uplink",
        "qos": args.qos,
        "mode": args.mode,
        "max_inflight": args.max_inflight,
        "runs": [],
    }
    targets: dict[str, Any] = {}
    extra = "max_queued_messages 0\nset_tcp_nodelay true"
    with MosquittoBroker(persistence=True, extra_config=extra) as broker:
        counter = Counter(broker.port)
        try:
            time.sleep(0.5)
            for rate in args.rates if args.seconds > 0 else []:
                paho = measure("paho", "paho", broker.port, args, rate, counter)
                edge = measure("edgelink", "el", broker.port, args, rate, counter)
                ratio = (
                    edge["cpu_us_per_delivered"] / paho["cpu_us_per_delivered"]
                    if edge["cpu_us_per_delivered"] and paho["cpu_us_per_delivered"]
                    else None
                )
                result["runs"].append(
                    {"rate": rate, "paho": paho, "edgelink": edge, "cpu_ratio": r(ratio, 2)}
                )
                targets[f"delivered_pct_at_{rate}"] = check(edge["delivered_pct"], ">=", 99.9)
            if args.outage > 0:
                outage = outage_run(broker, broker.port, args, args.rates[0])
                result["outage"] = outage
                targets["drain_vs_live"] = check(outage["drain_vs_live"], ">=", 2.0)
        finally:
            counter.close()
    result["targets"] = targets
    result["pass"] = all(t["pass"] for t in targets.values())
    result["machine"] = machine_info()
    emit(result)
    return 0 if result["pass"] else 2


if __name__ == "__main__":
    sys.exit(main())
