"""The blocking facade, `SyncConnectionManager`, from plain threads against real loopback peers.

The tests themselves are plain functions: the peer runs on its own event
loop in a background thread (`PeerThread`), and the facade runs the manager
on its own loop thread, so the test thread only ever makes blocking calls.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import queue
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from operator import methodcaller
from typing import Any, TypeVar

import pytest

from conftest import FAST, tcp
from edgelink import ConnectionManager, ConnectionState, SyncConnection, SyncConnectionManager
from edgelink.drivers.tcp import TcpConnection
from edgelink.testing import ManualClock, PingPongPeer

T = TypeVar("T")
S = ConnectionState
NO_WATCHDOG = 1e9
MakeSync = Callable[..., SyncConnectionManager]


class PeerThread:
    """A `PingPongPeer` served by its own event loop in a background thread."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-peer-loop")
        self.peer = PingPongPeer(**kwargs)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
        """Run ``coro`` on the peer's loop and block for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.peer.port

    @property
    def values(self) -> dict[str, str]:
        return self.peer.values

    def start(self) -> None:
        self.run(self.peer.start())

    def stop(self) -> None:
        self.run(self.peer.stop())

    def __enter__(self) -> PeerThread:
        self.thread.start()
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def threaded_peer() -> Iterator[PeerThread]:
    """A PING/PONG device on a free loopback port, on its own loop thread."""
    with PeerThread(values={"temperature": "21.5", "power": "230"}) as p:
        yield p


@pytest.fixture
def make_sync() -> Iterator[MakeSync]:
    """Build facades with fast timeouts; every one is closed at teardown."""
    made: list[SyncConnectionManager] = []

    def make(**settings: Any) -> SyncConnectionManager:
        sync = SyncConnectionManager(**{**FAST, **settings})
        made.append(sync)
        return sync

    yield make
    for sync in made:
        sync.close()


def on_loop(sync: SyncConnectionManager, coro: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
    """Run ``coro`` on the facade's loop thread (for the manual clock and thread probes)."""
    return asyncio.run_coroutine_threadsafe(coro, sync.loop).result(timeout)


async def _ident() -> int:
    return threading.get_ident()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BlockingPing(SyncConnection):
    """A small blocking driver: the facade over a manager over worker threads."""

    type_name = "blocking_ping"

    def __init__(self, connection_id: str, config: Any, context: Any = None) -> None:
        super().__init__(connection_id, config, context)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def connect(self) -> bool:
        self._sock = socket.create_connection((self.config["host"], self.config["port"]), 1.0)
        return True

    def disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def is_connected(self) -> bool:
        return self._sock is not None

    def request(self, line: str) -> str:
        with self._lock:
            assert self._sock is not None
            self._sock.sendall(line.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = self._sock.recv(1024)
                if not chunk:
                    raise ConnectionResetError("peer closed")
                data += chunk
        return data.decode().strip()

    def health_check(self) -> bool:
        return self.request("PING") == "PONG"

    def read(self, tag: str) -> str:
        return self.request(f"{tag}?")


class SlowClose(TcpConnection):
    """A tcp device whose disconnect takes a while and says when it begins."""

    type_name = "slow_close"
    closing = threading.Event()

    async def disconnect(self) -> None:
        SlowClose.closing.set()
        await asyncio.sleep(0.2)
        await super().disconnect()


# -- lifecycle ------------------------------------------------------------------


def test_with_block_connects_reads_and_stops(make_sync: MakeSync, threaded_peer: PeerThread):
    """Test that `with` starts the manager and its end closes every link and the loop."""
    sync = make_sync()
    with sync:
        conn = sync.add_connection("dev", "tcp", tcp(threaded_peer.port), name="Device")
        sync.wait_for_state("dev", "connected", timeout=5)
        assert sync.execute_with_retry("dev", lambda c: c.read("temperature")) == "21.5"
        sync.execute_with_retry("dev", lambda c: c.write("setpoint", 7))
        assert threaded_peer.values["setpoint"] == "7"
        st = sync.get_status("dev")
        assert st["status"] == "connected" and st["name"] == "Device" and st["type"] == "tcp"
        assert st["stats"]["packets_sent"] >= 3 and st["stats"]["bytes_received"] > 0
        assert set(sync.get_status()) == {"dev"}
        assert sync.get_connection("dev") is conn and sync.connections == {"dev": conn}
        assert sync.get_state("dev") is S.CONNECTED
        assert "connected=1" in repr(sync)
    assert sync.get_state("dev") is S.DISCONNECTED
    assert sync.loop.is_closed()
    wait_until(lambda: threaded_peer.peer.connections == 0)


def test_from_config_and_explicit_start_stop(make_sync: MakeSync, threaded_peer: PeerThread):
    """Test that a facade built from a config dict starts, stops and starts again."""
    config = {
        "settings": FAST,
        "connections": {"dev": {"type": "tcp", "config": tcp(threaded_peer.port)}},
    }
    sync = SyncConnectionManager.from_config(config)
    try:
        sync.start()
        sync.wait_for_state("dev", S.CONNECTED, timeout=5)
        sync.stop()
        assert sync.get_state("dev") is S.DISCONNECTED
        assert sync.get_status("dev")["reason"] == "shutdown"
        sync.start()
        sync.wait_for_state("dev", "connected", timeout=5)
        assert sync.execute_with_retry("dev", lambda c: c.read("power")) == "230"
    finally:
        sync.close()
    assert sync.get_state("dev") is S.DISCONNECTED


def test_wait_for_state_times_out(make_sync: MakeSync):
    """Test that wait_for_state raises TimeoutError, not hangs, when the state never comes."""
    with make_sync(reconnect_initial_delay=0.05) as sync:
        sync.add_connection("dev", "tcp", tcp(free_port()))
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            sync.wait_for_state("dev", "connected", timeout=0.3)
        assert time.monotonic() - started < 2.0
        assert sync.get_state("dev") in (S.CONNECTING, S.RECONNECTING)


def test_lifecycle_calls_and_blocking_driver(make_sync: MakeSync, threaded_peer: PeerThread):
    """Test that stop/start/kill/resume/remove work by id, with a blocking driver too."""
    with make_sync() as sync:
        sync.register_connection_type("blocking_ping", BlockingPing)
        sync.add_connection("blk", "blocking_ping", tcp(threaded_peer.port))
        sync.add_connection("dev", "tcp", tcp(threaded_peer.port))
        sync.wait_for_state("blk", "connected", timeout=5)
        # A blocking driver's op runs in a worker thread, never on the loop.
        loop_thread = on_loop(sync, _ident())
        where: list[int] = []

        def op(c: BlockingPing) -> str:
            where.append(threading.get_ident())
            return c.read("temperature")

        assert sync.execute_with_retry("blk", op) == "21.5"
        assert where and where[0] not in (loop_thread, threading.get_ident())
        sync.stop_connection("blk")
        assert sync.get_status("blk")["desired"] == "stopped"
        sync.start_connection("blk")
        sync.wait_for_state("blk", "connected", timeout=5)
        sync.kill_connection("blk")
        assert sync.get_status("blk")["reason"] == "killed"
        sync.resume("blk")
        sync.wait_for_state("blk", "connected", timeout=5)
        sync.remove_connection("blk")
        assert sync.get_connection("blk") is None and set(sync.get_status()) == {"dev"}


def test_reconnect_with_manual_clock(make_sync: MakeSync, threaded_peer: PeerThread):
    """Test that a lost peer is reconnected after the backoff the manual clock releases."""
    clock = ManualClock()
    with make_sync(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60) as sync:
        sync.add_connection("dev", "tcp", tcp(threaded_peer.port))
        sync.wait_for_state("dev", "connected", timeout=5)
        threaded_peer.stop()
        sync.wait_for_state("dev", "reconnecting", timeout=2)
        delay = on_loop(sync, clock.wait_for_timer(lambda d: d < 1e6))
        assert delay == 0.1
        threaded_peer.start()
        on_loop(sync, clock.advance(delay))
        sync.wait_for_state("dev", "connected", timeout=5)
        assert sync.get_status("dev")["stats"]["reconnects"] == 1


def test_router_from_threads(make_sync: MakeSync, threaded_peer: PeerThread):
    """Test that routes load and datapoints route, write and land in the data space from threads."""
    with make_sync(request_timeout=2.0) as sync:
        sync.add_connection("dev", "tcp", tcp(threaded_peer.port))
        sync.wait_for_state("dev", "connected", timeout=5)
        diff = sync.load_routes(
            {
                "routes": [
                    {"id": "r", "from": "calc.in", "to": "dev.setpoint", "transform": "scale(2)"}
                ]
            }
        )
        assert diff.added == ["r"]
        results: list[bool] = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(sync.route_data("calc", "in", i)))
            for i in range(1, 5)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert results == [True] * 4
        sync.drain_routes()
        point = sync.get_datapoint("calc.in")
        assert point is not None and point.value in (1, 2, 3, 4)
        assert sync.execute_with_retry("dev", lambda c: c.read("setpoint")) == str(point.value * 2)
        assert sync.get_datapoint("nowhere.x") is None


# -- threads ----------------------------------------------------------------------


def test_eight_threads_share_the_facade(make_sync: MakeSync, threaded_peer: PeerThread):
    """Test that 8 threads using one facade get correct results, no errors and no deadlock."""
    rounds = 30
    with make_sync(request_timeout=2.0) as sync:
        for cid in ("a", "b"):
            sync.add_connection(cid, "tcp", tcp(threaded_peer.port))
        for cid in ("a", "b"):
            sync.wait_for_state(cid, "connected", timeout=5)
        barrier = threading.Barrier(8, timeout=5)
        errors: list[tuple[int, BaseException]] = []
        restarts = {"a": 0, "b": 0}

        def worker(i: int) -> None:
            # Threads 0 and 1 each restart one connection (their own) between
            # their requests, while threads 2..7 use both connections.
            try:
                barrier.wait()
                for j in range(rounds):
                    cid = "ab"[i % 2]
                    if i < 2 and j % 3 == 0:
                        sync.restart_connection(cid)
                        restarts[cid] += 1
                    tag = f"t{i}"
                    sync.execute_with_retry(cid, methodcaller("write", tag, j))
                    got = sync.execute_with_retry(cid, methodcaller("read", tag))
                    assert got == str(j), (i, j, got)
                    assert sync.execute_with_retry(cid, lambda c: c.read("power")) == "230"
                    assert sync.get_status(cid)["connection_id"] == cid
                    assert set(sync.get_status()) == {"a", "b"}
            except BaseException as exc:
                errors.append((i, exc))

        threads = [
            threading.Thread(target=worker, args=(i,), name=f"test-worker-{i}") for i in range(8)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 15
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not [t.name for t in threads if t.is_alive()], "deadlock: threads still running"
        assert errors == []
        assert restarts == {"a": 10, "b": 10}
        assert {threaded_peer.values[f"t{i}"] for i in range(8)} == {str(rounds - 1)}
        for cid in ("a", "b"):
            sync.wait_for_state(cid, "connected", timeout=5)


def test_concurrent_restarts_of_one_connection(make_sync: MakeSync, threaded_peer: PeerThread):
    """Test that two threads restarting the same connection at once leave it connected."""
    SlowClose.closing.clear()
    with make_sync(watchdog_interval=NO_WATCHDOG) as sync:
        sync.register_connection_type("slow_close", SlowClose)
        sync.add_connection("dev", "slow_close", tcp(threaded_peer.port))
        sync.wait_for_state("dev", "connected", timeout=5)
        first = threading.Thread(target=sync.restart_connection, args=("dev",))
        first.start()
        assert SlowClose.closing.wait(5)  # the first restart is closing the link now
        sync.restart_connection("dev")
        first.join(5)
        assert not first.is_alive()
        sync.wait_for_state("dev", "connected", timeout=2)


def test_callbacks_run_off_loop_and_may_call_back(make_sync: MakeSync, threaded_peer: PeerThread):
    """Test that event callbacks run off the loop thread and can use the facade freely."""
    with make_sync() as sync:
        loop_thread = on_loop(sync, _ident())
        seen: queue.Queue[dict[str, Any]] = queue.Queue()

        def on_connected(ev: Any) -> None:
            seen.put(
                {
                    "thread": threading.get_ident(),
                    "id": ev.connection.connection_id,
                    "status": sync.get_status(ev.connection_id)["status"],
                    "value": sync.execute_with_retry(
                        ev.connection_id, lambda c: c.read("temperature")
                    ),
                    "state": sync.get_state(ev.connection_id),
                }
            )

        off = sync.on_event("connected", on_connected)
        sync.add_connection("dev", "tcp", tcp(threaded_peer.port))
        got = seen.get(timeout=5)
        assert got["thread"] not in (loop_thread, threading.get_ident())
        assert (got["id"], got["status"], got["value"]) == ("dev", "connected", "21.5")
        assert got["state"] is S.CONNECTED
        off()
        sync.restart_connection("dev")
        sync.wait_for_state("dev", "connected", timeout=5)
        assert sync.execute_with_retry("dev", lambda c: c.read("power")) == "230"
        assert seen.empty()  # unsubscribed: the second "connected" reached nobody


def test_data_listener_and_status_from_threads(make_sync: MakeSync, threaded_peer: PeerThread):
    """Test that on_data delivers polled datapoints and record_activity/mark_tx_drop work."""
    with make_sync() as sync:
        got: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        sync.on_data(lambda cid, tag, value, q, ts: got.put((cid, tag, value)))
        sync.add_connection(
            "dev",
            "tcp",
            tcp(threaded_peer.port),
            poll=[{"tags": ["temperature"], "interval": 0.05}],
        )
        assert got.get(timeout=5) == ("dev", "temperature", "21.5")
        sync.record_activity("dev")
        reconnects_before = sync.get_status("dev")["stats"]["reconnects"]
        sync.mark_tx_drop("dev")
        wait_until(lambda: sync.get_status("dev")["stats"]["reconnects"] > reconnects_before)
        sync.wait_for_state("dev", "connected", timeout=5)


def test_blocking_call_from_loop_thread_raises(make_sync: MakeSync, threaded_peer: PeerThread):
    """Test that a blocking call made on the manager's own loop thread raises RuntimeError."""
    with make_sync() as sync:
        sync.add_connection("dev", "tcp", tcp(threaded_peer.port))
        sync.wait_for_state("dev", "connected", timeout=5)

        async def probe() -> list[str]:
            caught = []
            for call in (
                lambda: sync.get_status("dev"),
                lambda: sync.wait_for_state("dev", "connected", timeout=1),
                lambda: sync.execute_with_retry("dev", lambda c: c.read("temperature")),
                lambda: sync.restart_connection("dev"),
            ):
                try:
                    call()
                except RuntimeError as exc:
                    caught.append(str(exc))
            return caught

        caught = on_loop(sync, probe())
        assert len(caught) == 4 and all("deadlock" in text for text in caught)
        # The loop survived: the facade still works from this thread.
        assert sync.get_state("dev") is S.CONNECTED
        assert sync.execute_with_retry("dev", lambda c: c.read("temperature")) == "21.5"


def test_close_is_idempotent_and_ends_threads(threaded_peer: PeerThread):
    """Test that close() twice is harmless and every thread the facade started ends."""
    before = set(threading.enumerate())
    sync = SyncConnectionManager(**FAST)
    sync.register_connection_type("blocking_ping", BlockingPing)
    sync.start()
    sync.on_event("connected", lambda ev: None)  # starts the callback threads
    sync.add_connection("dev", "tcp", tcp(threaded_peer.port))
    sync.add_connection("blk", "blocking_ping", tcp(threaded_peer.port))  # worker threads
    sync.wait_for_state("dev", "connected", timeout=5)
    sync.wait_for_state("blk", "connected", timeout=5)
    assert len(set(threading.enumerate()) - before) >= 3  # loop, callback, worker
    sync.close()
    sync.close()
    assert sync.loop.is_closed()
    wait_until(lambda: set(threading.enumerate()) <= before)
    wait_until(lambda: threaded_peer.peer.connections == 0)


def test_close_without_start():
    """Test that a facade that never started closes without starting a thread."""
    before = set(threading.enumerate())
    sync = SyncConnectionManager()
    sync.close()
    sync.close()
    assert set(threading.enumerate()) <= before
    assert sync.loop.is_closed()


def test_call_after_close_raises_cleanly():
    """Test that a call after close() raises RuntimeError and leaves no stray coroutine."""
    sync = SyncConnectionManager()
    sync.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="closed"):
            sync.get_status()
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_close_wakes_blocked_callers(threaded_peer: PeerThread):
    """Test that close() wakes a call blocked in another thread with RuntimeError."""
    sync = SyncConnectionManager(**FAST)
    sync.start()
    sync.add_connection("dev", "tcp", tcp(threaded_peer.port))
    sync.wait_for_state("dev", "connected", timeout=5)
    outcome: queue.Queue[str] = queue.Queue()

    def blocked() -> None:
        try:
            sync.wait_for_state("dev", "suspended")  # never, while the peer is up
            outcome.put("returned")
        except BaseException as exc:
            outcome.put(type(exc).__name__)

    waiter = threading.Thread(target=blocked, name="test-blocked-caller", daemon=True)
    waiter.start()

    async def in_flight() -> bool:
        return any("wait_for_state" in repr(t.get_coro()) for t in asyncio.all_tasks())

    wait_until(lambda: on_loop(sync, in_flight()))
    sync.close()
    assert outcome.get(timeout=2) == "RuntimeError"
    waiter.join(2)
    assert not waiter.is_alive()


#: Threads keep calling the facade while it closes; each must end, none may hang.
#: Run in a subprocess so a thread left blocked forever cannot outlive the test.
CLOSE_RACE = r"""
import os, threading
from edgelink import SyncConnectionManager

for _ in range(10):
    sync = SyncConnectionManager()
    sync.start()
    calls = threading.Semaphore(0)

    def hammer():
        while True:
            try:
                sync.get_status()
            except RuntimeError:
                return
            calls.release()

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for _ in range(8):
        calls.acquire(timeout=5)
    sync.close()
    for t in threads:
        t.join(2)
        if t.is_alive():
            print("a caller hung after close()", flush=True)
            os._exit(1)
print("ok", flush=True)
"""


def test_close_while_threads_keep_calling():
    """Test that close() ends calls other threads keep making: none is left blocked."""
    proc = subprocess.run(
        [sys.executable, "-c", CLOSE_RACE], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


# -- parity with ConnectionManager --------------------------------------------------


def _public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    methods: dict[str, Callable[..., Any]] = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, classmethod | staticmethod):
            raw = raw.__func__
        if inspect.isfunction(raw):
            methods[name] = raw
    return methods


ASYNC_METHODS = sorted(
    name
    for name, fn in _public_methods(ConnectionManager).items()
    if inspect.iscoroutinefunction(fn)
)
PLAIN_METHODS = sorted(
    name
    for name, fn in _public_methods(ConnectionManager).items()
    if not inspect.iscoroutinefunction(fn)
)

#: Public plain methods of ConnectionManager with no blocking twin, and why.
NO_TWIN = {
    "get_supervisor": "returns the loop-owned Supervisor, whose methods are coroutines and not "
    "thread-safe; its state is what get_state/get_status already give",
    "check_supervisors": "the manager watchdog's own tick: it schedules restart tasks on the "
    "running loop and runs by itself every watchdog_interval",
}


#: Coroutine methods whose blocking twin has another name: a blocking close is `close`.
TWIN_NAMES = {"aclose": "close"}


@pytest.mark.parametrize("name", ASYNC_METHODS)
def test_every_coroutine_method_has_a_blocking_twin(name: str):
    """Test that a public coroutine method of ConnectionManager has a blocking twin."""
    twin = _public_methods(SyncConnectionManager).get(TWIN_NAMES.get(name, name))
    assert twin is not None, f"SyncConnectionManager.{name} is missing"
    assert not inspect.iscoroutinefunction(twin)
    ours = list(inspect.signature(_public_methods(ConnectionManager)[name]).parameters)
    assert list(inspect.signature(twin).parameters) == ours


@pytest.mark.parametrize("name", [n for n in PLAIN_METHODS if n not in NO_TWIN])
def test_every_plain_method_has_a_twin(name: str):
    """Test that a public plain method of ConnectionManager has a same-named facade method."""
    twin = _public_methods(SyncConnectionManager).get(name)
    assert twin is not None, f"SyncConnectionManager.{name} is missing"
    assert not inspect.iscoroutinefunction(twin)
    ours = list(inspect.signature(_public_methods(ConnectionManager)[name]).parameters)
    assert list(inspect.signature(twin).parameters) == ours


def test_parity_exceptions_are_real():
    """Test that the no-twin list names real manager methods the facade really lacks."""
    assert len(ASYNC_METHODS) >= 12 and "execute_with_retry" in ASYNC_METHODS
    facade = _public_methods(SyncConnectionManager)
    for name in NO_TWIN:
        assert name in PLAIN_METHODS
    assert not set(NO_TWIN) & set(facade)
    assert isinstance(inspect.getattr_static(SyncConnectionManager, "connections"), property)
