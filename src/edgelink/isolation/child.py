"""The child process of an isolated instance: the real driver, on its own event loop.

Started by `edgelink.isolation.parent.ProcessConnection` as ``python -m
edgelink.isolation.child <fd>`` with one end of a socketpair. It waits for
the ``INIT`` frame (driver class, typed config), builds the driver, and then
does what the parent's calls say (connect, health_check, read_many, write,
...). What the driver reports on its own (datapoints it is pushed, a lost
link, a TX drop, a degraded link) goes back as frames, datapoints batched per
loop turn. A health pulse (``BEAT``, carrying the driver's traffic counters)
leaves every ``heartbeat_interval`` seconds from the loop itself, so a loop
that hangs stops the pulse and the parent restarts the child.

The child never decides anything about the link: no state, no retries, no
backoff. When the socket closes (the parent is gone) the child exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from edgelink.clock import Clock, SystemClock
from edgelink.connection import AnyConnection, Connection, DriverAdapter, SyncConnection
from edgelink.errors import Action, ConfigError, DeviceError, classify
from edgelink.isolation.ipc import FrameChannel, Kind, error_to_wire
from edgelink.state import ConnectionState
from edgelink.supervisor.policy import describe

__all__ = ["main"]

logger = logging.getLogger("edgelink.isolation.child")

#: Least seconds between two ``activity`` signals (the parent's data watchdog).
ACTIVITY_INTERVAL = 1.0
#: Seconds the driver's disconnect may take when the parent says close.
CLOSE_TIMEOUT = 2.0
#: Datapoints in one DATA frame at most (a frame is sent early when full).
MAX_BATCH = 4096


def load_driver_class(path: str) -> type[Connection] | type[SyncConnection]:
    """Import ``module:QualName`` and check it is a driver class.

    Raises:
        ConfigError: if it cannot be imported or is no driver class.
    """
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load driver class {path!r}: {exc}", path="type") from exc
    if not (isinstance(obj, type) and issubclass(obj, Connection | SyncConnection)):
        raise ConfigError(f"{path!r} is not a driver class", path="type")
    return obj


class ChildOwner:
    """What the driver in the child reports to: frames to the parent (a `ConnectionOwner`)."""

    def __init__(self, channel: FrameChannel, loop: asyncio.AbstractEventLoop) -> None:
        self._channel = channel
        self._loop = loop
        self._thread_id = threading.get_ident()
        self._batch: list[list[Any]] = []
        self._good: list[list[Any]] = []
        self._good_count = 0
        self._activity_at = float("-inf")
        self._clock = SystemClock()
        self._timer: asyncio.TimerHandle | None = None
        self.connected_at: float | None = None
        #: Seconds datapoints are gathered before they leave (0: the same loop turn).
        self.flush_interval = 0.0

    @property
    def state(self) -> ConnectionState:
        """The parent owns the state; the child only knows whether it is connected."""
        return (
            ConnectionState.CONNECTED
            if self.connected_at is not None
            else ConnectionState.CONNECTING
        )

    @property
    def last_error(self) -> str | None:
        """The parent keeps the last error."""
        return None

    @property
    def reconnect_attempts(self) -> int:
        """The parent counts attempts."""
        return 0

    @property
    def clock(self) -> Clock:
        """The system clock (the parent's manual clock does not cross processes)."""
        return self._clock

    def _on_loop(self, fn: Callable[..., object], *args: Any) -> None:
        if threading.get_ident() == self._thread_id:
            fn(*args)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def on_data(
        self, tag: str, value: Any, quality: str, ts: float | None, reason: str | None = None
    ) -> None:
        """Queue a datapoint; one ``DATA`` frame per loop turn carries them all."""
        self._on_loop(
            self._queue, [tag, value, quality, ts if ts is not None else time.time(), reason]
        )

    def _queue(self, item: list[Any]) -> None:
        if self._good:
            self._flush()  # keep the order of a tag's good and bad reports
        batch = self._batch
        batch.append(item)
        if len(batch) == 1:
            # Every wake-up of the parent costs both processes a context
            # switch, more than the frame itself: gather for flush_interval.
            if self.flush_interval > 0:
                self._timer = self._loop.call_later(self.flush_interval, self._flush)
            else:
                self._loop.call_soon(self._flush)
        elif len(batch) >= MAX_BATCH:
            self._flush()

    def queue_reads(self, flat: list[Any], ts: float) -> None:
        """Queue the good values of one read, flat (``tag, value, ...``). Loop thread only."""
        if self._batch:
            self._flush()
        good = self._good
        good.append([ts, flat])
        self._good_count += len(flat)
        if len(good) == 1:
            if self.flush_interval > 0:
                self._timer = self._loop.call_later(self.flush_interval, self._flush)
            else:
                self._loop.call_soon(self._flush)
        elif self._good_count >= 2 * MAX_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._good:
            good, self._good = self._good, []
            self._good_count = 0
            self._channel.send([Kind.GOOD, good])
        batch, self._batch = self._batch, []
        if batch:
            self._channel.send([Kind.DATA, batch])

    def _signal(self, name: str, arg: Any = None) -> None:
        self._flush()  # datapoints reported before a loss arrive before it
        self._channel.send([Kind.SIGNAL, name, arg])

    def on_tx_drop(self) -> None:
        """A frame broke mid-way: tell the parent."""
        self._on_loop(self._signal, "tx_drop")

    def on_lost(self, exc: BaseException | None) -> None:
        """The driver's link is gone: tell the parent, with the cause."""
        self._on_loop(self._signal, "lost", None if exc is None else error_to_wire(exc))

    def on_activity(self) -> None:
        """The link showed life: tell the parent, at most once a second."""
        now = time.monotonic()
        if now - self._activity_at >= ACTIVITY_INTERVAL:
            self._activity_at = now
            self._on_loop(self._signal, "activity")

    def on_degraded(self, reason: str | None) -> None:
        """The link works but not fully: tell the parent."""
        self._on_loop(self._signal, "degraded", reason)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> bool:
        """Run ``callback(*args)`` on the child's loop."""
        if self._loop.is_closed():
            return False
        self._on_loop(callback, *args)
        return True

    def status_dict(self) -> dict[str, Any]:
        """The parent has the full status; the child gives what it knows."""
        return {"status": str(self.state), "connected_at": self.connected_at}

    def flush(self) -> None:
        """Send queued datapoints now."""
        self._flush()


class ChildRuntime:
    """The driver and its calls in the child process."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.channel = FrameChannel(self._on_frame, self._on_close)
        self.done: asyncio.Future[None] = loop.create_future()
        self._driver: AnyConnection | None = None
        self._adapter: DriverAdapter | None = None
        self._owner: ChildOwner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._beat_task: asyncio.Task[None] | None = None
        self._poll_tasks: list[asyncio.Task[None]] = []

    # -- frames --------------------------------------------------------------

    def _on_frame(self, frame: list[Any]) -> None:
        kind = frame[0]
        if kind == Kind.CALL:
            self._spawn(self._answer(frame[1], frame[2], frame[3]))
        elif kind == Kind.INIT:
            self._init(frame[1], frame[2], frame[3], frame[4])
        elif kind == Kind.CLOSE:
            self._spawn(self._close())
        else:
            logger.warning("unexpected frame kind %r", kind)

    def _on_close(self, exc: BaseException | None) -> None:
        # The parent is gone (or closed us): nothing left to serve.
        if not self.done.done():
            self.done.set_result(None)

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _init(
        self, connection_id: str, driver_path: str, config: dict[str, Any], options: dict[str, Any]
    ) -> None:
        for entry in reversed(options.get("sys_path") or []):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        try:
            cls = load_driver_class(driver_path)
            driver = cls(connection_id, config, None)
        except Exception as exc:  # noqa: BLE001 - the parent gets every init failure
            self.channel.send_now([Kind.RESULT, 0, False, error_to_wire(exc)])
            return
        self._owner = ChildOwner(self.channel, self._loop)
        self._owner.flush_interval = float(options.get("flush_interval") or 0.0)
        driver.attach(self._owner)
        self._driver = driver
        self._adapter = DriverAdapter(driver)
        self.channel.send_now([Kind.RESULT, 0, True, os.getpid()])
        self._beat_task = self._loop.create_task(
            self._run_beat(float(options["heartbeat_interval"])),
            name=f"edgelink[{connection_id}].child.beat",
        )

    async def _run_beat(self, interval: float) -> None:
        driver = self._driver
        assert driver is not None
        while True:
            self.channel.send([Kind.BEAT, driver.stats.as_dict(), time.time()])
            await asyncio.sleep(interval)

    # -- calls ---------------------------------------------------------------

    async def _answer(self, call_id: int, method: str, args: list[Any]) -> None:
        try:
            value = await self._dispatch(method, args)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
            if self._owner is not None:
                self._owner.flush()
            self.channel.send([Kind.RESULT, call_id, False, error_to_wire(exc)])
            return
        if self._owner is not None:
            self._owner.flush()
        self.channel.send([Kind.RESULT, call_id, True, value])

    async def _dispatch(self, method: str, args: list[Any]) -> Any:
        adapter, owner, driver = self._adapter, self._owner, self._driver
        if adapter is None or owner is None or driver is None:
            raise ConfigError("the child has no driver (INIT failed)")
        if method == "read_many":
            results = await adapter.read_many(args[0])
            values: dict[str, Any] = {}
            refused: dict[str, Any] = {}
            for tag, value in results.items():
                if isinstance(value, DeviceError):
                    refused[tag] = error_to_wire(value)
                else:
                    values[tag] = value
            return [values, refused or None]
        if method == "read":
            return await adapter.read(args[0])
        if method == "write":
            await adapter.write(args[0], args[1])
            return None
        if method == "health_check":
            return await adapter.health_check()
        if method == "connect":
            if args and args[0] is not None:
                driver.use_endpoint(args[0])
            await adapter.connect()
            owner.connected_at = time.time()
            return None
        if method == "disconnect":
            owner.connected_at = None
            await self._stop_polls()
            await adapter.disconnect()
            return None
        if method == "poll_start":
            await self._stop_polls()
            for tags, interval in args[0]:
                self._poll_tasks.append(
                    self._loop.create_task(
                        self._run_poll(adapter, owner, list(tags), float(interval), float(args[1]))
                    )
                )
            return None
        if method == "identity":
            return await adapter.identity()
        if method == "on_reset":
            await adapter.on_reset()
            return None
        if method == "invoke":
            return await self._invoke(driver, args[0], args[1])
        raise NotImplementedError(f"unknown call {method!r}")

    async def _stop_polls(self) -> None:
        tasks, self._poll_tasks = self._poll_tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_poll(
        self,
        adapter: DriverAdapter,
        owner: ChildOwner,
        tags: list[str],
        interval: float,
        timeout: float,
    ) -> None:
        """Read one poll group every ``interval`` s and report what came back.

        The outcome of a read follows the supervisor's polling (the class of
        the error is the policy): a refused tag is reported bad with the
        reason, a crash in driver code makes the group's tags bad, a timeout
        is a TX drop and a broken link is lost; the parent's supervisor then
        reconnects, and the parent starts the polls again on the next link.
        """
        loop = self._loop
        next_at = loop.time()
        while True:
            try:
                async with asyncio.timeout(timeout):
                    results = await adapter.read_many(tags)
            except TimeoutError:
                owner.on_tx_drop()
                return
            except Exception as exc:  # noqa: BLE001 - classified like the supervisor's poll
                verdict = classify(exc)
                if verdict.action in (Action.REFUSED, Action.POISON):
                    ts = time.time()
                    for tag in tags:
                        owner.on_data(tag, None, "bad", ts, describe(exc))
                else:
                    owner.on_lost(exc)
                    return
            else:
                ts = time.time()
                flat: list[Any] = []
                for tag, value in results.items():
                    if isinstance(value, BaseException):
                        owner.on_data(tag, None, "bad", ts, describe(value))
                    else:
                        flat += (tag, value)
                if flat:
                    owner.queue_reads(flat, ts)
            next_at += interval
            delay = next_at - loop.time()
            if delay < 0:
                next_at, delay = loop.time(), 0.0  # overran: no burst to catch up
            await asyncio.sleep(delay)

    async def _invoke(self, driver: AnyConnection, name: str, args: list[Any]) -> Any:
        if name.startswith("_"):
            raise AttributeError(f"{name!r} is private")
        fn = getattr(driver, name)
        if not callable(fn):
            raise AttributeError(f"{type(driver).__name__}.{name} is not a method")
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _close(self) -> None:
        if self._adapter is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._adapter.disconnect()
        self.channel.close()
        if not self.done.done():
            self.done.set_result(None)

    async def aclose(self) -> None:
        """End the pulse and every call."""
        tasks = [t for t in (self._beat_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._adapter is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._adapter.disconnect()
        self.channel.abort()


async def _serve(fd: int) -> None:
    loop = asyncio.get_running_loop()
    runtime = ChildRuntime(loop)
    sock = socket.socket(fileno=fd)
    await loop.create_unix_connection(lambda: runtime.channel, sock=sock)
    try:
        await runtime.done
    finally:
        await runtime.aclose()


def main(argv: list[str] | None = None) -> int:
    """Run the child on the socket whose fd is the first argument; return the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: python -m edgelink.isolation.child <fd>\n")
        return 2
    # The gateway's Ctrl-C reaches the whole process group: the parent decides
    # when the child ends (CLOSE, or the socket closing), not the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=os.environ.get("EDGELINK_CHILD_LOG", "WARNING"),
        format="%(asctime)s child[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_serve(int(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
