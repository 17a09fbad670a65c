"""Benchmark: messages/s published through the ``mqtt`` driver vs a bare paho-mqtt client.

One private mosquitto on a free loopback port (`edgelink.testing.MosquittoBroker`)
and one counting subscriber in a child process (a raw-socket MQTT client that
only splits frames, so it is never the bottleneck). In the same run, in
interleaved rounds (A B C D D C B A ...), each publisher sends ``--n`` messages
of the same bytes to 100 topics (``bench/<phase>/<i % 100>``) as fast as it
can:

- ``edgelink_publish``: ``conn.publish(topic, payload)`` of an ``mqtt``
  connection supervised by a ConnectionManager (the MQTT bridge's hot path),
  yielding to the loop every ``--batch`` messages;
- ``edgelink_write``: ``await conn.write(topic, payload)`` per message;
- ``paho_direct``: a bare paho client without a network thread (each
  ``publish`` writes to the socket at once; the fastest single-threaded paho);
- ``paho_thread``: a bare paho client with ``loop_start()`` (its usual use).

Every socket has TCP_NODELAY on. A phase's rate is ``n`` divided by the time
from its first publish to the subscriber's receipt of its last message; CPU is
this process's user+system time over the same span (the subscriber and the
broker run in other processes). Reported: per-publisher medians over the
rounds, lost messages, and ``edgelink_publish`` / best bare paho (rate ratio,
and CPU-per-message ratio).

    .venv/bin/python bench/mqtt_publish.py --n 50000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import secrets
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

import paho.mqtt.client as paho
import psutil
from _common import (
    LOOPBACK,
    log,
    mqtt_packet,
    mqtt_utf8,
    publish_topic,
    r,
    run_benchmark,
    split_mqtt_packets,
)
from paho.mqtt.enums import CallbackAPIVersion

from edgelink import ConnectionManager
from edgelink.drivers.mqtt import MqttConnection
from edgelink.testing.mosquitto import MosquittoBroker

PHASES = ("edgelink_publish", "edgelink_write", "paho_direct", "paho_thread")
TOPICS = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="messages per phase (default 50000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every phase (default 3)")
    p.add_argument("--qos", type=int, choices=(0, 1), default=0, help="publish QoS (default 0)")
    p.add_argument("--payload-bytes", type=int, default=60, help="payload size (default 60)")
    p.add_argument("--batch", type=int, default=256, help="publishes between loop yields")
    p.add_argument("--max-runtime", type=float, default=600.0, help="hard time limit, s")
    p.add_argument("--counter", metavar="PORT", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------ the counter


def run_counter(port: int) -> int:
    """Child process: subscribe to bench/# and count PUBLISH frames per phase.

    Commands on stdin: ``report <phase>`` answers ``<phase> <count> <t_first> <t_last>``
    (CLOCK_MONOTONIC, which every process on the machine shares).
    """
    sock = socket.create_connection((LOOPBACK, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    cid = f"counter-{os.getpid()}".encode()
    sock.sendall(mqtt_packet(0x10, mqtt_utf8(b"MQTT") + bytes([4, 0x02, 0, 60]) + mqtt_utf8(cid)))
    sock.sendall(mqtt_packet(0x82, struct.pack("!H", 1) + mqtt_utf8(b"bench/#") + b"\x00"))
    counts: dict[bytes, list[float]] = {}
    buf = bytearray()
    subscribed = False
    out = sys.stdout
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([sock, stdin], [], [], 5.0)
        if stdin in ready:
            line = os.read(stdin, 4096).decode()
            if not line:
                return 0
            for cmd in line.split("\n"):
                if cmd.startswith("report "):
                    phase = cmd.split()[1].encode()
                    c = counts.get(phase, [0, 0.0, 0.0])
                    out.write(f"{phase.decode()} {int(c[0])} {c[1]!r} {c[2]!r}\n")
                elif cmd == "ready?":
                    out.write(f"ready {int(subscribed)}\n")
            out.flush()
        if sock in ready:
            data = sock.recv(1 << 20)
            if not data:
                return 1
            now = time.monotonic()
            buf += data
            packets, consumed = split_mqtt_packets(buf)
            for kind, start, _ in packets:
                if kind & 0xF0 == 0x30:
                    topic, _ = publish_topic(buf, kind, start)
                    phase = topic.split(b"/", 2)[1]
                    seen = counts.get(phase)
                    if seen is None:
                        counts[phase] = [1, now, now]
                    else:
                        seen[0] += 1
                        seen[2] = now
                elif kind == 0x90:
                    subscribed = True
            del buf[:consumed]


class Counter:
    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--counter", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ask("ready?") != "ready 1":
            if time.monotonic() > deadline:
                raise RuntimeError("the counting subscriber did not subscribe")
            time.sleep(0.02)

    def report(self, phase: str) -> tuple[int, float, float]:
        _, count, first, last = self.ask(f"report {phase}").split()
        return int(count), float(first), float(last)

    async def wait_for(self, phase: str, n: int, quiet: float = 1.0) -> tuple[int, float]:
        """Wait until ``n`` messages of ``phase`` arrived, or none arrived for ``quiet`` s."""
        seen, since = -1, time.monotonic()
        while True:
            count, _, last = self.report(phase)
            if count >= n:
                return count, last
            if count != seen:
                seen, since = count, time.monotonic()
            elif time.monotonic() - since > quiet:
                return count, last
            await asyncio.sleep(0.01)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------- publishers


def _nodelay(client: paho.Client) -> None:
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _bare_client(broker: MosquittoBroker, threaded: bool) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-{secrets.token_hex(3)}")
    client.connect(broker.host, broker.port, 60)
    _nodelay(client)
    if threaded:
        client.loop_start()
        deadline = time.monotonic() + 5
        while not client.is_connected():
            if time.monotonic() > deadline:
                raise RuntimeError("bare paho client did not connect")
            time.sleep(0.005)
    else:
        deadline = time.monotonic() + 5
        while not client.is_connected():
            client.loop(0.05)
            if time.monotonic() > deadline:
                raise RuntimeError("bare paho client did not connect")
    return client


def _drain_direct(client: paho.Client) -> None:
    """Write what paho still holds (a full socket buffer), then read the acks."""
    sock = client.socket()
    if sock is None:
        return
    while client.want_write():
        select.select([], [sock], [], 1.0)
        client.loop_write()
    client.loop_read()


async def run_phase(
    phase: str,
    args: argparse.Namespace,
    conn: MqttConnection,
    bare_direct: paho.Client,
    bare_thread: paho.Client,
    payload: bytes,
    counter: Counter,
) -> dict[str, Any]:
    n, batch, qos = args.n, args.batch, args.qos
    topics = [f"bench/{phase}-{i}/{t}" for i in [secrets.token_hex(2)] for t in range(TOPICS)]
    key = topics[0].split("/")[1]
    proc = psutil.Process()
    gc.collect()
    cpu0 = proc.cpu_times()
    t0 = time.monotonic()
    if phase == "edgelink_publish":
        last = None
        for i in range(n):
            fut = conn.publish(topics[i % TOPICS], payload, qos=qos)
            if fut is not None:
                last = fut
            if i % batch == batch - 1:
                await asyncio.sleep(0)
        if last is not None:
            await last
    elif phase == "edgelink_write":
        for i in range(n):
            await conn.write(topics[i % TOPICS], payload)
            if i % batch == batch - 1:
                await asyncio.sleep(0)
    elif phase == "paho_direct":
        for i in range(n):
            bare_direct.publish(topics[i % TOPICS], payload, qos)
            if qos and i % 16 == 15:
                bare_direct.loop_read()  # the PUBACKs free inflight slots
        _drain_direct(bare_direct)
        while qos and bare_direct._out_messages:  # paho's unacked QoS 1 messages
            bare_direct.loop(0.01)
    else:
        info = None
        for i in range(n):
            info = bare_thread.publish(topics[i % TOPICS], payload, qos)
        if info is not None:
            await asyncio.to_thread(info.wait_for_publish, 30)
    sent_at = time.monotonic()
    count, last_rx = await counter.wait_for(key, n)
    cpu1 = proc.cpu_times()
    span = max(last_rx, sent_at) - t0
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    # The wait for the counter idles; CPU is counted up to the last receipt anyway.
    return {
        "phase": phase,
        "received": count,
        "lost": n - count,
        "seconds": span,
        "msgs_per_s": count / span if span > 0 else None,
        "publish_calls_per_s": n / (sent_at - t0) if sent_at > t0 else None,
        "cpu_s": cpu,
        "cpu_us_per_msg": cpu / n * 1e6,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    payload = (b'{"value":21.5,"ts":1700000000.123,"quality":"good"}' + b" " * 200)[
        : args.payload_bytes
    ]
    with MosquittoBroker() as broker:
        counter = Counter(broker.port)
        try:
            counter.wait_ready()
            manager = ConnectionManager()
            manager.add_connection(
                "bench", "mqtt", {"host": broker.host, "port": broker.port, "qos": args.qos}
            )
            bare_direct = _bare_client(broker, threaded=False)
            bare_thread = _bare_client(broker, threaded=True)
            results: dict[str, list[dict[str, Any]]] = {p: [] for p in PHASES}
            async with manager:
                await manager.wait_for_state("bench", "connected", timeout=10)
                conn = manager.get_connection("bench")
                assert isinstance(conn, MqttConnection)
                warm = argparse.Namespace(**{**vars(args), "n": min(2000, args.n)})
                for phase in PHASES:
                    await run_phase(phase, warm, conn, bare_direct, bare_thread, payload, counter)
                for rnd in range(args.rounds):
                    order = PHASES if rnd % 2 == 0 else tuple(reversed(PHASES))
                    for phase in order:
                        res = await run_phase(
                            phase, args, conn, bare_direct, bare_thread, payload, counter
                        )
                        results[phase].append(res)
                        log(
                            f"round {rnd + 1} {phase:<17} {res['msgs_per_s']:>9.0f} msg/s "
                            f"{res['cpu_us_per_msg']:6.1f} us CPU/msg lost={res['lost']}"
                        )
                status = manager.get_status("bench")
            bare_thread.loop_stop()
            bare_thread.disconnect()
            bare_direct.disconnect()
        finally:
            counter.close()

    def med(phase: str, key: str) -> float | None:
        vals = [x[key] for x in results[phase] if x[key] is not None]
        return statistics.median(vals) if vals else None

    summary = {
        p: {
            "msgs_per_s_median": r(med(p, "msgs_per_s"), 0),
            "msgs_per_s_rounds": [r(x["msgs_per_s"], 0) for x in results[p]],
            "publish_calls_per_s_median": r(med(p, "publish_calls_per_s"), 0),
            "cpu_us_per_msg_median": r(med(p, "cpu_us_per_msg"), 2),
            "lost_total": sum(x["lost"] for x in results[p]),
        }
        for p in PHASES
    }
    best_bare = max(("paho_direct", "paho_thread"), key=lambda p: med(p, "msgs_per_s") or 0.0)
    rate_ratio = (med("edgelink_publish", "msgs_per_s") or 0.0) / (
        med(best_bare, "msgs_per_s") or 1.0
    )
    cpu_ratio = (med("edgelink_publish", "cpu_us_per_msg") or 0.0) / (
        med("paho_direct", "cpu_us_per_msg") or 1.0
    )
    return {
        "benchmark": "mqtt_publish",
        "params": {
            "n": args.n,
            "rounds": args.rounds,
            "qos": args.qos,
            "payload_bytes": len(payload),
            "batch": args.batch,
            "topics": TOPICS,
        },
        "phases": summary,
        "best_bare_paho": best_bare,
        "rate_ratio_edgelink_publish_vs_best_bare": r(rate_ratio, 3),
        "cpu_per_msg_ratio_edgelink_publish_vs_paho_direct": r(cpu_ratio, 3),
        "lost_total": sum(s["lost_total"] for s in summary.values()),
        "driver_status_at_end": {
            "status": status["status"],
            "health": status["health"],
            "reconnects": status["stats"]["reconnects"],
            "packets_sent": status["stats"]["packets_sent"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.counter is not None:
        return run_counter(args.counter)
    return run_benchmark(
        "mqtt_publish", lambda: run(args), max_runtime=args.max_runtime, nofile=False
    )


if __name__ == "__main__":
    sys.exit(main())
