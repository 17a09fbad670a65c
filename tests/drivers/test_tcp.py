"""The tcp line-protocol driver against real loopback peers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from edgelink import ConfigError, ConnectError, DeviceError, ProtocolError
from edgelink.drivers.tcp import TcpConnection
from edgelink.testing.peers import PingPongPeer

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Starter = Callable[[Handler], Awaitable[int]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    """Start a scripted server; yields a function that starts one and returns its port."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def driver(port: int, **extra: object) -> TcpConnection:
    return TcpConnection("dev", {"host": "127.0.0.1", "port": port, **extra})


async def test_request_read_write_and_stats(peer: PingPongPeer) -> None:
    """Test that requests get their answers and traffic is counted."""
    conn = driver(peer.port)
    await conn.connect()
    try:
        assert conn.is_connected()
        assert await conn.health_check() is True
        assert await conn.read("temperature") == "21.5"
        await conn.write("mode", "eco")
        assert peer.values["mode"] == "eco"
        assert await conn.request(b"PING") == b"PONG"
        stats = conn.stats.as_dict()
        assert stats["packets_sent"] == 4 and stats["packets_received"] == 4
        assert stats["bytes_sent"] == len(b"PING\ntemperature?\nmode=eco\nPING\n")
    finally:
        await conn.disconnect()
        await conn.disconnect()  # idempotent
    assert not conn.is_connected()


async def test_socket_is_tuned(peer: PingPongPeer) -> None:
    """Test that keepalive, TCP_USER_TIMEOUT and TCP_NODELAY are set on the socket."""
    conn = driver(peer.port, keepalive_idle=11, tcp_user_timeout=7)
    await conn.connect()
    try:
        transport = conn.transport
        assert transport is not None
        sock: socket.socket = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 11
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 7000
    finally:
        await conn.disconnect()


async def test_device_says_no_is_a_device_error(peer: PingPongPeer) -> None:
    """Test that an ERR answer is a DeviceError and the link stays up."""
    conn = driver(peer.port)
    await conn.connect()
    try:
        with pytest.raises(DeviceError, match="unknown"):
            await conn.read("nothing")
        assert conn.is_connected()
        assert await conn.read("temperature") == "21.5"
    finally:
        await conn.disconnect()


async def test_abandoned_request_keeps_answers_in_order(peer: PingPongPeer) -> None:
    """Test that a timed-out request's late answer is not handed to the next request."""
    conn = driver(peer.port)
    await conn.connect()
    try:
        peer.response_delay = 0.2
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await conn.read("temperature")
        peer.response_delay = 0.0
        assert await conn.request(b"PING") == b"PONG"
    finally:
        await conn.disconnect()


async def test_refused_is_connect_error_with_cause() -> None:
    """Test that a refused connect is a ConnectError whose cause is the refusal."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn = driver(port)
    with pytest.raises(ConnectError) as info:
        await conn.connect()
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert not conn.is_connected()


async def test_pushed_lines_become_data_and_text_waits(raw_server: Starter) -> None:
    """Test that unsolicited tag=value lines are reported and other lines wait for receive_data."""

    async def push(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"power=230.5\nhello device\n")
        await writer.drain()
        await reader.read()
        writer.close()

    port = await raw_server(push)
    conn = driver(port)
    got: list[tuple[str, object]] = []

    class Owner:
        state = last_error = connected_at = None
        reconnect_attempts = 0

        def on_data(self, tag: str, value: object, quality: str, ts: float | None) -> None:
            got.append((tag, value))

        def on_tx_drop(self) -> None: ...
        def on_lost(self, exc: BaseException | None) -> None: ...
        def on_activity(self) -> None: ...
        def status_dict(self) -> dict[str, object]:
            return {}

    conn.attach(Owner())  # type: ignore[arg-type]
    await conn.connect()
    try:
        assert await asyncio.wait_for(conn.receive_data(), 2) == b"hello device"
        assert got == [("power", "230.5")]
    finally:
        await conn.disconnect()


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\xff\xfe\xfd\n", ProtocolError),
        (b"x" * 300, ProtocolError),
        (b"PON", ProtocolError),
    ],
)
async def test_garbage_fails_pending_request(
    raw_server: Starter, payload: bytes, error: type[Exception]
) -> None:
    """Test that undecodable, overlong and cut-off answers fail the request with ProtocolError."""

    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(payload)
        await writer.drain()
        writer.close()

    port = await raw_server(bad)
    conn = driver(port, max_line=128)
    lost: list[BaseException | None] = []
    conn.connection_lost = lost.append  # type: ignore[method-assign, assignment]
    await conn.connect()
    try:
        with pytest.raises(error):
            await asyncio.wait_for(conn.health_check(), 2)
        assert lost and isinstance(lost[0], ProtocolError)
    finally:
        await conn.disconnect()


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"port": 1}, "config.host"),
        ({"host": "h"}, "config.port"),
        ({"host": "h", "port": 0}, "config.port"),
        ({"host": "h", "port": "80"}, "config.port"),
        ({"host": "h", "port": 80, "health_request": 5}, "config.health_request"),
    ],
)
def test_bad_config(config: dict[str, object], path: str) -> None:
    """Test that a bad tcp config is a ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        TcpConnection("dev", config)
    assert info.value.path == path
