"""Tests of the line protocol and `PingPongPeer`, over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from edgelink.sim.tcp import answer_request
from edgelink.testing.peers import PingPongPeer


@pytest.fixture
async def peer() -> AsyncIterator[PingPongPeer]:
    async with PingPongPeer(values={"temperature": "21.5"}, identity="boot-1") as peer:
        yield peer


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> bytes:
    writer.write(line)
    return await asyncio.wait_for(reader.readline(), 2)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def sees_close(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(100), 2) == b""
    except ConnectionResetError:
        return True


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.mark.parametrize(
    ("request_line", "answer"),
    [
        ("PING", "PONG"),
        ("PING\n", "PONG"),
        ("PING\r\n", "PONG"),
        ("ID?\n", "boot-1"),
        ("temperature?\n", "21.5"),
        ("humidity?\n", "ERR unknown humidity"),
        ("setpoint=42\n", "OK"),
        ("mode=a=b\n", "OK"),
        ("=5\n", "ERR bad request"),
        ("?\n", "ERR bad request"),
        ("bad tag?\n", "ERR bad request"),
        ("a?b=1\n", "ERR bad request"),
        ("ping\n", "ERR bad request"),
        ("\n", "ERR bad request"),
        ("HELLO\n", "ERR bad request"),
    ],
)
def test_answer_request_table(request_line: str, answer: str) -> None:
    """Test that answer_request answers each request line as the protocol says."""
    values = {"temperature": "21.5"}
    assert answer_request(request_line, values, "boot-1") == answer


def test_answer_request_stores_values_as_text() -> None:
    """Test that tag=value stores the text after the first '=' and tag? reads it back."""
    values: dict[str, str] = {}
    assert answer_request("mode=a=b\r\n", values, "x") == "OK"
    assert values == {"mode": "a=b"}
    assert answer_request("mode?", values, "x") == "a=b"


async def test_peer_speaks_the_protocol(peer: PingPongPeer) -> None:
    """Test that the peer answers PING, ID?, reads, writes and bad requests on one link."""
    reader, writer = await connect(peer.port)
    assert await ask(reader, writer, b"PING\n") == b"PONG\n"
    assert await ask(reader, writer, b"ID?\r\n") == b"boot-1\n"
    assert await ask(reader, writer, b"temperature?\n") == b"21.5\n"
    assert await ask(reader, writer, b"setpoint=7\n") == b"OK\n"
    assert peer.values["setpoint"] == "7"
    assert await ask(reader, writer, b"setpoint?\n") == b"7\n"
    assert await ask(reader, writer, b"nope?\n") == b"ERR unknown nope\n"
    assert await ask(reader, writer, b"what\n") == b"ERR bad request\n"
    assert peer.requests == 7
    await close(writer)


async def test_pipelined_and_split_requests_are_answered_in_order(peer: PingPongPeer) -> None:
    """Test that several lines in one write and one line over several writes are all answered."""
    reader, writer = await connect(peer.port)
    writer.write(b"PING\nID?\nx=1\nx?\nPI")
    await writer.drain()
    await asyncio.sleep(0.01)
    writer.write(b"NG\n")
    lines = [await asyncio.wait_for(reader.readline(), 2) for _ in range(5)]
    assert lines == [b"PONG\n", b"boot-1\n", b"OK\n", b"1\n", b"PONG\n"]
    await close(writer)


async def test_identity_can_change_to_simulate_a_reset(peer: PingPongPeer) -> None:
    """Test that setting identity changes the ID? answer and a default identity is random hex."""
    reader, writer = await connect(peer.port)
    peer.identity = "boot-2"
    assert await ask(reader, writer, b"ID?\n") == b"boot-2\n"
    await close(writer)
    first, second = PingPongPeer().identity, PingPongPeer().identity
    assert first != second
    int(first, 16)


async def test_hung_peer_reads_but_never_answers(peer: PingPongPeer) -> None:
    """Test that respond=False swallows requests: they are counted but no answer comes."""
    reader, writer = await connect(peer.port)
    peer.respond = False
    writer.write(b"PING\n")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readline(), 0.2)
    assert peer.requests == 1
    peer.respond = True
    assert await ask(reader, writer, b"PING\n") == b"PONG\n"
    await close(writer)


async def test_response_delay_is_applied_and_keeps_order(peer: PingPongPeer) -> None:
    """Test that response_delay delays answers and a shorter later delay never overtakes."""
    reader, writer = await connect(peer.port)
    peer.response_delay = 0.15
    started = time.monotonic()
    assert await ask(reader, writer, b"PING\n") == b"PONG\n"
    assert time.monotonic() - started >= 0.15
    writer.write(b"a=1\n")
    await writer.drain()
    await asyncio.sleep(0.01)
    peer.response_delay = 0.0
    writer.write(b"ID?\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"OK\n"
    assert await asyncio.wait_for(reader.readline(), 2) == b"boot-1\n"
    await close(writer)


async def test_restart_keeps_the_port_and_closes_links(peer: PingPongPeer) -> None:
    """Test that restart closes client links, rebinds the same port at once and keeps values."""
    port = peer.port
    reader, writer = await connect(port)
    assert await ask(reader, writer, b"x=5\n") == b"OK\n"
    await wait_until(lambda: peer.connections == 1)
    await peer.restart()
    assert peer.port == port
    assert await sees_close(reader)
    await close(writer)
    reader, writer = await connect(port)
    assert await ask(reader, writer, b"x?\n") == b"5\n"
    await close(writer)


async def test_stop_refuses_connections_and_start_comes_back(peer: PingPongPeer) -> None:
    """Test that a stopped peer refuses connections and start() listens on the same port again."""
    port = peer.port
    reader, writer = await connect(port)
    await wait_until(lambda: peer.connections == 1)
    await peer.stop()
    assert peer.connections == 0
    assert not peer.is_running()
    assert await sees_close(reader)
    await close(writer)
    with pytest.raises(ConnectionRefusedError):
        await connect(port)
    await peer.stop()
    await peer.start()
    reader, writer = await connect(port)
    assert await ask(reader, writer, b"PING\n") == b"PONG\n"
    await close(writer)


async def test_hundreds_of_concurrent_clients(peer: PingPongPeer) -> None:
    """Test that 300 clients connected at once all get their answers."""
    links = await asyncio.gather(*(connect(peer.port) for _ in range(300)))
    await wait_until(lambda: peer.connections == 300)
    for n, (_, writer) in enumerate(links):
        writer.write(f"k{n}={n}\nk{n}?\n".encode())
    answers = await asyncio.gather(
        *(
            asyncio.wait_for(reader.readexactly(len(f"OK\n{n}\n")), 5)
            for n, (reader, _) in enumerate(links)
        )
    )
    assert answers == [f"OK\n{n}\n".encode() for n in range(300)]
    await asyncio.gather(*(close(writer) for _, writer in links))
    await wait_until(lambda: peer.connections == 0)
    assert peer.requests == 600


async def test_overlong_line_is_refused_and_link_closed(peer: PingPongPeer) -> None:
    """Test that a line over the length limit gets ERR bad request and the link is closed."""
    reader, writer = await connect(peer.port)
    writer.write(b"x" * 70_000)
    assert await asyncio.wait_for(reader.readline(), 2) == b"ERR bad request\n"
    assert await sees_close(reader)
    await close(writer)


async def test_port_before_start_and_repr() -> None:
    """Test that port raises before start with port 0, and the repr shows live state."""
    peer = PingPongPeer()
    with pytest.raises(RuntimeError):
        _ = peer.port
    assert "stopped" in repr(peer)
    async with peer:
        assert f":{peer.port} running connections=0 requests=0" in repr(peer)
    assert "stopped" in repr(peer)


async def test_stop_right_after_connect_leaves_no_link(peer: PingPongPeer) -> None:
    """Test that a link accepted just before stop() is closed too, never served afterwards."""
    for _ in range(20):
        reader, writer = await connect(peer.port)
        await peer.stop()
        assert await sees_close(reader)
        await close(writer)
        assert peer.connections == 0
        await peer.start()
