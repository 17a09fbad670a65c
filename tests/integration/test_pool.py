"""Tests of ConnectionPool against a real PING/PONG peer on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from edgelink.connection import Connection, SyncConnection
from edgelink.errors import (
    ConfigError,
    ConnectError,
    ConnectionPoolExhaustedError,
    ConnectTimeout,
)
from edgelink.pool import ConnectionPool
from edgelink.registry import DriverRegistry
from edgelink.testing.clock import ManualClock

# -- the peer -------------------------------------------------------------------


class PingServer:
    """A line-protocol peer: answers ``PING`` with ``reply`` and counts its connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.reply = b"PONG\n"
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                if line == b"PING\n":
                    writer.write(self.reply)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.open -= 1

    def kick_all(self) -> None:
        """Close every accepted connection from the server side."""
        for writer in list(self._writers):
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        self.kick_all()
        await wait_until(lambda: self.open == 0)
        await self._server.wait_closed()


# -- the drivers ----------------------------------------------------------------


@dataclass
class Counter:
    connects: int = 0
    disconnects: int = 0
    health_checks: int = 0


class PingDriver(Connection):
    """A real TCP driver: one socket, health check = PING -> PONG."""

    type_name = "ping"

    def __init__(self, connection_id: str, config: Any, context: Any = None) -> None:
        super().__init__(connection_id, config, context)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.context.connects += 1
        self._reader, self._writer = await asyncio.open_connection(
            self.config["host"], self.config["port"]
        )

    async def disconnect(self) -> None:
        writer, self._writer = self._writer, None
        self.context.disconnects += 1
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def is_connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def health_check(self) -> bool:
        self.context.health_checks += 1
        return await self.request(b"PING\n") == b"PONG\n"

    async def request(self, line: bytes) -> bytes:
        assert self._reader is not None
        assert self._writer is not None
        self._writer.write(line)
        await self._writer.drain()
        return await self._reader.readline()


class HangingDriver(PingDriver):
    """A driver whose connect never finishes."""

    type_name = "hang"

    async def connect(self) -> None:
        self.context.connects += 1
        await asyncio.get_running_loop().create_future()


class SyncPingDriver(SyncConnection):
    """A blocking driver in the seed's style, over a plain socket."""

    type_name = "sync_ping"

    def __init__(self, connection_id: str, config: Any, context: Any = None) -> None:
        super().__init__(connection_id, config, context)
        self._sock: socket.socket | None = None

    def connect(self) -> bool:
        self.context.connects += 1
        self._sock = socket.create_connection((self.config["host"], self.config["port"]), 2.0)
        return True

    def disconnect(self) -> None:
        sock, self._sock = self._sock, None
        self.context.disconnects += 1
        if sock is not None:
            sock.close()

    def is_connected(self) -> bool:
        return self._sock is not None

    def health_check(self) -> bool:
        self.context.health_checks += 1
        return self.request(b"PING\n") == b"PONG\n"

    def request(self, line: bytes) -> bytes:
        assert self._sock is not None
        self._sock.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            chunk = self._sock.recv(64)
            if not chunk:
                break
            data += chunk
        return data


# -- fixtures and helpers -------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``predicate`` until it holds (real I/O has to happen in between)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


@pytest.fixture
async def server() -> AsyncIterator[PingServer]:
    peer = PingServer()
    await peer.start()
    yield peer
    await peer.stop()


@pytest.fixture
def registry() -> DriverRegistry:
    reg = DriverRegistry(load_entry_points=False)
    reg.register("ping", PingDriver)
    reg.register("hang", HangingDriver)
    reg.register("sync_ping", SyncPingDriver)
    return reg


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
async def make_pool(
    registry: DriverRegistry, counter: Counter
) -> AsyncIterator[Callable[..., ConnectionPool]]:
    pools: list[ConnectionPool] = []

    def make(**kwargs: Any) -> ConnectionPool:
        kwargs.setdefault("registry", registry)
        kwargs.setdefault("context", counter)
        kwargs.setdefault("acquire_timeout", 5.0)
        pool = ConnectionPool(**kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


def cfg(server: PingServer, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.port, **extra}


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- tests ----------------------------------------------------------------------


def test_constructor_needs_no_loop_and_checks_arguments() -> None:
    """Test that a pool is built without a running loop and rejects nonsense sizes."""
    pool = ConnectionPool()
    assert repr(pool) == "<ConnectionPool size=0/10 active=0 idle=0 waiting=0>"
    with pytest.raises(ValueError, match="max_size"):
        ConnectionPool(max_size=0)
    with pytest.raises(ValueError, match="acquire_timeout"):
        ConnectionPool(acquire_timeout=0)


async def test_reuses_the_same_connection_for_a_key(server, make_pool, counter):
    """Test that one key reuses one driver object over one TCP connection."""
    pool = make_pool()
    seen = []
    for _ in range(3):
        async with pool.connection("dev", type="ping", config=cfg(server)) as conn:
            assert pool.active_connections == 1
            assert await conn.request(b"PING\n") == b"PONG\n"
            seen.append(conn)
        assert pool.idle_connections == 1
    assert seen[0] is seen[1] is seen[2]
    assert server.accepted == 1
    assert counter.connects == 1
    assert counter.health_checks == 2  # tested on each reuse, not on a fresh connect
    stats = pool.stats()
    assert (stats["created"], stats["reused"], stats["replaced_stale"]) == (1, 2, 0)
    assert len(pool) == 1


async def test_replaces_a_connection_the_peer_closed(server, make_pool, counter):
    """Test that a connection closed by the peer is replaced on checkout."""
    pool = make_pool()
    async with pool.connection("dev", type="ping", config=cfg(server)) as first:
        pass
    server.kick_all()
    await wait_until(lambda: server.open == 0)
    async with pool.connection("dev", type="ping", config=cfg(server)) as second:
        assert second is not first
        assert await second.request(b"PING\n") == b"PONG\n"
    assert pool.stats()["replaced_stale"] == 1
    assert server.accepted == 2
    assert counter.disconnects == 1
    assert len(pool) == 1


async def test_replaces_a_connection_that_fails_its_health_check(server, make_pool):
    """Test that a connection whose health check answers wrong is closed and replaced."""
    pool = make_pool()
    async with pool.connection("dev", type="ping", config=cfg(server)) as first:
        pass
    server.reply = b"BUSY\n"
    async with pool.connection("dev", type="ping", config=cfg(server)) as second:
        assert second is not first
        assert not first.is_connected()
    await wait_until(lambda: server.open == 1)
    assert pool.stats()["replaced_stale"] == 1
    assert server.accepted == 2


async def test_replaces_a_connection_when_type_or_config_changes(server, make_pool):
    """Test that asking for a key with another config closes the old link first."""
    pool = make_pool()
    async with pool.connection("dev", type="ping", config=cfg(server)) as first:
        pass
    async with pool.connection("dev", type="ping", config=cfg(server, unit=2)) as second:
        assert second is not first
        assert second.config["unit"] == 2
        assert server.open == 1  # the old link was closed before the new one opened
    stats = pool.stats()
    assert (stats["replaced_config"], stats["replaced_stale"], stats["created"]) == (1, 0, 2)


async def test_closes_idle_connection_after_idle_timeout(server, make_pool, counter):
    """Test that an idle connection closes when the clock passes idle_timeout, not before."""
    clock = ManualClock()
    pool = make_pool(idle_timeout=60.0, clock=clock)
    async with pool.connection("dev", type="ping", config=cfg(server)):
        assert clock.pending() == []  # no idle timer while checked out
    assert clock.pending() == [60.0]
    await clock.advance(30)
    async with pool.connection("dev", type="ping", config=cfg(server)):
        pass
    assert clock.pending() == [60.0]  # a checkout restarts the idle period
    await clock.advance(59)
    assert pool.idle_connections == 1
    await clock.advance(2)
    assert pool.idle_connections == 0
    assert len(pool) == 0
    assert pool.stats()["idle_closed"] == 1
    await wait_until(lambda: server.open == 0)
    assert counter.disconnects == 1


async def test_full_pool_evicts_least_recently_used_idle(server, make_pool):
    """Test that a full pool evicts its least recently used idle connection for a new key."""
    pool = make_pool(max_size=2)
    conns = {}
    for key in ("a", "b", "a"):
        async with pool.connection(key, type="ping", config=cfg(server)) as conn:
            conns[key] = conn
    async with pool.connection("c", type="ping", config=cfg(server)):
        assert len(pool) == 2
    assert pool.stats()["evicted"] == 1
    assert not conns["b"].is_connected()
    async with pool.connection("a", type="ping", config=cfg(server)) as conn:
        assert conn is conns["a"]
    await wait_until(lambda: server.open == 2)
    assert server.accepted == 3


async def test_exhausted_pool_raises_after_acquire_timeout(server, make_pool):
    """Test that with every slot active a caller gets ConnectionPoolExhaustedError in time."""
    pool = make_pool(max_size=1, acquire_timeout=0.2)
    async with pool.connection("a", type="ping", config=cfg(server)):
        started = time.monotonic()
        with pytest.raises(ConnectionPoolExhaustedError) as info:
            async with pool.connection("b", type="ping", config=cfg(server)):
                pytest.fail("must not get a connection")
        assert 0.19 <= time.monotonic() - started < 2.0
        assert info.value.connection_id == "b"
        assert "max_size=1" in str(info.value)
        assert "1 active" in str(info.value)
        assert pool.waiting == 0
        assert len(pool) == 1
    assert pool.stats()["exhausted"] == 1
    async with pool.connection("b", type="ping", config=cfg(server)):
        assert len(pool) == 1


async def test_busy_key_waits_for_its_return(server, make_pool):
    """Test that a second caller for a checked-out key gets the same connection once returned."""
    pool = make_pool()
    got: list[Any] = []

    async def second_user() -> None:
        async with pool.connection("a", type="ping", config=cfg(server)) as conn:
            got.append(conn)

    async with pool.connection("a", type="ping", config=cfg(server)) as first:
        task = asyncio.create_task(second_user(), name="test.second_user")
        await wait_until(lambda: pool.waiting == 1)
        assert got == []
        assert len(pool) == 1
    await task
    assert got == [first]
    assert server.accepted == 1


async def test_busy_key_times_out(server, make_pool):
    """Test that waiting for a key held by someone else is bounded by acquire_timeout."""
    pool = make_pool(acquire_timeout=0.2)
    async with pool.connection("a", type="ping", config=cfg(server)):
        with pytest.raises(ConnectionPoolExhaustedError, match="checked out"):
            async with pool.connection("a", type="ping", config=cfg(server)):
                pytest.fail("a key is exclusive")
    assert pool.waiting == 0


@pytest.mark.parametrize("keys", [["b", "c", "d"], ["a", "a", "a"]], ids=["slots", "same-key"])
async def test_waiters_are_served_in_arrival_order(server, make_pool, keys):
    """Test that waiters for slots, or for one busy key, are served first come first served."""
    pool = make_pool(max_size=1)
    order: list[int] = []

    async def user(number: int, key: str) -> None:
        async with pool.connection(key, type="ping", config=cfg(server)):
            order.append(number)
            await asyncio.sleep(0)

    async with pool.connection("a", type="ping", config=cfg(server)):
        tasks = []
        for number, key in enumerate(keys):
            tasks.append(asyncio.create_task(user(number, key), name=f"test.user{number}"))
            await wait_until(lambda: pool.waiting == len(tasks))
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert len(pool) == 1


async def test_cancelled_waiter_leaks_no_slot(server, make_pool):
    """Test that cancelling a queued caller leaves the pool's size and queue as they were."""
    pool = make_pool(max_size=1)

    async def user(key: str) -> None:
        async with pool.connection(key, type="ping", config=cfg(server)):
            pytest.fail("the waiter was cancelled")

    async with pool.connection("a", type="ping", config=cfg(server)):
        task = asyncio.create_task(user("b"), name="test.waiter")
        await wait_until(lambda: pool.waiting == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.waiting == 0
        assert len(pool) == 1
    async with asyncio.timeout(1.0), pool.connection("c", type="ping", config=cfg(server)):
        assert len(pool) == 1


@pytest.mark.parametrize("key", ["a", "b"], ids=["idle-entry", "fresh-slot"])
async def test_waiter_cancelled_just_after_its_grant_gives_it_back(server, make_pool, counter, key):
    """Test that a waiter cancelled in the iteration it was served returns what it got."""
    pool = make_pool(max_size=1)

    async def user() -> None:
        async with pool.connection(key, type="ping", config=cfg(server)):
            pytest.fail("the waiter was cancelled")

    task = asyncio.create_task(user(), name="test.waiter")
    async with pool.connection("a", type="ping", config=cfg(server)):
        await wait_until(lambda: pool.waiting == 1)
    # The checkin above served the waiter without yielding to the loop; the
    # waiter has not run yet, so this cancel lands after its grant.
    assert pool.waiting == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.active_connections == 0
    assert len(pool) == (1 if key == "a" else 0)
    async with asyncio.timeout(1.0), pool.connection("a", type="ping", config=cfg(server)):
        pass
    assert counter.connects == (1 if key == "a" else 2)


async def test_waiter_cancelled_just_before_a_slot_frees_is_skipped(server, make_pool):
    """Test that a cancelled waiter that has not run yet is passed over for the next one."""
    pool = make_pool(max_size=1)
    served: list[str] = []

    async def user(key: str) -> None:
        async with pool.connection(key, type="ping", config=cfg(server)):
            served.append(key)

    async with pool.connection("a", type="ping", config=cfg(server)):
        first = asyncio.create_task(user("b"), name="test.first")
        await wait_until(lambda: pool.waiting == 1)
        second = asyncio.create_task(user("c"), name="test.second")
        await wait_until(lambda: pool.waiting == 2)
        # Cancelled but not yet run: its future is cancelled, it is still queued,
        # and the checkin below walks the queue before it can leave.
        first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert served == ["c"]
    assert pool.waiting == 0
    assert len(pool) == 1


async def test_failed_connect_releases_its_slot(server, make_pool):
    """Test that a refused connect raises a ConnectError and frees its slot."""
    pool = make_pool(max_size=1)
    bad = {"host": "127.0.0.1", "port": refused_port()}
    with pytest.raises(ConnectError) as info:
        async with pool.connection("dead", type="ping", config=bad):
            pytest.fail("connect must fail")
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert info.value.connection_id == "dead"
    assert len(pool) == 0
    assert pool.stats()["connect_failed"] == 1
    async with asyncio.timeout(1.0), pool.connection("ok", type="ping", config=cfg(server)):
        assert len(pool) == 1


async def test_unknown_type_releases_its_slot(server, make_pool):
    """Test that an unknown driver type raises ConfigError and frees its slot."""
    pool = make_pool(max_size=1)
    with pytest.raises(ConfigError):
        async with pool.connection("x", type="no_such_type", config=cfg(server)):
            pytest.fail("no driver")
    assert len(pool) == 0


async def test_connect_that_hangs_raises_connect_timeout(server, make_pool, counter):
    """Test that a connect that never finishes raises ConnectTimeout and frees its slot."""
    pool = make_pool(max_size=1, connect_timeout=0.2)
    with pytest.raises(ConnectTimeout) as info:
        async with pool.connection("slow", type="hang", config=cfg(server)):
            pytest.fail("connect must time out")
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert len(pool) == 0
    await wait_until(lambda: counter.disconnects == 1)  # the half-open driver is closed
    async with pool.connection("ok", type="ping", config=cfg(server)):
        pass


async def test_body_link_error_discards_the_connection(server, make_pool, counter):
    """Test that an OSError in the body closes the connection instead of returning it."""
    pool = make_pool()
    with pytest.raises(OSError, match="link broke"):
        async with pool.connection("dev", type="ping", config=cfg(server)):
            raise OSError("link broke")
    assert len(pool) == 0
    assert pool.stats()["discarded"] == 1
    await wait_until(lambda: server.open == 0)
    async with pool.connection("dev", type="ping", config=cfg(server)):
        pass
    assert counter.connects == 2


async def test_body_application_error_keeps_the_connection(server, make_pool):
    """Test that a non-link error in the body propagates and the connection is kept."""
    pool = make_pool()
    with pytest.raises(KeyError):
        async with pool.connection("dev", type="ping", config=cfg(server)) as first:
            raise KeyError("no such tag")
    assert pool.idle_connections == 1
    async with pool.connection("dev", type="ping", config=cfg(server)) as second:
        assert second is first


async def test_cancelled_body_discards_the_connection(server, make_pool):
    """Test that a body cancelled mid-request does not return a half-used connection."""
    pool = make_pool()
    server.reply = b""  # a PING is never answered

    async def user() -> None:
        async with pool.connection("dev", type="ping", config=cfg(server)) as conn:
            await conn.request(b"PING\n")

    task = asyncio.create_task(user(), name="test.user")
    await wait_until(lambda: pool.active_connections == 1 and server.accepted == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(pool) == 0
    assert pool.stats()["discarded"] == 1


async def test_sync_driver_works_through_the_executor(server, make_pool, counter):
    """Test that a blocking SyncConnection driver is pooled, checked and closed in threads."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-pool") as executor:
        pool = make_pool(executor=executor)
        seen = []
        for _ in range(2):
            async with pool.connection("s", type="sync_ping", config=cfg(server)) as conn:
                assert isinstance(conn, SyncPingDriver)
                assert await asyncio.to_thread(conn.request, b"PING\n") == b"PONG\n"
                seen.append(conn)
        assert seen[0] is seen[1]
        assert counter.health_checks == 1
        assert server.accepted == 1
        await pool.close()
        await wait_until(lambda: server.open == 0)
        assert counter.disconnects == 1


async def test_close_closes_everything_and_is_idempotent(server, make_pool):
    """Test that close() closes idle links, fails waiters, and closes active ones on return."""
    pool = make_pool(max_size=2)
    async with pool.connection("idle", type="ping", config=cfg(server)):
        pass

    async def waiter() -> None:
        async with pool.connection("busy", type="ping", config=cfg(server)):
            pytest.fail("the pool was closed")

    async with pool.connection("busy", type="ping", config=cfg(server)) as conn:
        task = asyncio.create_task(waiter(), name="test.waiter")
        await wait_until(lambda: pool.waiting == 1)
        await pool.close()
        assert pool.closed
        assert pool.idle_connections == 0
        with pytest.raises(RuntimeError, match="closed"):
            await task
        assert conn.is_connected()  # still in use: closed when returned
        with pytest.raises(RuntimeError, match="closed"):
            async with pool.connection("new", type="ping", config=cfg(server)):
                pytest.fail("the pool was closed")
    assert not conn.is_connected()
    assert len(pool) == 0
    await pool.close()
    await wait_until(lambda: server.open == 0)
    assert repr(pool).endswith("closed>")


async def test_async_with_closes_the_pool(server, registry, counter):
    """Test that leaving `async with ConnectionPool(...)` closes every connection."""
    async with ConnectionPool(registry=registry, context=counter) as pool:
        for key in ("a", "b", "c"):
            async with pool.connection(key, type="ping", config=cfg(server)):
                pass
        assert server.accepted == 3
    assert pool.closed
    assert counter.disconnects == 3
    await wait_until(lambda: server.open == 0)


async def test_repr_shows_live_state(server, make_pool):
    """Test that the repr shows size, active, idle and waiting counts."""
    pool = make_pool()
    for key in ("a", "b"):
        async with pool.connection(key, type="ping", config=cfg(server)):
            pass
    async with pool.connection("c", type="ping", config=cfg(server)):
        assert repr(pool) == "<ConnectionPool size=3/10 active=1 idle=2 waiting=0>"


async def test_no_tasks_or_fds_leak_after_200_cycles(server, make_pool):
    """Test that 200 checkouts with churn leave tasks and open fds where they started."""
    tasks_before = asyncio.all_tasks()
    fds_before = open_fds()
    pool = make_pool(max_size=2)
    for i in range(200):
        key = f"dev{i % 5}"
        if i % 10 == 9:
            with pytest.raises(ConnectionResetError):
                async with pool.connection(key, type="ping", config=cfg(server)):
                    raise ConnectionResetError
        else:
            async with pool.connection(key, type="ping", config=cfg(server)) as conn:
                assert await conn.request(b"PING\n") == b"PONG\n"
    stats = pool.stats()
    assert stats["created"] > 100
    assert stats["evicted"] > 50
    await pool.close()
    await wait_until(lambda: server.open == 0)
    await wait_until(lambda: asyncio.all_tasks() == tasks_before)
    await wait_until(lambda: open_fds() <= fds_before)
    assert len(pool) == 0
