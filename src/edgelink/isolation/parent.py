"""`ProcessConnection`: a driver that runs the real driver in a child process.

To the engine it is one more async driver: the manager builds it for a
connection with ``isolation: "process"`` and its `Supervisor` runs it like any
other, with the same state machine, backoff, health checks, polling, spam
protection and events. There is no second state machine: a child that dies
or falls silent is a lost link, and the supervisor reconnects it with its
backoff, which starts a new child.

What it adds, per child (`edgelink.isolation.child` is the other end):

- the health pulse: the child beats every ``heartbeat_interval`` seconds;
  after ``pulse_timeout`` of silence (pauses the parent imposed do not count)
  it is killed (``heartbeat_missed``) and the link counts as lost;
- exits are seen at once (the socket closes) and evented (``child_exited``
  with the exit code or signal);
- limits (`edgelink.isolation.limits`): RAM (``memory_warning`` at 80 %,
  ``memory_throttled`` at 90 %, ``memory_killed`` at the limit), a CPU share
  (cgroup v2 ``cpu.max`` where writable, else SIGSTOP/SIGCONT duty cycling;
  ``cpu_limited`` says which), a priority class as a nice value
  (``priority_refused`` when the system says no);
- `resources`: the seed's per-instance figures from psutil.

Calls (connect, health_check, read_many, write, ...) cross as frames; a call
the supervisor gives up on (its timeout) is forgotten on this side, and the
child's late answer is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from edgelink._tasks import cancel_and_wait
from edgelink.connection import Connection, SyncConnection
from edgelink.errors import ConfigError, ConnectError
from edgelink.events import EventType
from edgelink.isolation.ipc import FrameChannel, Kind, error_from_wire
from edgelink.isolation.limits import CgroupCpu, DutyCycle, MemoryEscalation, MemoryStep
from edgelink.isolation.spec import IsolationSpec

__all__ = ["ProcessConnection", "driver_path"]

logger = logging.getLogger(__name__)

_MB = 1024 * 1024
#: Seconds a child may take to end after CLOSE before it is killed.
CLOSE_GRACE = 1.0
#: Seconds to wait for the exit status once the socket closed (then SIGKILL).
REAP_TIMEOUT = 2.0
#: Source of ``edgelink`` itself, put first on the child's PYTHONPATH.
_EDGELINK_ROOT = str(Path(__file__).resolve().parents[2])
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_STAT_COPY = ("packets_sent", "packets_received", "bytes_sent", "bytes_received", "errors")
#: Names the base classes define: never forwarded to the child by ``__getattr__``.
_BASE_NAMES = frozenset(dir(Connection)) | frozenset(dir(SyncConnection))


def driver_path(cls: type[Connection] | type[SyncConnection]) -> str:
    """Return ``module:QualName`` of a driver class, the name the child imports.

    Raises:
        ConfigError: for a class the child cannot import (defined in
            ``__main__`` or inside a function).
    """
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise ConfigError(
            f"driver class {cls.__qualname__} cannot run isolated: the child process imports "
            "it by name, so define it at the top level of an importable module",
            path="isolation",
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "unknown exit status"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _retrieve(task: asyncio.Task[Any]) -> None:
    # A start nobody waits for any more (its connect attempt timed out) must
    # not log "exception was never retrieved"; the next attempt starts anew.
    if not task.cancelled():
        task.exception()


class _Child:
    """One child process and what the parent keeps about it."""

    def __init__(self, proc: subprocess.Popen[bytes], channel: FrameChannel) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.channel = channel
        self.ps = psutil.Process(proc.pid)
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.last_beat = time.monotonic()
        #: Seconds the parent held the child stopped since its last beat.
        self.paused = 0.0
        self.stopped_since: float | None = None
        self.calls: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 1
        #: Why the parent ended it ("close", "heartbeat_missed", "memory_limit"), or None.
        self.end_reason: str | None = None
        self.ended: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.stats: dict[str, Any] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.duty: DutyCycle | None = None
        self.cgroup: CgroupCpu | None = None
        self.cpu_percent: float | None = None
        self._cpu_sample: tuple[float, float] | None = None

    def is_alive(self) -> bool:
        return not self.channel.is_closed

    def silence(self, now: float) -> float:
        """Seconds since the last beat, minus the time the parent held it stopped."""
        held = self.paused
        if self.stopped_since is not None:
            held += now - self.stopped_since
        return now - self.last_beat - held

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system + times.children_user + times.children_system)

    def sample_cpu(self) -> None:
        now, used = time.monotonic(), self.cpu_seconds()
        if self._cpu_sample is not None and now > self._cpu_sample[0]:
            self.cpu_percent = round(
                100.0 * (used - self._cpu_sample[1]) / (now - self._cpu_sample[0]), 2
            )
        self._cpu_sample = (now, used)

    def stop(self) -> None:
        if self.stopped_since is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGSTOP)
            self.stopped_since = time.monotonic()

    def cont(self) -> None:
        if self.stopped_since is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
            self.paused += time.monotonic() - self.stopped_since
            self.stopped_since = None


class ProcessConnection(Connection):
    """Runs a driver class in a child process; the supervisor runs this like any driver.

    Built by the manager for ``isolation: "process"`` (``driver_class`` is the
    connection type's class, ``config`` its typed config, validated here
    once at construction, no I/O). ``context`` stays in the gateway: the
    child's driver gets None.

    Example:
        manager.add_connection("plc", "modbus_tcp", {"host": "10.0.0.5"},
                               isolation={"mode": "process", "max_memory_mb": 200})
        conn = manager.get_connection("plc")      # a ProcessConnection
        conn.resources()["memory_mb"]
    """

    type_name = "process"

    def __init__(
        self,
        connection_id: str,
        config: Mapping[str, Any] | None = None,
        context: Any = None,
        *,
        driver_class: type[Connection] | type[SyncConnection],
        isolation: IsolationSpec | None = None,
        poll: Sequence[tuple[Sequence[str], float]] = (),
        request_timeout: float = 5.0,
    ) -> None:
        super().__init__(connection_id, config, context)
        #: The poll groups the child reads on its own timers (``poll: "child"``).
        self.child_polls = [(list(tags), float(interval)) for tags, interval in poll]
        self._request_timeout = request_timeout
        #: The driver class the child runs, built here once to validate the config.
        self.inner: Connection | SyncConnection = driver_class(connection_id, self.config, context)
        self.cfg = self.inner.cfg
        self.driver_class = driver_class
        self.driver_path = driver_path(driver_class)
        self.isolation = isolation if isolation is not None else IsolationSpec()
        self._child: _Child | None = None
        self._spawn_task: asyncio.Task[_Child] | None = None
        self._link_up = False
        self._escalation = (
            MemoryEscalation(
                self.isolation.max_memory_mb,
                warn_at=self.isolation.memory_warn_at,
                throttle_at=self.isolation.memory_throttle_at,
            )
            if self.isolation.max_memory_mb is not None
            else None
        )
        self._base_stats: dict[str, int] = dict.fromkeys(_STAT_COPY, 0)
        self._reaper: asyncio.Task[None] | None = None
        #: Children started; each one after the first is a restart.
        self.children_started = 0
        #: Children that ended without the parent asking (crash, kill -9, limits, pulse).
        self.child_failures = 0
        #: How the last child ended, for the status and the cards.
        self.last_exit: str | None = None
        self.last_pid: int | None = None
        self.cpu_limit_mode: str | None = None
        self.priority_applied: int | None = None

    # -- the driver contract ---------------------------------------------------

    def check_tag(self, tag: str) -> None:
        """Check ``tag`` with the real driver class (no I/O)."""
        self.inner.check_tag(tag)

    def is_connected(self) -> bool:
        """True while the child is alive and its driver's link is up."""
        child = self._child
        return self._link_up and child is not None and child.is_alive()

    async def connect(self) -> None:
        """Start the child if none runs, then connect its driver."""
        child = await self._ensure_child()
        await self._call(child, "connect", [self.config])
        self._link_up = True
        if self.child_polls:
            await self._call(child, "poll_start", [self.child_polls, self._request_timeout])

    async def disconnect(self) -> None:
        """Disconnect the child's driver; the child stays for the next link."""
        self._link_up = False
        child = self._child
        if child is not None and child.is_alive():
            with contextlib.suppress(Exception):
                await self._call(child, "disconnect", [])

    async def on_stopped(self) -> None:
        """The connection was stopped: end the child (CLOSE, then SIGKILL after a grace)."""
        await self.aclose()

    async def health_check(self) -> bool:
        """Run the driver's health check in the child."""
        return bool(await self._call(self._live_child(), "health_check", []))

    async def read(self, tag: str) -> Any:
        """Read one tag in the child."""
        return await self._call(self._live_child(), "read", [tag])

    async def read_many(self, tags: Sequence[str]) -> dict[str, Any]:
        """Read a poll group in the child: one frame out, one back."""
        values, refused = await self._call(self._live_child(), "read_many", [list(tags)])
        if refused:
            for tag, chain in refused.items():
                values[tag] = error_from_wire(chain, self.connection_id)
        results: dict[str, Any] = values
        return results

    async def write(self, tag: str, value: Any) -> None:
        """Write one tag in the child."""
        await self._call(self._live_child(), "write", [tag, value])

    async def identity(self) -> str | None:
        """The device identity, from the child's driver."""
        result = await self._call(self._live_child(), "identity", [])
        return None if result is None else str(result)

    async def on_reset(self) -> None:
        """Run the driver's re-provisioning hook in the child."""
        await self._call(self._live_child(), "on_reset", [])

    async def invoke(self, name: str, *args: Any) -> Any:
        """Call a public method of the child's driver (``request``, ``send_data``...).

        Arguments and the result cross as data (see `edgelink.isolation.ipc`).
        """
        return await self._call(self._live_child(), "invoke", [name, list(args)])

    def __getattr__(self, name: str) -> Any:
        # A request method of the real driver (tcp's request(b), ...) as an async
        # call in the child, so execute_with_retry(lambda c: c.request(b)) works.
        # Only names the driver class itself defines: probes of optional hooks
        # (getattr(conn, "x", None)) still see nothing.
        cls = self.__dict__.get("driver_class")
        if (
            cls is None
            or name.startswith("_")
            or name in _BASE_NAMES
            or not callable(getattr(cls, name, None))
        ):
            raise AttributeError(name)
        return functools.partial(self.invoke, name)

    # -- the child's life ------------------------------------------------------

    def _live_child(self) -> _Child:
        child = self._child
        if child is None or not child.is_alive():
            raise ConnectError(
                "the isolated driver's process is not running", connection_id=self.connection_id
            )
        return child

    async def _call(self, child: _Child, method: str, args: list[Any]) -> Any:
        if not child.is_alive():
            raise ConnectError(
                f"the isolated driver's process has ended ({self.last_exit})",
                connection_id=self.connection_id,
            )
        call_id = child.next_id
        child.next_id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        child.calls[call_id] = fut
        child.channel.send([Kind.CALL, call_id, method, args])
        try:
            return await fut
        finally:
            child.calls.pop(call_id, None)

    async def _ensure_child(self) -> _Child:
        child = self._child
        if child is not None and child.is_alive():
            return child
        task = self._spawn_task
        if task is None or task.done():
            if self._reaper is not None and not self._reaper.done():
                # The previous child's end is reported before a new one starts.
                await asyncio.shield(self._reaper)
            task = self._spawn_task = asyncio.get_running_loop().create_task(
                self._spawn(), name=f"edgelink[{self.connection_id}].child.spawn"
            )
            task.add_done_callback(_retrieve)
        # Shielded: a connect attempt that times out leaves the child starting,
        # and the next attempt waits for the same start (bounded by start_timeout).
        return await asyncio.shield(task)

    async def _spawn(self) -> _Child:
        spec = self.isolation
        loop = asyncio.get_running_loop()
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [_EDGELINK_ROOT, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
        )
        try:
            # Popen blocks for the fork/exec only (milliseconds); in a thread, a
            # start cancelled meanwhile could leak the child it makes.
            proc = subprocess.Popen(  # noqa: S603, ASYNC220 - our own interpreter and module
                [sys.executable, "-m", "edgelink.isolation.child", str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            parent_sock.close()
            raise ConnectError(
                f"cannot start the isolated driver's process: {exc}",
                connection_id=self.connection_id,
                cause=exc,
            ) from exc
        finally:
            child_sock.close()
        holder: list[_Child] = []
        channel = FrameChannel(
            lambda frame: self._on_frame(holder[0], frame),
            lambda exc: self._on_channel_closed(holder[0], exc),
        )
        await loop.create_unix_connection(lambda: channel, sock=parent_sock)
        child = _Child(proc, channel)
        holder.append(child)
        self.children_started += 1
        self.last_pid = child.pid
        self._stats_base_from(child)
        init_fut: asyncio.Future[Any] = loop.create_future()
        child.calls[0] = init_fut
        sys_path = [p for p in sys.path if p]
        channel.send(
            [
                Kind.INIT,
                self.connection_id,
                self.driver_path,
                self.config,
                {
                    "heartbeat_interval": spec.heartbeat_interval,
                    "flush_interval": spec.flush_interval,
                    "sys_path": sys_path,
                },
            ]
        )
        try:
            async with asyncio.timeout(spec.start_timeout):
                await init_fut
        except BaseException:
            child.end_reason = child.end_reason or "start_failed"
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        self._child = child
        self._apply_priority(child)
        self._apply_cpu_limit(child)
        child.last_beat = time.monotonic()
        child.tasks.append(
            loop.create_task(
                self._run_watch(child), name=f"edgelink[{self.connection_id}].child.watch"
            )
        )
        self.emit_event(
            EventType.CHILD_STARTED,
            pid=child.pid,
            restarts=self.children_started - 1,
            nice=self.priority_applied,
            cpu_limit=self.cpu_limit_mode,
        )
        return child

    def _stats_base_from(self, child: _Child) -> None:
        # Counters of the children before this one stay in the totals.
        stats = self.stats
        for key in _STAT_COPY:
            self._base_stats[key] = int(stats[key])

    def _apply_priority(self, child: _Child) -> None:
        nice = self.isolation.nice
        try:
            current = child.ps.nice()
            if nice != current:
                child.ps.nice(nice)
            self.priority_applied = nice
        except (psutil.AccessDenied, PermissionError) as exc:
            self.priority_applied = child.ps.nice()
            self.emit_event(
                EventType.PRIORITY_REFUSED,
                pid=child.pid,
                wanted=nice,
                nice=self.priority_applied,
                reason=f"setting nice {nice} needs CAP_SYS_NICE or root ({exc}); "
                f"the child runs at nice {self.priority_applied}",
            )
        except psutil.NoSuchProcess:
            pass

    def _apply_cpu_limit(self, child: _Child) -> None:
        share = self.isolation.max_cpu_share
        if share is None:
            return
        name = _SAFE_NAME.sub("_", f"edgelink-{self.connection_id}-{child.pid}")
        group = CgroupCpu.create(name, child.pid, share)
        if isinstance(group, CgroupCpu):
            child.cgroup = group
            self.cpu_limit_mode = "cgroup"
            why = None
        else:
            self._start_duty(child, share)
            self.cpu_limit_mode = "duty_cycle"
            why = group
        self.emit_event(
            EventType.CPU_LIMITED, pid=child.pid, share=share, mode=self.cpu_limit_mode, reason=why
        )

    def _start_duty(self, child: _Child, share: float) -> None:
        if child.duty is not None:
            child.duty.set_share(share)
            return
        child.duty = DutyCycle(share=share, burst=max(0.005, share * self.isolation.cpu_period))
        child.tasks.append(
            asyncio.get_running_loop().create_task(
                self._run_duty(child), name=f"edgelink[{self.connection_id}].child.duty"
            )
        )

    async def _run_duty(self, child: _Child) -> None:
        duty = child.duty
        assert duty is not None
        period = self.isolation.cpu_period
        try:
            while child.is_alive():
                run = duty.decide(time.monotonic(), child.cpu_seconds())
                if run:
                    child.cont()
                else:
                    child.stop()
                await asyncio.sleep(period)
        except psutil.NoSuchProcess:
            return
        finally:
            child.cont()

    async def _run_watch(self, child: _Child) -> None:
        """The health pulse and the resource samples of one child."""
        spec = self.isolation
        tick = min(spec.monitor_interval, spec.pulse_timeout / 4)
        next_sample = 0.0
        try:
            while child.is_alive():
                now = time.monotonic()
                silence = child.silence(now)
                if silence > spec.pulse_timeout:
                    self.emit_event(
                        EventType.HEARTBEAT_MISSED,
                        pid=child.pid,
                        silence=round(silence, 3),
                        timeout=spec.pulse_timeout,
                    )
                    self._kill(child, "heartbeat_missed")
                    return
                if now >= next_sample:
                    next_sample = now + spec.monitor_interval
                    child.sample_cpu()
                    if self._escalation is not None and self._check_memory(child):
                        return
                await asyncio.sleep(tick)
        except psutil.NoSuchProcess:
            return

    def _check_memory(self, child: _Child) -> bool:
        """Apply the RAM escalation to a fresh sample; return True if the child was killed."""
        esc = self._escalation
        assert esc is not None
        rss_mb = child.ps.memory_info().rss / _MB
        data = {"pid": child.pid, "memory_mb": round(rss_mb, 1), "limit_mb": esc.limit_mb}
        for step in esc.update(rss_mb):
            if step is MemoryStep.WARN:
                self.emit_event(EventType.MEMORY_WARNING, **data, at=esc.warn_at)
            elif step is MemoryStep.THROTTLE:
                self.emit_event(
                    EventType.MEMORY_THROTTLED,
                    **data,
                    at=esc.throttle_at,
                    cpu_share=self.isolation.throttle_cpu_share,
                )
                share = min(self.isolation.throttle_cpu_share, self.isolation.max_cpu_share or 1.0)
                self._start_duty(child, share)
            elif step is MemoryStep.RELEASE:
                self.emit_event(EventType.MEMORY_RELEASED, **data)
                if child.duty is not None:
                    if self.isolation.max_cpu_share is not None and child.cgroup is None:
                        child.duty.set_share(self.isolation.max_cpu_share)
                    else:
                        child.duty.set_share(float(os.cpu_count() or 1))
            elif step is MemoryStep.KILL:
                self.emit_event(EventType.MEMORY_KILLED, **data)
                self._kill(child, "memory_limit")
                return True
        return False

    def _kill(self, child: _Child, reason: str) -> None:
        """End a child at once (SIGKILL); its exit is reported like any other."""
        if child.end_reason is None:
            child.end_reason = reason
        with contextlib.suppress(ProcessLookupError):
            child.proc.kill()

    async def _end_child(self, child: _Child) -> None:
        """End a child politely (CLOSE, then SIGKILL after `CLOSE_GRACE`) and wait for it."""
        if child.end_reason is None:
            child.end_reason = "close"
        child.cont()
        if child.is_alive():
            child.channel.send_now([Kind.CLOSE])
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await asyncio.shield(child.ended)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
        await asyncio.shield(child.ended)
        if self._reaper is not None:
            await asyncio.shield(self._reaper)

    # -- frames from the child ---------------------------------------------------

    def _on_frame(self, child: _Child, frame: list[Any]) -> None:
        kind = frame[0]
        if kind == Kind.DATA:
            owner = self.owner
            if owner is None:
                return
            on_data = owner.on_data
            for tag, value, quality, ts, reason in frame[1]:
                if reason is None:
                    on_data(tag, value, quality, ts)
                else:
                    on_data(tag, value, quality, ts, reason)
        elif kind == Kind.GOOD:
            owner = self.owner
            batch_hook = getattr(owner, "on_good_values", None)
            for ts, flat in frame[1]:
                if batch_hook is not None:
                    batch_hook(flat, ts)
                elif owner is not None:
                    for i in range(0, len(flat), 2):
                        owner.on_data(flat[i], flat[i + 1], "good", ts)
        elif kind == Kind.RESULT:
            fut = child.calls.get(frame[1])
            if fut is not None and not fut.done():
                if frame[2]:
                    fut.set_result(frame[3])
                else:
                    fut.set_exception(error_from_wire(frame[3], self.connection_id))
        elif kind == Kind.BEAT:
            child.last_beat = time.monotonic()
            child.paused = 0.0
            self._copy_stats(frame[1])
        elif kind == Kind.SIGNAL:
            self._on_signal(frame[1], frame[2])
        else:
            logger.warning("%s: unexpected frame from the child: %r", self.connection_id, kind)

    def _copy_stats(self, stats: Mapping[str, Any]) -> None:
        own = self.stats
        base = self._base_stats
        for key in _STAT_COPY:
            own[key] = base[key] + int(stats.get(key) or 0)
        if stats.get("last_activity") is not None:
            own.last_activity = float(stats["last_activity"])

    def _on_signal(self, name: str, arg: Any) -> None:
        if name == "lost":
            self.connection_lost(None if arg is None else error_from_wire(arg, self.connection_id))
        elif name == "tx_drop":
            self.mark_tx_drop()
        elif name == "degraded":
            self.report_degraded(arg)
        elif name == "activity":
            self.record_activity()

    def _on_channel_closed(self, child: _Child, exc: BaseException | None) -> None:
        # The socket closes when the child exits (or hangs up): fail what waits,
        # then reap it and report in a task of our own.
        desc = child.end_reason or "the process ended"
        for fut in child.calls.values():
            if not fut.done():
                fut.set_exception(
                    ConnectError(
                        f"the isolated driver's process ended ({desc})",
                        connection_id=self.connection_id,
                    )
                )
        child.calls.clear()
        self._reaper = asyncio.get_running_loop().create_task(
            self._reap(child), name=f"edgelink[{self.connection_id}].child.reap"
        )

    async def _reap(self, child: _Child) -> None:
        for task in child.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        deadline = time.monotonic() + REAP_TIMEOUT
        delay = 0.001
        while child.proc.poll() is None:
            if time.monotonic() > deadline:
                # It closed the socket but lives on: it cannot serve any more.
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                deadline = float("inf")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        for task in child.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if child.cgroup is not None:
            child.cgroup.close()
        returncode = child.proc.returncode
        self.last_exit = f"{child.end_reason or 'crashed'}: {_describe_exit(returncode)}"
        asked = child.end_reason == "close"
        if not asked:
            self.child_failures += 1
            self.last_error = f"child process {child.pid} {self.last_exit}"
        if self._escalation is not None:
            self._escalation.reset()
        if self._child is child:
            self._child = None
        if not child.ended.done():
            child.ended.set_result(returncode)
        self.emit_event(
            EventType.CHILD_EXITED,
            pid=child.pid,
            returncode=returncode,
            reason=child.end_reason or "crashed",
            detail=_describe_exit(returncode),
        )
        if self._link_up and not asked:
            self._link_up = False
            self.connection_lost(
                ConnectError(
                    f"the isolated driver's process {self.last_exit}",
                    connection_id=self.connection_id,
                )
            )

    async def aclose(self) -> None:
        """End the child, if any (idempotent); the supervisor's stop does this too."""
        if self._spawn_task is not None:
            await cancel_and_wait(self._spawn_task)
        child = self._child
        if child is not None:
            await self._end_child(child)
        if self._reaper is not None:
            await asyncio.shield(self._reaper)

    # -- figures -----------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The running child's pid, or None."""
        child = self._child
        return child.pid if child is not None and child.is_alive() else None

    def resources(self) -> dict[str, Any]:
        """Return the seed's resource dict of this instance, measured (psutil) on its child.

        CPU is the share of one core since the previous sample of the watch
        (``monitor_interval``); memory is the child's RSS; network packets are
        the driver's own counters (the kernel does not count per process).
        While no child runs, the process figures are None.
        """
        child = self._child
        stats = self.stats.as_dict()
        figures: dict[str, Any] = {
            "connection_id": self.connection_id,
            "isolation": "process",
            "pid": None,
            "cpu_percent": None,
            "memory_mb": None,
            "memory_percent": None,
            "disk_io_read_mb": None,
            "disk_io_write_mb": None,
            "network_packets_sent": stats["packets_sent"],
            "network_packets_recv": stats["packets_received"],
            "uptime_seconds": None,
            "error_count": stats["errors"] + self.child_failures,
            "last_error": self.last_error,
            "restarts": max(0, self.children_started - 1),
            "child_failures": self.child_failures,
            "last_exit": self.last_exit,
            "nice": self.priority_applied,
            "priority": self.isolation.priority,
            "max_memory_mb": self.isolation.max_memory_mb,
            "max_cpu_share": self.isolation.max_cpu_share,
            "cpu_limit": self.cpu_limit_mode,
            "throttled": bool(child is not None and child.stopped_since is not None),
            "memory_throttled": bool(self._escalation is not None and self._escalation.throttled),
        }
        if child is None or not child.is_alive():
            return figures
        try:
            with child.ps.oneshot():
                figures["pid"] = child.pid
                figures["cpu_percent"] = child.cpu_percent
                figures["memory_mb"] = round(child.ps.memory_info().rss / _MB, 2)
                figures["memory_percent"] = round(child.ps.memory_percent(), 3)
                with contextlib.suppress(OSError, psutil.AccessDenied):
                    io = child.ps.io_counters()
                    figures["disk_io_read_mb"] = round(io.read_bytes / _MB, 3)
                    figures["disk_io_write_mb"] = round(io.write_bytes / _MB, 3)
                figures["uptime_seconds"] = round(time.time() - child.started_at, 1)
        except psutil.NoSuchProcess:
            figures["pid"] = None
        return figures

    def __repr__(self) -> str:
        return (
            f"<ProcessConnection {self.connection_id} {self.driver_path} pid={self.pid} "
            f"{self.status} restarts={max(0, self.children_started - 1)}>"
        )
