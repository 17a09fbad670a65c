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
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

from _common import ChildProcess, mqtt_packet, mqtt_utf8, peak_rss, raw_mqtt_connect

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


def say(line: str) -> None:
    """A child's answer to the orchestrator: one line on stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ------------------------------------------------------ raw MQTT (loadgen)


class Receiver:
    """Splits the subscriber's byte stream into PUBLISH frames and books each one.

    A message belongs to the step whose send window holds its send time;
    anything older is ``stale`` (a straggler of an earlier step), anything
    else ``bad`` (a payload that is not twice a send time).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.subscribed = False
        self.begin(0.0, 0.0, 0.0)

    def begin(self, t0: float, t_warm: float, t_end: float) -> None:
        self.t0, self.t_warm, self.t_end = t0, t_warm, t_end
        self.received = 0
        self.stale = 0
        self.bad = 0
        self.latencies: list[float] = []
        self.last_latency = 0.0
        self.per_topic: dict[bytes, int] = {}
        self.last_rx = 0.0

    def pump(self) -> int:
        """Read what the socket has (non-blocking); return the PUBLISH frames booked."""
        from _common import publish_topic, split_mqtt_packets

        try:
            data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        if not data:
            raise RuntimeError("the broker closed the subscriber's connection")
        now = time.monotonic()
        buf = self.buf
        buf += data
        booked = 0
        t0, t_warm, t_end = self.t0 - 1e-6, self.t_warm, self.t_end + 1e-6
        lat = self.latencies
        per_topic = self.per_topic
        packets, consumed = split_mqtt_packets(buf)
        for kind, start, stop in packets:
            if kind & 0xF0 == 0x30:
                topic, payload = publish_topic(buf, kind, start)
                try:
                    ts = float(buf[payload:stop]) / 2
                except ValueError:
                    ts = -1.0
                if t0 <= ts <= t_end:
                    self.received += 1
                    booked += 1
                    latency = now - ts
                    self.last_latency = latency
                    if ts >= t_warm:
                        lat.append(latency)
                    per_topic[topic] = per_topic.get(topic, 0) + 1
                elif 0 < ts < t0:
                    self.stale += 1
                else:
                    self.bad += 1
            elif kind == 0x90:
                self.subscribed = True
        del buf[:consumed]
        if booked:
            self.last_rx = now
        return booked


def _cpu_of(pids: dict[str, int]) -> dict[str, float | None]:
    import psutil

    out: dict[str, float | None] = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = float(t.user + t.system)
        except (psutil.Error, OSError):
            out[name] = None
    return out


def _machine_busy() -> tuple[float, float]:
    import psutil

    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return float(sum(t) - idle), float(sum(t))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    return data[max(0, min(len(data) - 1, round(q / 100 * (len(data) - 1))))]


class LoadGen:
    """The load generator's state: a publishing and a subscribing MQTT session."""

    def __init__(self, port: int) -> None:
        self.pub = raw_mqtt_connect(port, f"bench-load-pub-{os.getpid()}")
        sub = raw_mqtt_connect(port, f"bench-load-sub-{os.getpid()}")
        sub.sendall(mqtt_packet(0x82, struct.pack("!H", 1) + mqtt_utf8(b"bench/out/#") + b"\x00"))
        sub.setblocking(False)
        self.rx = Receiver(sub)
        deadline = time.monotonic() + 10
        while not self.rx.subscribed:
            if time.monotonic() > deadline:
                raise RuntimeError("the load generator's subscription was not acknowledged")
            select.select([sub], [], [], 0.1)
            self.rx.pump()
        # bench/in/00 .. bench/in/99: one length, so one fixed header per batch.
        self.topics = [mqtt_utf8(f"bench/in/{t:02d}".encode()) for t in range(TOPICS)]

    def _frames(self, first: int, last: int, payload: bytes) -> bytes:
        remaining = len(self.topics[0]) + len(payload)
        head = mqtt_packet(0x30, b"\x00" * remaining)[:-remaining]
        topics = self.topics
        return b"".join([head + topics[i % TOPICS] + payload for i in range(first, last)])

    def prime(self, timeout: float = 15.0) -> dict[str, Any]:
        """Send one message every 20 ms until one comes back through the measured process."""
        t0 = time.monotonic()
        self.rx.begin(t0, t0, t0 + timeout)
        sent = 0
        while self.rx.received == 0:
            now = time.monotonic()
            if now - t0 > timeout:
                raise RuntimeError("nothing came back through the measured process")
            self.pub.sendall(self._frames(sent, sent + 1, f"{now:.6f}".encode()))
            sent += 1
            end = now + 0.02
            while time.monotonic() < end:
                select.select([self.rx.sock], [], [], max(0.0, end - time.monotonic()))
                self.rx.pump()
        self._drain(0.3, 5.0, None)
        return {"sent": sent, "seconds": round(time.monotonic() - t0, 3)}

    def _drain(self, quiet: float, cap: float, expected: int | None) -> float:
        t = time.monotonic()
        last = t
        while True:
            now = time.monotonic()
            if expected is not None and self.rx.received >= expected:
                return now - t
            if now - last > quiet or now - t > cap:
                return now - t
            select.select([self.rx.sock], [], [], 0.01)
            if self.rx.pump():
                last = time.monotonic()

    def step(
        self, rate: float, seconds: float, warmup: float, pids: dict[str, int]
    ) -> dict[str, Any]:
        """Publish at ``rate`` for ``seconds``; measure from ``warmup`` on; drain; report."""
        total = int(rate * seconds)
        t0 = time.monotonic()
        t_warm, t_end = t0 + warmup, t0 + seconds
        rx = self.rx
        rx.begin(t0, t_warm, t_end)
        sent = 0
        warm: tuple[float, dict[str, float | None], tuple[float, float], Any] | None = None
        aborted = None
        # The step fails for sure once half a second of messages is owed: cut it short.
        max_owed = rate * 0.5 + 100
        pub, sock = self.pub, rx.sock
        now = t0
        while now < t_end and sent < total:
            due = min(total, int((now - t0) * rate) + 1)
            if due > sent:
                pub.sendall(self._frames(sent, due, f"{now:.6f}".encode()))
                sent = due
            if warm is None and now >= t_warm:
                warm = (now, _cpu_of(pids), _machine_busy(), os.times())
            rx.pump()
            if sent - rx.received > max_owed:
                aborted = f"{sent - rx.received} messages owed after {now - t0:.2f} s"
                break
            now = time.monotonic()
            wait = min(t0 + sent / rate - now, t_end - now, 0.001)
            if wait > 0:
                select.select([sock], [], [], wait)
                rx.pump()
            now = time.monotonic()
        t_sent = time.monotonic()
        if warm is None:
            warm = (t0, _cpu_of(pids), _machine_busy(), os.times())
        cpu1, busy1, own1 = _cpu_of(pids), _machine_busy(), os.times()
        w0, cpu0, busy0, own0 = warm
        window = max(1e-9, t_sent - w0)
        cpu: dict[str, float | None] = {}
        for name in pids:
            a, b = cpu0.get(name), cpu1.get(name)
            cpu[f"{name}_pct"] = (
                None if a is None or b is None else round((b - a) / window * 100, 1)
            )
        cpu["loadgen_pct"] = round(
            ((own1.user - own0.user) + (own1.system - own0.system)) / window * 100, 1
        )
        span = busy1[1] - busy0[1]
        cpu["machine_busy_pct"] = round((busy1[0] - busy0[0]) / span * 100, 1) if span else None
        drain = self._drain(1.0 if aborted else 0.5, 10.0, sent)
        expected_per_topic = {
            self.topics[t][2:].replace(b"/in/", b"/out/"): sent // TOPICS + (t < sent % TOPICS)
            for t in range(TOPICS)
        }
        lat = rx.latencies
        achieved = sent / (t_sent - t0) if t_sent > t0 else 0.0
        return {
            "rate": round(rate),
            "sent": sent,
            "achieved_rate": round(achieved),
            "received": rx.received,
            "lost": sent - rx.received,
            "stale": rx.stale,
            "bad": rx.bad,
            "per_topic_ok": rx.per_topic == expected_per_topic,
            "aborted": aborted,
            "latency_samples": len(lat),
            "p50_ms": _ms(_pct(lat, 50)),
            "p99_ms": _ms(_pct(lat, 99)),
            "max_ms": _ms(max(lat) if lat else None),
            "window_s": round(window, 3),
            "drain_s": round(drain, 3),
            "cpu": cpu,
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def run_loadgen(port: int) -> int:
    """Child process: the load generator and counting subscriber, driven by stdin lines.

    ``prime`` -> JSON; ``step <rate> <seconds> <warmup> name=pid ...`` -> JSON.
    """
    gen = LoadGen(port)
    say("ready")
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "prime":
            say(json.dumps(gen.prime()))
        elif cmd[0] == "step":
            rate, seconds, warmup = (float(x) for x in cmd[1:4])
            pids = {k: int(v) for k, v in (x.split("=") for x in cmd[4:])}
            say(json.dumps(gen.step(rate, seconds, warmup, pids)))
    return 0


# ------------------------------------------------------ measured processes


def run_paho(port: int) -> int:
    """Child process: the bare paho-mqtt republisher (the baseline)."""
    import threading

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{os.getpid()}")
    counts = {"rx": 0, "tx": 0, "filtered": 0, "errors": 0}
    dumps, loads = json.dumps, json.loads

    def on_connect(c: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        c.subscribe("bench/in/+", 0)

    def on_subscribe(c: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        say("ready")

    def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        counts["rx"] += 1
        try:
            value = loads(msg.payload)
        except ValueError:
            counts["errors"] += 1
            return
        if not (isinstance(value, int | float) and value > 0):  # the condition
            counts["filtered"] += 1
            return
        topic = msg.topic
        c.publish("bench/out/" + topic[topic.rfind("/") + 1 :], dumps(value * 2), 0)
        counts["tx"] += 1

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(LOOPBACK, port, 60)
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "stats":
                say(json.dumps(counts))
        client.disconnect()

    threading.Thread(target=commands, name="bench-commands", daemon=True).start()
    client.loop_forever()
    return 0


def run_edgelink(port: int) -> int:
    """Child process: edgelink's manager, mqtt connection and router doing the same job."""
    import asyncio

    from _common import quiet_logging

    from edgelink import ConnectionManager

    quiet_logging()

    async def main() -> None:
        manager = ConnectionManager()
        manager.add_connection(
            "broker",
            "mqtt",
            {"host": LOOPBACK, "port": port, "subscribe": ["bench/in/+"], "qos": 0},
            settings={"spam_max_pps": None},
        )
        manager.router.load_routes({"version": "1.0", "routes": [ROUTE]})
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        stdin = sys.stdin.fileno()
        pending = bytearray()

        def on_stdin() -> None:
            data = os.read(stdin, 4096)
            if not data:
                loop.remove_reader(stdin)
                if not stop.done():
                    stop.set_result(None)
                return
            pending.extend(data)
            while b"\n" in pending:
                line, _, rest = bytes(pending).partition(b"\n")
                pending[:] = rest
                if line.strip() == b"stats":
                    conn = manager.get_connection("broker")
                    stats = conn.stats if conn is not None else None
                    status = manager.get_status("broker")
                    say(
                        json.dumps(
                            {
                                "rx": stats.packets_received if stats else None,
                                "tx": stats.packets_sent if stats else None,
                                "route": manager.router.route_stats("bench"),
                                "target": manager.router.target_stats("broker"),
                                "status": status["status"],
                                "reconnects": status["stats"]["reconnects"],
                            }
                        )
                    )

        async with manager:
            await manager.wait_for_state("broker", "connected", timeout=10)
            loop.add_reader(stdin, on_stdin)
            say("ready")
            await stop

    asyncio.run(main())
    return 0


# ---------------------------------------------------------- orchestrator


def step_passes(step: dict[str, Any], args: argparse.Namespace) -> bool:
    return (
        step["aborted"] is None
        and step["lost"] == 0
        and step["bad"] == 0
        and step["p99_ms"] is not None
        and step["p99_ms"] < args.p99_ms
        and step["achieved_rate"] >= 0.97 * step["rate"]
    )


def _brief(step: dict[str, Any]) -> str:
    return (
        f"{step['rate']:>6} msg/s: lost {step['lost']}, p50 {step['p50_ms']} ms, "
        f"p99 {step['p99_ms']} ms, CPU {step['cpu'].get('subject_pct')} %, "
        f"broker {step['cpu'].get('broker_pct')} %, machine {step['cpu'].get('machine_busy_pct')} %"
        + (f", aborted: {step['aborted']}" if step["aborted"] else "")
    )


def session(
    subject: str, broker: Any, loadgen: ChildProcess, args: argparse.Namespace, deadline: float
) -> dict[str, Any]:
    from _common import log

    child = ChildProcess(__file__, subject, "--port", str(broker.port))
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
        log(f"{subject} fixed {_brief(fixed)}, RSS {fixed_rss['rss_mb']} MiB")
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
                    log(f"{subject} step {_brief(step)} -> {'pass' if ok else 'fail'}")
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
        loadgen = ChildProcess(__file__, "loadgen", "--port", str(broker.port))
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
        return run_loadgen(args.port)
    if args.role == "paho":
        return run_paho(args.port)
    if args.role == "edgelink":
        return run_edgelink(args.port)

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
