"""Tests of `FaultProxy`: every fault seen by a real client through the proxy to a real peer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest

from edgelink.testing.fault_proxy import DEFAULT_GARBAGE, FaultMode, FaultProxy
from edgelink.testing.peers import PingPongPeer


@pytest.fixture
async def peer() -> AsyncIterator[PingPongPeer]:
    async with PingPongPeer(identity="boot-1") as peer:
        yield peer


@pytest.fixture
async def proxy(peer: PingPongPeer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", peer.port) as proxy:
        yield proxy


Link = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(proxy: FaultProxy) -> Link:
    return await asyncio.open_connection(*proxy.address)


async def ask(link: Link, line: bytes, timeout: float = 2.0) -> bytes:
    reader, writer = link
    writer.write(line)
    return await asyncio.wait_for(reader.readline(), timeout)


async def close(link: Link) -> None:
    _, writer = link
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def sees_close(reader: asyncio.StreamReader) -> bool:
    """Return True if the link ends (EOF or reset) within 2 s."""
    try:
        return await asyncio.wait_for(reader.read(100), 2) == b""
    except ConnectionResetError:
        return True


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Read until EOF or a reset (within 2 s) and return what arrived."""
    received = b""
    try:
        async with asyncio.timeout(2):
            while chunk := await reader.read(100):
                received += chunk
    except ConnectionResetError:
        pass
    return received


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def recv_until_reset(sock: socket.socket) -> tuple[bytes, bool]:
    """Read a raw socket to its end; return what arrived and whether it ended in a reset."""
    loop = asyncio.get_running_loop()
    received = b""
    try:
        async with asyncio.timeout(2):
            while chunk := await loop.sock_recv(sock, 4096):
                received += chunk
    except ConnectionResetError:
        return received, True
    return received, False


async def test_pass_forwards_both_ways_and_counts(peer: PingPongPeer, proxy: FaultProxy) -> None:
    """Test that PASS mode forwards requests and answers and counts links and bytes."""
    assert proxy.mode is FaultMode.PASS
    link = await connect(proxy)
    assert await ask(link, b"PING\n") == b"PONG\n"
    assert await ask(link, b"ID?\n") == b"boot-1\n"
    assert proxy.accepted == 1
    assert proxy.active_links == 1
    assert peer.connections == 1
    assert proxy.bytes_up == len(b"PING\nID?\n")
    assert proxy.bytes_down == len(b"PONG\nboot-1\n")
    assert "mode=pass links=1 accepted=1" in repr(proxy)
    await close(link)
    await wait_until(lambda: proxy.active_links == 0 and peer.connections == 0)


async def test_peer_closing_is_passed_on(peer: PingPongPeer, proxy: FaultProxy) -> None:
    """Test that a peer that closes its links is seen as closed by the client, and the link ends."""
    reader, writer = await connect(proxy)
    assert await ask((reader, writer), b"PING\n") == b"PONG\n"
    await peer.stop()
    assert await sees_close(reader)
    await close((reader, writer))
    await wait_until(lambda: proxy.active_links == 0)


async def test_unreachable_upstream_resets_the_client(
    peer: PingPongPeer, proxy: FaultProxy
) -> None:
    """Test that a client is cut at once when the proxy cannot reach the peer."""
    await peer.stop()
    reader, writer = await connect(proxy)
    assert await sees_close(reader)
    await close((reader, writer))
    await wait_until(lambda: proxy.active_links == 0)


async def test_refuse_mode_cuts_accepted_links(peer: PingPongPeer, proxy: FaultProxy) -> None:
    """Test that REFUSE accepts and cuts at once: EOF or reset for the client, nothing upstream."""
    proxy.mode = FaultMode.REFUSE
    reader, writer = await connect(proxy)
    writer.write(b"PING\n")
    assert await sees_close(reader)
    await close((reader, writer))
    assert proxy.accepted == 1
    assert proxy.active_links == 0
    assert peer.requests == 0
    proxy.mode = FaultMode.PASS
    link = await connect(proxy)
    assert await ask(link, b"PING\n") == b"PONG\n"
    await close(link)


async def test_stop_listening_refuses_and_start_listening_returns_on_same_port(
    proxy: FaultProxy,
) -> None:
    """Test that stop_listening makes connects fail with ConnectionRefusedError until restarted."""
    port = proxy.port
    survivor = await connect(proxy)
    assert await ask(survivor, b"PING\n") == b"PONG\n"
    await proxy.stop_listening()
    assert not proxy.is_listening()
    with pytest.raises(ConnectionRefusedError):
        await connect(proxy)
    assert await ask(survivor, b"PING\n") == b"PONG\n"
    await proxy.start_listening()
    assert proxy.port == port
    link = await connect(proxy)
    assert await ask(link, b"PING\n") == b"PONG\n"
    await close(link)
    await close(survivor)


async def test_half_open_accepts_and_then_says_nothing(
    peer: PingPongPeer, proxy: FaultProxy
) -> None:
    """Test that a HALF_OPEN link is accepted but never forwarded nor closed, even back in PASS."""
    proxy.mode = FaultMode.HALF_OPEN
    reader, writer = await connect(proxy)
    writer.write(b"PING\n")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), 0.2)
    assert proxy.active_links == 1
    assert peer.connections == 0
    assert peer.requests == 0
    proxy.mode = FaultMode.PASS
    writer.write(b"PING\n")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), 0.1)
    await proxy.drop_all()
    assert await sees_close(reader)
    assert proxy.active_links == 0
    await close((reader, writer))


async def test_stall_holds_data_on_existing_and_new_links(
    peer: PingPongPeer, proxy: FaultProxy
) -> None:
    """Test that STALL stops forwarding on open and new links without closing, and PASS resumes."""
    old = await connect(proxy)
    assert await ask(old, b"PING\n") == b"PONG\n"
    proxy.mode = FaultMode.STALL
    old[1].write(b"x=1\n")
    new = await connect(proxy)
    new[1].write(b"PING\n")
    for reader, _ in (old, new):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.2)
    assert peer.requests == 1
    assert proxy.active_links == 2
    proxy.mode = FaultMode.PASS
    assert await asyncio.wait_for(old[0].readline(), 2) == b"OK\n"
    assert await asyncio.wait_for(new[0].readline(), 2) == b"PONG\n"
    assert peer.values == {"x": "1"}
    await close(old)
    await close(new)


async def test_corrupt_replaces_downstream_bytes_only(
    peer: PingPongPeer, proxy: FaultProxy
) -> None:
    """Test that CORRUPT garbles what goes to the client while requests reach the peer intact."""
    link = await connect(proxy)
    proxy.mode = FaultMode.CORRUPT
    assert await ask(link, b"x=1\n") == DEFAULT_GARBAGE
    assert peer.values == {"x": "1"}
    proxy.corrupt_with = None
    link[1].write(b"PING\n")
    flipped = await asyncio.wait_for(link[0].readexactly(5), 2)
    assert flipped == bytes(b ^ 0xFF for b in b"PONG\n")
    proxy.corrupt_with = b"!!\n"
    assert await ask(link, b"PING\n") == b"!!\n"
    proxy.mode = FaultMode.PASS
    assert await ask(link, b"PING\n") == b"PONG\n"
    await close(link)


@pytest.mark.parametrize("n_bytes", [0, 3, 5])
async def test_drop_after_downstream_delivers_exactly_n_bytes_then_resets(
    proxy: FaultProxy, n_bytes: int
) -> None:
    """Test that drop_after(n) delivers the first n bytes of the answer, then resets the link."""
    loop = asyncio.get_running_loop()
    with socket.create_connection(proxy.address) as sock:
        sock.setblocking(False)
        proxy.drop_after(n_bytes)
        await loop.sock_sendall(sock, b"PING\n")
        received, reset = await recv_until_reset(sock)
    assert received == b"PONG\n"[:n_bytes]
    assert reset
    await wait_until(lambda: proxy.active_links == 0)
    link = await connect(proxy)
    assert await ask(link, b"PING\n") == b"PONG\n"
    await close(link)


async def test_drop_after_counts_over_several_chunks(proxy: FaultProxy) -> None:
    """Test that the byte budget spans chunks: whole answers pass until the one that crosses it."""
    loop = asyncio.get_running_loop()
    with socket.create_connection(proxy.address) as sock:
        sock.setblocking(False)
        proxy.drop_after(7)
        await loop.sock_sendall(sock, b"PING\n")
        assert await asyncio.wait_for(loop.sock_recv(sock, 100), 2) == b"PONG\n"
        await loop.sock_sendall(sock, b"PING\n")
        received, reset = await recv_until_reset(sock)
    assert (received, reset) == (b"PO", True)


async def test_drop_after_upstream_cuts_the_request(peer: PingPongPeer, proxy: FaultProxy) -> None:
    """Test that drop_after upstream lets only a partial request reach the peer, then resets."""
    reader, writer = await connect(proxy)
    assert await ask((reader, writer), b"PING\n") == b"PONG\n"
    proxy.drop_after(4, "upstream")
    writer.write(b"x=12345\n")
    assert await sees_close(reader)
    await close((reader, writer))
    await wait_until(lambda: peer.connections == 0)
    assert peer.requests == 1
    assert peer.values == {}


async def test_drop_after_both_directions_shares_one_budget(proxy: FaultProxy) -> None:
    """Test that drop_after(n, "both") counts request and answer bytes together."""
    loop = asyncio.get_running_loop()
    with socket.create_connection(proxy.address) as sock:
        sock.setblocking(False)
        proxy.drop_after(7, "both")
        await loop.sock_sendall(sock, b"PING\n")
        received, reset = await recv_until_reset(sock)
    assert (received, reset) == (b"PO", True)


async def test_drop_all_resets_every_link_and_keeps_listening(
    peer: PingPongPeer, proxy: FaultProxy
) -> None:
    """Test that drop_all cuts every current link, stalled ones included, and new links work."""
    links = [await connect(proxy) for _ in range(3)]
    for link in links:
        assert await ask(link, b"PING\n") == b"PONG\n"
    proxy.mode = FaultMode.STALL
    links[0][1].write(b"PING\n")
    await asyncio.sleep(0.02)
    await proxy.drop_all()
    assert proxy.active_links == 0
    for reader, _ in links:
        assert await sees_close(reader)
    for link in links:
        await close(link)
    await wait_until(lambda: peer.connections == 0)
    proxy.mode = FaultMode.PASS
    link = await connect(proxy)
    assert await ask(link, b"PING\n") == b"PONG\n"
    await close(link)


async def test_delay_adds_latency_per_direction(proxy: FaultProxy) -> None:
    """Test that set_delay(d) slows a round trip by about 2*d and set_delay(0) removes it."""
    link = await connect(proxy)
    assert await ask(link, b"PING\n") == b"PONG\n"
    proxy.set_delay(0.15)
    assert proxy.delay == 0.15
    started = time.monotonic()
    assert await ask(link, b"PING\n") == b"PONG\n"
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.5
    proxy.set_delay(0)
    started = time.monotonic()
    assert await ask(link, b"PING\n") == b"PONG\n"
    assert time.monotonic() - started < 0.2
    await close(link)


async def test_bad_arguments_are_rejected(proxy: FaultProxy) -> None:
    """Test that negative delays and byte counts and unknown directions raise ValueError."""
    with pytest.raises(ValueError, match="negative"):
        proxy.set_delay(-1)
    with pytest.raises(ValueError, match="negative"):
        proxy.drop_after(-1)
    with pytest.raises(ValueError, match="direction"):
        proxy.drop_after(1, "sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nonsense"):
        proxy.mode = "nonsense"  # type: ignore[assignment]
    proxy.drop_after(0)
    proxy.drop_after(None)
    link = await connect(proxy)
    assert await ask(link, b"PING\n") == b"PONG\n"
    await close(link)


async def test_close_is_idempotent_and_final(peer: PingPongPeer) -> None:
    """Test that close cuts links, can be called twice, and a closed proxy cannot start again."""
    proxy = FaultProxy("127.0.0.1", peer.port)
    with pytest.raises(RuntimeError):
        _ = proxy.port
    await proxy.start()
    reader, writer = await connect(proxy)
    assert await ask((reader, writer), b"PING\n") == b"PONG\n"
    await proxy.close()
    await proxy.close()
    assert await sees_close(reader)
    await close((reader, writer))
    assert proxy.active_links == 0
    with pytest.raises(RuntimeError, match="closed"):
        await proxy.start_listening()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_leaks_after_many_connect_and_drop_cycles() -> None:
    """Test that 200 connect/drop cycles leave file descriptors and tasks where they started."""
    gc.collect()  # let what earlier tests left closing finish first
    await asyncio.sleep(0.05)
    fds_before = open_fds()
    tasks_before = len(asyncio.all_tasks())
    async with PingPongPeer() as peer, FaultProxy("127.0.0.1", peer.port) as proxy:
        for cycle in range(200):
            reader, writer = await connect(proxy)
            assert await ask((reader, writer), b"PING\n") == b"PONG\n"
            if cycle % 3 == 0:
                await proxy.drop_all()
                assert await sees_close(reader)
            elif cycle % 3 == 1:
                proxy.drop_after(2)
                writer.write(b"PING\n")
                assert await read_to_end(reader) == b"PO"
            await close((reader, writer))
        await wait_until(lambda: proxy.active_links == 0 and peer.connections == 0)
        assert proxy.accepted == 200
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == tasks_before
    assert open_fds() == fds_before
