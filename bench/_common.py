"""Shared helpers of the benchmarks: limits, machine info, simulator subprocesses, output.

Not a benchmark itself. Every benchmark prints exactly one JSON object to
stdout (`emit`); diagnostics go to stderr.
"""

from __future__ import annotations

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
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
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
