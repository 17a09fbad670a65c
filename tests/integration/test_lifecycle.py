"""The two lifecycle bases, and the ResourceWarning for a leaked manager, pool or bridge.

A leak is only collectable once nothing runs it any more, so each leak test
runs its object on a loop of its own and closes that loop before collecting.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from edgelink import ConnectionManager, ConnectionPool, EventBus, Target
from edgelink.bridge.mqtt import MqttBridge
from edgelink.lifecycle import AsyncResource, Service
from edgelink.service.config import BridgeSettings
from edgelink.store import Database, EventLog, UplinkBuffer
from edgelink.testing.peers import PingPongPeer


class _Closable(AsyncResource):
    def __init__(self) -> None:
        self.closes = 0

    async def aclose(self) -> None:
        self.closes += 1


class _Runner(Service):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")


async def test_async_resource_closes_on_leaving_its_context_even_after_an_error() -> None:
    """Test that an AsyncResource is closed when its block ends, also by an exception."""
    res = _Closable()
    async with res as entered:
        assert entered is res
        assert res.closes == 0
    with pytest.raises(KeyError):
        async with res:
            raise KeyError("x")
    assert res.closes == 2


async def test_service_starts_on_entry_stops_on_exit_and_aclose_is_stop() -> None:
    """Test that a Service starts entering its block, stops leaving it, and aclose() stops."""
    svc = _Runner()
    async with svc as entered:
        assert entered is svc
        assert svc.calls == ["start"]
    await svc.aclose()
    assert svc.calls == ["start", "stop", "stop"]


def test_the_public_runners_share_the_bases() -> None:
    """Test that the manager, bridge, pool, bus, targets and store have one spelling of close."""
    assert issubclass(ConnectionManager, Service)
    assert issubclass(MqttBridge, Service)
    for cls in (ConnectionPool, EventBus, Target, Database, EventLog):
        assert issubclass(cls, AsyncResource), cls


async def test_the_store_closes_by_its_context_and_by_the_old_close(tmp_path: Path) -> None:
    """Test that a Database is closed leaving `async with`, and close() still closes one."""
    async with Database(tmp_path / "a.db") as db:
        await db.open()
        assert await db.run(lambda: 1) == 1
    with pytest.raises(RuntimeError, match="not open"):
        await db.run(lambda: 1)
    old = Database(tmp_path / "b.db")
    await old.open()
    await old.close()
    with pytest.raises(RuntimeError, match="not open"):
        await old.run(lambda: 1)


def _collect_after(run: Callable[[], Awaitable[Any]]) -> list[str]:
    """Run ``run`` on a loop of its own, close the loop, drop it all, collect; return warnings."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    del loop, run
    # The pending tasks the leak left behind are destroyed too; asyncio logs that.
    logging.getLogger("asyncio").disabled = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
    finally:
        logging.getLogger("asyncio").disabled = False
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_started_manager_collected_unstopped_warns() -> None:
    """Test that a started ConnectionManager garbage-collected without stop() warns."""

    async def leak() -> None:
        await ConnectionManager().start()

    messages = _collect_after(leak)
    assert any("unclosed ConnectionManager" in m and "stop()" in m for m in messages), messages


def test_a_stopped_or_never_started_manager_does_not_warn() -> None:
    """Test that a stopped manager, and one never started, are collected silently."""

    async def clean() -> None:
        async with ConnectionManager():
            pass
        ConnectionManager()

    assert _collect_after(clean) == []


def test_a_pool_that_opened_a_connection_collected_unclosed_warns() -> None:
    """Test that a ConnectionPool with an open connection, never closed, warns when collected."""

    async def leak() -> None:
        peer = PingPongPeer()
        await peer.start()
        pool = ConnectionPool()
        async with pool.connection("dev", "tcp", {"host": "127.0.0.1", "port": peer.port}):
            pass
        await peer.stop()

    messages = _collect_after(leak)
    assert any("unclosed ConnectionPool" in m and "aclose()" in m for m in messages), messages


def test_a_closed_pool_does_not_warn() -> None:
    """Test that a pool closed with `async with` (or the old close()) is collected silently."""

    async def clean() -> None:
        async with PingPongPeer() as peer:
            cfg = {"host": "127.0.0.1", "port": peer.port}
            async with ConnectionPool() as pool, pool.connection("dev", "tcp", cfg):
                pass
            old = ConnectionPool()
            async with old.connection("dev", "tcp", cfg):
                pass
            await old.close()

    assert _collect_after(clean) == []


def _bridge_run(tmp_path: Path, *, stop: bool) -> Callable[[], Awaitable[None]]:
    """Start a bridge over an mqtt connection that is never started; stop it or not."""

    async def run() -> None:
        manager = ConnectionManager()
        manager.add_connection("broker", "mqtt", {"host": "127.0.0.1", "port": 1})
        db = Database(tmp_path / "bridge.db")
        buffer = UplinkBuffer(db, max_items=10, max_age_s=60)
        bridge = MqttBridge(manager, manager.router, BridgeSettings(connection="broker"), buffer)
        await bridge.start()
        if stop:
            await bridge.stop()
        await db.close()

    return run


def test_a_started_bridge_collected_unstopped_warns(tmp_path: Path) -> None:
    """Test that a started MqttBridge garbage-collected without stop() warns."""
    messages = _collect_after(_bridge_run(tmp_path, stop=False))
    assert any("unclosed MqttBridge" in m for m in messages), messages


def test_a_stopped_bridge_does_not_warn(tmp_path: Path) -> None:
    """Test that a bridge stopped after start is collected silently."""
    assert _collect_after(_bridge_run(tmp_path, stop=True)) == []
