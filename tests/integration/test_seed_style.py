"""A driver written the way the custom-connection SDK seed writes one, run by the async manager.

``CustomTCPConnection`` below follows the seed (``custom-connection-sdk.de.md``)
line by line: a blocking ``socket``, ``connect() -> bool`` that sets
``self.status`` and ``self.last_error`` itself, a ``PING``/``PONG`` health
check, ``send_data``/``receive_data`` with ``update_stats``. It is registered
with ``register_connection_type("custom_tcp", ...)``, configured through the
seed's ``connections.json`` and supervised against a real `PingPongPeer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import edgelink
from conftest import FAST
from edgelink import BaseConnection, ConnectionManager, ConnectionStatus, SyncConnection
from edgelink.testing import ManualClock
from edgelink.testing.fault_proxy import FaultMode, FaultProxy
from edgelink.testing.peers import PingPongPeer

DEVICE = "my_tcp_device"
NO_WATCHDOG = 1e9
Make = Callable[..., ConnectionManager]


class CustomTCPConnection(SyncConnection):
    """The seed's TCP socket connection (blocking; run in worker threads by the supervisor)."""

    def __init__(self, connection_id: str, config: dict[str, Any], app_context: Any = None):
        super().__init__(connection_id, config, app_context)

        self.host = config.get("host", "localhost")
        self.port = config.get("port", 5000)
        self.timeout = config.get("timeout", 5.0)
        self.socket: socket.socket | None = None

    def connect(self) -> bool:
        try:
            self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # The seed's best practice: no blocking I/O without a timeout.
            self.socket.settimeout(self.timeout)
            self.socket.connect((self.host, self.port))

            self.status = ConnectionStatus.CONNECTED
            self.connected_at = time.time()
            self.reconnect_attempts = 0

            return True
        except Exception as e:
            self.status = ConnectionStatus.ERROR
            self.last_error = str(e)
            self._close_socket()
            return False

    def disconnect(self) -> bool:
        self._close_socket()
        self.status = ConnectionStatus.DISCONNECTED
        return True

    def _connected_socket(self) -> socket.socket:
        if self.socket is None:
            raise ConnectionError(f"{self.connection_id} is not connected")
        return self.socket

    def _close_socket(self) -> None:
        sock, self.socket = self.socket, None
        if sock is not None:
            # shutdown() wakes a health check still blocked in recv() on another thread.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def is_connected(self) -> bool:
        return self.socket is not None

    def health_check(self) -> bool:
        """Sends PING, expects PONG."""
        sock = self.socket
        if sock is None:
            return False

        try:
            sock.send(b"PING\n")
            response = sock.recv(1024)

            return b"PONG" in response
        except Exception:
            return False

    def send_data(self, data: bytes) -> None:
        self._connected_socket().sendall(data)
        self.update_stats(packets_sent=1, bytes_sent=len(data))

    def receive_data(self) -> bytes:
        data = self._connected_socket().recv(1024)
        self.update_stats(packets_received=1, bytes_received=len(data))
        return data


def seed_config(port: int, **settings: Any) -> dict[str, Any]:
    """The seed's connections.json, pointed at a loopback port, with test timeouts."""
    return {
        "settings": {**FAST, "watchdog_interval": NO_WATCHDOG, **settings},
        "connections": {
            DEVICE: {
                "type": "custom_tcp",
                "name": "Mein TCP-Gerät",
                "enabled": True,
                "config": {
                    "host": "127.0.0.1",
                    "port": port,
                    "timeout": 5.0,
                    "auto_reconnect": True,
                },
                "settings": {"health_check_interval": 30, "reconnect_max_attempts": 10},
            }
        },
    }


def query_temperature(connection: CustomTCPConnection) -> bytes:
    """The seed's 'use the connection' step, as an operation for execute_with_retry."""
    connection.send_data(b"temperature?\n")
    return connection.receive_data()


def small(d: float) -> bool:
    return d < 1e6


async def seed_manager(make_manager: Make, clock: ManualClock, config: Any) -> ConnectionManager:
    """A manager with the seed's driver registered and the seed's config loaded."""
    manager = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG)
    manager.register_connection_type("custom_tcp", CustomTCPConnection)
    diff = await manager.reload(config)
    assert diff.added == [DEVICE]
    return manager


def test_seed_names_are_public():
    """Test that the seed's names import from edgelink and mean what the seed says."""
    assert issubclass(edgelink.Connection, BaseConnection)
    assert ConnectionStatus is edgelink.ConnectionState
    seed_enum = {
        "DISCONNECTED": "disconnected",
        "CONNECTING": "connecting",
        "CONNECTED": "connected",
        "ERROR": "error",
        "SUSPENDED": "suspended",
    }
    assert {name: ConnectionStatus.__members__[name].value for name in seed_enum} == seed_enum
    ctx = object()
    conn = CustomTCPConnection(DEVICE, {"host": "127.0.0.1", "port": 1}, ctx)
    assert conn.app_context is ctx and conn.connection_id == DEVICE
    assert conn.status is ConnectionStatus.DISCONNECTED and conn.stats["packets_sent"] == 0
    status = conn.get_status()
    assert status["connection_id"] == DEVICE and status["status"] == "disconnected"


async def test_seed_driver_connects_and_shows_stats(
    tmp_path: Path, make_manager: Make, peer: PingPongPeer, clock: ManualClock
):
    """Test that the seed driver, configured by connections.json, connects and reports stats."""
    path = tmp_path / "connections.json"
    path.write_text(json.dumps(seed_config(peer.port), ensure_ascii=False), encoding="utf-8")
    manager = await seed_manager(make_manager, clock, path)
    seen: list[tuple[str, Any]] = []

    def on_connected(ev: Any) -> None:
        seen.append((ev.connection.connection_id, ev.connection))

    manager.on_event("connected", on_connected)
    async with manager:
        await manager.wait_for_state(DEVICE, "connected", timeout=5)
        connection = manager.get_connection(DEVICE)
        assert isinstance(connection, CustomTCPConnection)
        assert connection is not None and connection.is_connected()
        assert connection.status is ConnectionStatus.CONNECTED
        answer = await manager.execute_with_retry(DEVICE, query_temperature)
        assert answer == b"21.5\n"
        status = manager.get_status(DEVICE)
        assert status["status"] == "connected" and status["type"] == "custom_tcp"
        assert status["name"] == "Mein TCP-Gerät" and status["last_error"] is None
        stats = status["stats"]
        assert (stats["packets_sent"], stats["bytes_sent"]) == (1, len(b"temperature?\n"))
        assert (stats["packets_received"], stats["bytes_received"]) == (1, len(answer))
        assert stats["last_activity"] is not None
        assert connection.get_status() == status
        await manager.events.drain()
        assert seen == [(DEVICE, connection)]
        assert peer.requests >= 2  # the first health check (PING) and the query


async def test_seed_driver_reconnects_after_peer_restart(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
):
    """Test that a killed peer is found by the seed's health check and reconnected on return."""
    manager = await seed_manager(make_manager, clock, seed_config(peer.port))
    events: list[tuple[str, str]] = []

    def record(ev: Any) -> None:
        events.append((ev.type, ev.connection.connection_id))

    for kind in ("connected", "disconnected", "health_check_failed", "reconnect_ok"):
        manager.on_event(kind, record)
    async with manager:
        await manager.wait_for_state(DEVICE, "connected", timeout=5)
        # A blocking driver has no reader: the loss shows at the next health check.
        assert await clock.wait_for_timer(lambda d: d == 30) == 30
        await peer.stop()
        await clock.advance(30)
        await manager.wait_for_state(DEVICE, "reconnecting", timeout=3)
        assert manager.get_status(DEVICE)["health"] == "unhealthy"
        delay = await clock.wait_for_timer(small)
        assert delay == 0.1
        await peer.start()
        await clock.advance(delay)
        await manager.wait_for_state(DEVICE, "connected", timeout=5)
        assert await manager.execute_with_retry(DEVICE, query_temperature) == b"21.5\n"
        assert manager.get_status(DEVICE)["stats"]["reconnects"] == 1
        await manager.events.drain()
        assert [kind for kind, _ in events] == [
            "connected",
            "health_check_failed",
            "disconnected",
            "connected",
            "reconnect_ok",
        ]
        assert {cid for _, cid in events} == {DEVICE}


async def test_seed_last_error_reaches_status(make_manager: Make, clock: ManualClock):
    """Test that what the seed driver puts in last_error on a refused connect shows in status."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = await seed_manager(make_manager, clock, seed_config(port))
    async with manager:
        await manager.wait_for_state(DEVICE, "reconnecting", timeout=5)
        status = manager.get_status(DEVICE)
        assert "refused" in (status["last_error"] or "").lower()
        assert status["stats"]["errors"] == 1
        connection = manager.get_connection(DEVICE)
        assert connection is not None and not connection.is_connected()
        assert connection.status is ConnectionStatus.RECONNECTING


async def test_hanging_blocking_connect_is_a_timeout(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
):
    """Test that a blocking attempt hanging past connect_timeout is a timeout, not a hung supervisor."""
    async with FaultProxy("127.0.0.1", peer.port) as proxy:
        proxy.mode = FaultMode.HALF_OPEN  # accepts, then never answers the PING
        manager = await seed_manager(
            make_manager, clock, seed_config(proxy.port, connect_timeout=0.3)
        )
        started = time.monotonic()
        async with manager:
            await manager.wait_for_state(DEVICE, "reconnecting", timeout=3)
            # The supervisor moved on: it waits out its backoff while the
            # abandoned worker thread is still blocked in recv() (timeout 5 s).
            assert await clock.wait_for_timer(small) == 0.1
            status = manager.get_status(DEVICE)
            assert status["reason"] == "timeout"
            assert "0.3 s" in (status["last_error"] or "")
            assert time.monotonic() - started < 3.0
            async with asyncio.timeout(2):
                await manager.stop()
        assert manager.get_state(DEVICE) is ConnectionStatus.DISCONNECTED
        connection = manager.get_connection(DEVICE)
        assert connection is not None and not connection.is_connected()
