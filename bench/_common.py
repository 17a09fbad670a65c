"""Shared helpers of the benchmarks: limits, machine info, subprocesses, MQTT load, output.

Not a benchmark itself. Every benchmark prints exactly one JSON object to
stdout (`emit`); diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import contextlib
import ctypes
import datetime as dt
import gc
import json
import logging
import os
import platform
import resource
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import psutil

LOOPBACK = "127.0.0.1"
T = TypeVar("T")

#: Subprocesses this benchmark started; killed at exit whatever happens.
_CHILDREN: set[subprocess.Popen[bytes] | asyncio.subprocess.Process] = set()


def raise_nofile() -> dict[str, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"soft": int(soft), "hard": int(hard)}


def quiet_logging(level: int = logging.ERROR) -> None:
    """Keep edgelink's per-event WARNING records (a log line per lost link) off stderr.

    Without a logging config Python's last-resort handler would print every
    ``disconnected`` warning; a benchmark of 10,000 links measures the engine,
    not the terminal.
    """
    logging.getLogger("edgelink").setLevel(level)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = None
    try:
        port_range = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()  # noqa: SIM115
    except OSError:
        port_range = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "mem_total_mb": psutil.virtual_memory().total // (1 << 20),
        "nofile": dict(
            zip(("soft", "hard"), resource.getrlimit(resource.RLIMIT_NOFILE), strict=True)
        ),
        "ephemeral_ports": port_range,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def check(value: float | None, op: str, limit: float) -> dict[str, Any]:
    """One target: ``{"value", "target", "pass"}``; a missing value fails."""
    if value is None:
        ok = False
    elif op == "<":
        ok = value < limit
    elif op == "<=":
        ok = value <= limit
    elif op == ">=":
        ok = value >= limit
    elif op == "==":
        ok = value == limit
    else:  # pragma: no cover - programming error
        raise ValueError(op)
    return {"value": value, "target": f"{op} {limit}", "pass": bool(ok)}


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), nearest-rank on sorted data; None if empty."""
    if not values:
        return None
    data = sorted(values)
    k = max(0, min(len(data) - 1, round(q / 100 * (len(data) - 1))))
    return data[k]


def median(values: Sequence[float]) -> float | None:
    """The median, or None if there are no values."""
    return statistics.median(values) if values else None


def emit(result: dict[str, Any]) -> None:
    """Print the one JSON object of this run to stdout."""
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    """A progress line on stderr (stdout is reserved for the JSON)."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def r(value: float | None, digits: int = 3) -> float | None:
    """Round for the report, keeping None."""
    return None if value is None else round(value, digits)


class ReconnectRecorder:
    """Keeps (type, id, ts, delay) of the reconnect events; cheap async callback.

    ``reconnect_start`` carries the delay; ``reconnect_ok`` and
    ``reconnect_failed`` are the finished attempts (`peak_per_bin`).
    """

    TYPES = ("reconnect_start", "reconnect_ok", "reconnect_failed", "disconnected")

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float, float | None]] = []

    async def __call__(self, ev: Any) -> None:
        self.events.append((ev.type, ev.connection_id or "", ev.ts, ev.data.get("delay")))

    def attempts_after(self, since: float) -> list[float]:
        """Return when each connect attempt finished, from ``since`` on (wall time)."""
        return [
            ts
            for typ, _cid, ts, _delay in self.events
            if ts >= since and typ in ("reconnect_ok", "reconnect_failed")
        ]


def peak_per_bin(times: Sequence[float], start: float, width: float = 0.1) -> int:
    """Return the most of ``times`` (from ``start`` on) within one ``width``-second bin."""
    bins = collections.Counter(int((t - start) // width) for t in times if t >= start)
    return max(bins.values()) if bins else 0


# ------------------------------------------------------------- subprocesses


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Runs in the child before exec: SIGKILL it if the benchmark dies, however it dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _kill_children() -> None:
    for child in list(_CHILDREN):
        with contextlib.suppress(ProcessLookupError, OSError):
            child.kill()
    _CHILDREN.clear()


atexit.register(_kill_children)


def install_signal_cleanup() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so `finally` blocks and atexit run."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


class SimProcess:
    """``python -m edgelink.sim <kind> --count N --base-port P`` as a child process.

    `start` returns once the simulator printed ``listening:`` and records the
    wall-clock time it read that line (`listening_at`). ``kind`` is ``tcp``
    (PING/PONG devices) or ``modbus`` (simulated inverters).
    """

    def __init__(
        self,
        count: int,
        base_port: int,
        host: str = LOOPBACK,
        *,
        kind: str = "tcp",
        extra: Sequence[str] = (),
    ) -> None:
        self.count = count
        self.base_port = base_port
        self.host = host
        self.kind = kind
        self.extra = tuple(extra)
        self.proc: asyncio.subprocess.Process | None = None
        self.first_port: int | None = None
        self.last_port: int | None = None
        self.spawned_at: float | None = None
        self.listening_at: float | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self.proc.pid if self.proc is not None else None

    async def start(self, timeout: float = 60.0) -> None:
        """Spawn the simulator and wait for its ``listening:`` line.

        Raises:
            RuntimeError: if it exits or does not listen within ``timeout``.
        """
        self._stderr.seek(0)
        self._stderr.truncate()
        self.spawned_at = time.time()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgelink.sim",
            self.kind,
            "--count",
            str(self.count),
            "--base-port",
            str(self.base_port),
            "--host",
            self.host,
            *self.extra,
            stdin=subprocess.PIPE if "--control" in self.extra else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            preexec_fn=_die_with_parent,
        )
        self.proc = proc
        _CHILDREN.add(proc)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"simulator exited early: {self.stderr_text()}")
                    text = line.decode(errors="replace").strip()
                    if text.startswith("listening:"):
                        self.listening_at = time.time()
                        span = text.rsplit(":", 1)[1]
                        first, _, last = span.partition("-")
                        self.first_port, self.last_port = int(first), int(last)
                        return
        except TimeoutError:
            await self.kill()
            raise RuntimeError(
                f"simulator did not listen within {timeout} s: {self.stderr_text()}"
            ) from None

    async def command(self, line: str, expect: str, timeout: float = 30.0) -> float:
        """Send a control line (``--control`` in ``extra``); return when ``expect`` came back.

        Returns:
            The wall-clock time the answer starting with ``expect`` was read.
        """
        proc = self.proc
        assert proc is not None
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(f"{line}\n".encode())
        await proc.stdin.drain()
        async with asyncio.timeout(timeout):
            while True:
                answer = await proc.stdout.readline()
                if not answer:
                    raise RuntimeError(f"simulator exited: {self.stderr_text()}")
                if answer.decode(errors="replace").startswith(expect):
                    return time.time()

    def stderr_text(self) -> str:
        """What the child wrote to stderr (last 2 kB)."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    async def kill(self) -> None:
        """SIGKILL the simulator (a crash: its sockets close at once) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await proc.wait()
        _CHILDREN.discard(proc)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            pass
        await self.kill()

    def close(self) -> None:
        """Release the stderr file."""
        with contextlib.suppress(Exception):
            self._stderr.close()


def busy_ports(first: int, count: int) -> list[int]:
    """Ports in ``first .. first+count-1`` that something already listens on."""
    last = first + count - 1
    busy = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and first <= conn.laddr.port <= last:
            busy.add(conn.laddr.port)
    return sorted(busy)


async def bounded(coro: Awaitable[T], seconds: float) -> T:
    """Await ``coro`` for at most ``seconds``; on expiry it is cancelled (its cleanup runs).

    Raises:
        TimeoutError: naming the limit.
    """
    try:
        async with asyncio.timeout(seconds):
            return await coro
    except TimeoutError:
        raise TimeoutError(f"benchmark exceeded its time limit of {seconds:g} s") from None


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process (children excluded)."""
    t = proc.cpu_times()
    return float(t.user + t.system)


async def poll_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


class LoopLag:
    """Samples event-loop lag: how late a 100 ms sleep wakes up (max and p99)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(self.interval)
            self.samples.append(loop.time() - t - self.interval)

    async def stop(self) -> dict[str, float | None]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return {
            "samples": len(self.samples),
            "p50_ms": r(_ms(percentile(self.samples, 50)), 2),
            "p99_ms": r(_ms(percentile(self.samples, 99)), 2),
            "max_ms": r(_ms(max(self.samples) if self.samples else None), 2),
        }


class GcTimer:
    """Counts garbage-collector runs per generation and their total pause, while active."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.pause = [0.0, 0.0, 0.0]
        self.max_pause = 0.0
        self._t = 0.0

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            dt_ = time.perf_counter() - self._t
            gen = info["generation"]
            self.count[gen] += 1
            self.pause[gen] += dt_
            self.max_pause = max(self.max_pause, dt_)

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._cb)

    def as_dict(self) -> dict[str, Any]:
        return {
            "collections": self.count,
            "pause_s": [round(x, 3) for x in self.pause],
            "max_pause_ms": round(self.max_pause * 1000, 1),
            "tracked_objects": len(gc.get_objects()),
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


async def _bounded_run(
    benchmark: Callable[[], Awaitable[dict[str, Any]]], max_runtime: float | None
) -> dict[str, Any]:
    coro = benchmark()
    return await (bounded(coro, max_runtime) if max_runtime else coro)


def run_benchmark(
    name: str,
    benchmark: Callable[[], Awaitable[dict[str, Any]]],
    *,
    max_runtime: float | None = None,
    nofile: bool = True,
) -> int:
    """Run one benchmark the way every script does, print its JSON, return the exit code.

    Cleans up subprocesses on signals, raises RLIMIT_NOFILE (``nofile``), keeps
    edgelink's log quiet, bounds the run by ``max_runtime`` seconds, adds the
    machine info and prints exactly one JSON object, also when it fails.

    Returns:
        0 if every target passed (or there are none), 2 if one failed, 1 on an error.
    """
    install_signal_cleanup()
    if nofile:
        raise_nofile()
    quiet_logging()
    info = machine_info()
    try:
        result = asyncio.run(_bounded_run(benchmark, max_runtime))
    except Exception as exc:
        emit({"benchmark": name, "error": repr(exc), "pass": False, "machine": info})
        return 1
    result["machine"] = info
    emit(result)
    return 0 if result.get("pass", True) else 2


def split_mqtt_packets(buf: bytearray) -> tuple[list[tuple[int, int, int]], int]:
    """Split the complete MQTT packets off the front of ``buf`` (a raw subscriber's input).

    Returns:
        ``[(first byte, body start, body end), ...]`` and how many bytes of
        ``buf`` they took; an incomplete packet at the end stays for later.
    """
    packets: list[tuple[int, int, int]] = []
    i, end = 0, len(buf)
    while i + 2 <= end:
        kind = buf[i]
        n, mult, j = 0, 1, i + 1
        while j < end:  # the remaining length: a varint of 7-bit groups
            b = buf[j]
            n += (b & 0x7F) * mult
            mult *= 128
            j += 1
            if not b & 0x80:
                break
        else:
            break
        if j + n > end:
            break
        packets.append((kind, j, j + n))
        i = j + n
    return packets, i


def publish_topic(buf: bytearray, kind: int, start: int) -> tuple[bytes, int]:
    """Return the topic of a PUBLISH body at ``start`` and where its payload begins."""
    tlen = (buf[start] << 8) | buf[start + 1]
    topic = bytes(buf[start + 2 : start + 2 + tlen])
    return topic, start + 2 + tlen + (2 if kind & 0x06 else 0)


# ------------------------------------------------ MQTT in -> route -> MQTT out
# The machinery of bench/bridge.py and bench/route_topics.py: a raw-socket load
# generator and counting subscriber, the bare paho republisher, edgelink doing
# the same job, and the child processes that run them.


def say(line: str) -> None:
    """A child's answer to the orchestrator: one line on stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def mqtt_utf8(text: bytes) -> bytes:
    """An MQTT length-prefixed string."""
    return struct.pack("!H", len(text)) + text


def mqtt_packet(kind: int, body: bytes) -> bytes:
    """One MQTT packet: first byte, remaining length (varint), body."""
    out = bytearray([kind])
    n = len(body)
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + body


def raw_mqtt_connect(port: int, client_id: str, host: str = LOOPBACK) -> socket.socket:
    """A connected MQTT 3.1.1 session on a blocking socket (CONNACK read), big buffers."""
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    hello = mqtt_utf8(b"MQTT") + bytes([4, 0x02, 0, 0]) + mqtt_utf8(client_id.encode())
    sock.sendall(mqtt_packet(0x10, hello))
    ack = b""
    while len(ack) < 4:
        chunk = sock.recv(4 - len(ack))
        if not chunk:
            raise RuntimeError(f"the broker closed {client_id}'s connection")
        ack += chunk
    if ack[0] != 0x20 or ack[3] != 0:
        raise RuntimeError(f"CONNACK refused: {ack!r}")
    return sock


class Receiver:
    """Splits the subscriber's byte stream into PUBLISH frames and books each one.

    A message belongs to the step whose send window holds its send time;
    anything older is ``stale`` (a straggler of an earlier step), anything
    else ``bad`` (a payload that is not ``scale`` times a send time).
    """

    def __init__(self, sock: socket.socket, scale: float, per_topic: bool) -> None:
        self.sock = sock
        self.scale = scale
        self.count_topics = per_topic
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
        per_topic = self.per_topic if self.count_topics else None
        scale = self.scale
        packets, consumed = split_mqtt_packets(buf)
        for kind, start, stop in packets:
            if kind & 0xF0 == 0x30:
                topic, payload = publish_topic(buf, kind, start)
                try:
                    ts = float(buf[payload:stop]) / scale
                except ValueError:
                    ts = -1.0
                if t0 <= ts <= t_end:
                    self.received += 1
                    booked += 1
                    latency = now - ts
                    self.last_latency = latency
                    if ts >= t_warm:
                        lat.append(latency)
                    if per_topic is not None:
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


def cpu_of(pids: dict[str, int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = float(t.user + t.system)
        except (psutil.Error, OSError):
            out[name] = None
    return out


def machine_busy() -> tuple[float, float]:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return float(sum(t) - idle), float(sum(t))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    return data[max(0, min(len(data) - 1, round(q / 100 * (len(data) - 1))))]


class LoadGen:
    """The load generator's state: a publishing and a subscribing MQTT session.

    It publishes to ``bench/in/00`` .. ``bench/in/<topics - 1>`` in turn, or
    with ``topics=None`` to a new topic per message (``bench/in/u<9 digits>``,
    never one twice in the generator's life); it counts what comes back on
    ``bench/out/#`` whose payload is ``scale`` times a send time.
    """

    def __init__(self, port: int, topics: int | None = 100, scale: float = 2.0) -> None:
        self.pub = raw_mqtt_connect(port, f"bench-load-pub-{os.getpid()}")
        sub = raw_mqtt_connect(port, f"bench-load-sub-{os.getpid()}")
        sub.sendall(mqtt_packet(0x82, struct.pack("!H", 1) + mqtt_utf8(b"bench/out/#") + b"\x00"))
        sub.setblocking(False)
        self.rx = Receiver(sub, scale, per_topic=topics is not None)
        deadline = time.monotonic() + 10
        while not self.rx.subscribed:
            if time.monotonic() > deadline:
                raise RuntimeError("the load generator's subscription was not acknowledged")
            select.select([sub], [], [], 0.1)
            self.rx.pump()
        self.n_topics = topics
        #: Unique topics: the number of the next one (messages sent in all).
        self.unique_next = 0
        # bench/in/00 .. bench/in/99: one length, so one fixed header per batch.
        self.topics = [mqtt_utf8(f"bench/in/{t:02d}".encode()) for t in range(topics or 0)]

    def _frames(self, first: int, last: int, payload: bytes) -> bytes:
        if self.n_topics is None:
            base = self.unique_next - first
            self.unique_next += last - first
            remaining = 2 + len("bench/in/u000000000") + len(payload)
            head = mqtt_packet(0x30, b"\x00" * remaining)[:-remaining] + b"\x00\x13bench/in/u"
            return b"".join([head + b"%09d" % (base + i) + payload for i in range(first, last)])
        remaining = len(self.topics[0]) + len(payload)
        head = mqtt_packet(0x30, b"\x00" * remaining)[:-remaining]
        topics, n = self.topics, self.n_topics
        return b"".join([head + topics[i % n] + payload for i in range(first, last)])

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
        self,
        rate: float,
        seconds: float,
        warmup: float,
        pids: dict[str, int],
        abort: bool = True,
    ) -> dict[str, Any]:
        """Publish at ``rate`` for ``seconds``; measure from ``warmup`` on; drain; report.

        With ``abort`` the step is cut short once half a second of messages is owed.
        """
        total = int(rate * seconds)
        t0 = time.monotonic()
        t_warm, t_end = t0 + warmup, t0 + seconds
        rx = self.rx
        rx.begin(t0, t_warm, t_end)
        sent = 0
        warm: tuple[float, dict[str, float | None], tuple[float, float], Any] | None = None
        aborted = None
        # The step fails for sure once half a second of messages is owed: cut it short.
        max_owed = rate * 0.5 + 100 if abort else float("inf")
        pub, sock = self.pub, rx.sock
        now = t0
        while now < t_end and sent < total:
            due = min(total, int((now - t0) * rate) + 1)
            if due > sent:
                pub.sendall(self._frames(sent, due, f"{now:.6f}".encode()))
                sent = due
            if warm is None and now >= t_warm:
                warm = (now, cpu_of(pids), machine_busy(), os.times())
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
            warm = (t0, cpu_of(pids), machine_busy(), os.times())
        cpu1, busy1, own1 = cpu_of(pids), machine_busy(), os.times()
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
        n = self.n_topics or 0
        expected_per_topic = {
            self.topics[t][2:].replace(b"/in/", b"/out/"): sent // n + (t < sent % n)
            for t in range(n)
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
            "per_topic_ok": rx.per_topic == expected_per_topic if n else None,
            "aborted": aborted,
            "latency_samples": len(lat),
            "p50_ms": _ms2(pct(lat, 50)),
            "p99_ms": _ms2(pct(lat, 99)),
            "max_ms": _ms2(max(lat) if lat else None),
            "window_s": round(window, 3),
            "drain_s": round(drain, 3),
            "cpu": cpu,
        }


def _ms2(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def run_loadgen(port: int, topics: int | None = 100, scale: float = 2.0) -> int:
    """Child process: the load generator and counting subscriber, driven by stdin lines.

    ``prime`` -> JSON; ``step <rate> <seconds> <warmup> name=pid ... [noabort]`` -> JSON.
    """
    gen = LoadGen(port, topics, scale)
    say("ready")
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "prime":
            say(json.dumps(gen.prime()))
        elif cmd[0] == "step":
            rate, seconds, warmup = (float(x) for x in cmd[1:4])
            rest = cmd[4:]
            pids = {k: int(v) for k, v in (x.split("=") for x in rest if x != "noabort")}
            say(json.dumps(gen.step(rate, seconds, warmup, pids, abort="noabort" not in rest)))
    return 0


def run_paho(port: int, threshold: float = 0.0, factor: float = 2.0) -> int:
    """Child process: the bare paho-mqtt republisher (the baseline).

    ``bench/in/+`` -> ``bench/out/<last level>``: the JSON number if above
    ``threshold``, times ``factor``.
    """
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
        if not (isinstance(value, int | float) and value > threshold):  # the condition
            counts["filtered"] += 1
            return
        topic = msg.topic
        c.publish("bench/out/" + topic[topic.rfind("/") + 1 :], dumps(value * factor), 0)
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


def run_edgelink(port: int, route: dict[str, Any]) -> int:
    """Child process: edgelink's manager, mqtt connection and router doing the same job.

    One ``mqtt`` connection ``broker`` subscribed to ``bench/in/+`` (stock
    settings, ``spam_max_pps: null``) and ``route`` loaded.
    """
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
        manager.router.load_routes({"version": "1.0", "routes": [route]})
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
                                "route": manager.router.route_stats(route["id"]),
                                "target": manager.router.target_stats("broker"),
                                "status": status["status"],
                                "reconnects": status["stats"]["reconnects"],
                                "router": {
                                    k: v
                                    for k, v in manager.router.stats().items()
                                    if k != "targets"
                                },
                                "last_values_evicted": getattr(conn, "last_values_evicted", None),
                            }
                        )
                    )

        async with manager:
            await manager.wait_for_state("broker", "connected", timeout=10)
            loop.add_reader(stdin, on_stdin)
            say("ready")
            await stop

    run_loop(main())
    return 0


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop if ``BENCH_LOOP=uvloop`` is set, else on asyncio's loop."""
    if os.environ.get("BENCH_LOOP") == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


class ChildProcess:
    """``python <script> --role <role> <args>``: a child that answers stdin commands with lines."""

    def __init__(self, script: str, role: str, *args: str) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(script), "--role", role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            preexec_fn=_die_with_parent,
        )
        _CHILDREN.add(self.proc)
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float) -> str:
        """The child's next line on stdout.

        Raises:
            TimeoutError: if none comes within ``timeout``; RuntimeError if it exited.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.role}: no answer within {timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.role} exited (rc={self.proc.poll()})")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def ask(self, command: str, timeout: float) -> str:
        """Send one command line, return the answer line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        return self.readline(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Close its stdin (it exits), then SIGKILL after ``timeout``. Idempotent."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        _CHILDREN.discard(self.proc)


def peak_rss(pid: int) -> dict[str, float | None]:
    """RSS now and the peak (VmHWM) of a process, in MiB."""
    out: dict[str, float | None] = {"rss_mb": None, "peak_rss_mb": None}
    with contextlib.suppress(psutil.Error, OSError):
        out["rss_mb"] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                out["peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    return out


def step_passes(step: dict[str, Any], args: argparse.Namespace) -> bool:
    return (
        step["aborted"] is None
        and step["lost"] == 0
        and step["bad"] == 0
        and step["p99_ms"] is not None
        and step["p99_ms"] < args.p99_ms
        and step["achieved_rate"] >= 0.97 * step["rate"]
    )


def step_brief(step: dict[str, Any]) -> str:
    return (
        f"{step['rate']:>6} msg/s: lost {step['lost']}, p50 {step['p50_ms']} ms, "
        f"p99 {step['p99_ms']} ms, CPU {step['cpu'].get('subject_pct')} %, "
        f"broker {step['cpu'].get('broker_pct')} %, machine {step['cpu'].get('machine_busy_pct')} %"
        + (f", aborted: {step['aborted']}" if step["aborted"] else "")
    )


def slope_per_min(samples: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(seconds, value)`` samples, per minute; None under 2 samples."""
    if len(samples) < 2:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return None
    return 60 * sum((t - mt) * (v - mv) for t, v in samples) / var


async def start_modbus_sims(devices: int, per_process: int) -> tuple[list[SimProcess], list[int]]:
    """Start ``edgelink.sim modbus`` children serving ``devices`` in all; return them and the ports.

    Each child serves at most ``per_process`` devices on kernel-chosen ports
    (asked of the kernel once it listens).
    """
    sims: list[SimProcess] = []
    ports: list[int] = []
    left = devices
    try:
        while left > 0:
            count = min(per_process, left)
            sim = SimProcess(count, 0, kind="modbus")
            sims.append(sim)
            await sim.start()
            assert sim.pid is not None
            mine = sorted(
                c.laddr.port
                for c in psutil.Process(sim.pid).net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            )
            if len(mine) != count:
                raise RuntimeError(f"a simulator listens on {len(mine)} ports, not {count}")
            ports.extend(mine)
            left -= count
    except BaseException:
        await stop_sims(sims)
        raise
    return sims, ports


async def stop_sims(sims: Sequence[SimProcess]) -> None:
    """Stop simulator children and release their files."""
    for sim in sims:
        await sim.stop()
        sim.close()
