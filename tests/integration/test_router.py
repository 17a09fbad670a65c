"""The router inside a manager, against real tcp devices: routes, writes, spam protection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from conftest import Recorder, tcp
from edgelink import ConnectionLostError, ConnectionManager, ConnectionState, MemoryTarget
from edgelink.drivers.tcp import TcpConnection
from edgelink.testing import ManualClock
from edgelink.testing.peers import PingPongPeer

S = ConnectionState
Make = Callable[..., ConnectionManager]
NO_WATCHDOG = 1e9


class ChattyDevice(TcpConnection):
    """A tcp device that can push a burst of datapoints, like a flooding plugin."""

    type_name = "chatty"

    def burst(self, count: int, tag: str = "x") -> None:
        for i in range(count):
            self.report_data(tag, i)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def one_route(**route: Any) -> dict[str, Any]:
    return {"version": "1.0", "routes": [route]}


async def test_device_value_routed_to_another_device(make_manager: Make) -> None:
    """Test device A reports -> condition and transform -> written to device B's peer."""
    async with (
        PingPongPeer(values={"temperature": "21.5"}) as peer_a,
        PingPongPeer(values={}) as peer_b,
    ):
        m = make_manager()
        m.add_connection(
            "dev_a", "tcp", tcp(peer_a.port), poll=[{"tags": ["temperature"], "interval": 0.02}]
        )
        m.add_connection("dev_b", "tcp", tcp(peer_b.port))
        m.router.load_routes(
            one_route(
                id="a_to_b",
                **{"from": "dev_a.temperature"},
                to="dev_b.MAIN.setpoint",
                condition="value > 20 and quality == 'good'",
                transform="scale(2) | round(1)",
            )
        )
        async with m:
            await until(lambda: peer_b.values.get("MAIN.setpoint") == "43.0")
            peer_a.values["temperature"] = "19.0"  # below the condition: no more writes
            await until(lambda: m.router.route_stats("a_to_b")["filtered"] >= 3)
            await m.router.drain()
            writes = peer_b.requests
            await until(lambda: m.router.route_stats("a_to_b")["filtered"] >= 6)
            await m.router.drain()
            assert peer_b.requests - writes <= 1  # a health check at most, no write
            assert peer_b.values["MAIN.setpoint"] == "43.0"
            stats = m.router.route_stats("a_to_b")
            assert stats["passed"] >= 1 and stats["errors"] == 0
            last = m.router.data.get("dev_a.temperature")
            assert last is not None and last.value == "19.0" and last.source == "dev_a"
            assert m.router.data.children("dev_a") == ["dev_a.temperature"]
            assert m.router.endpoints == {"dev_a": "connection", "dev_b": "connection"}


async def test_write_to_a_stopped_device_fails_alone(
    make_manager: Make, peer: PingPongPeer
) -> None:
    """Test that a write that cannot happen counts an error and other targets still get data."""
    m = make_manager()
    m.add_connection("src", "tcp", tcp(peer.port))
    m.add_connection("off", "tcp", tcp(peer.port), enabled=False)
    mem = MemoryTarget()
    m.router.add_target("mem", mem)
    m.router.load_routes(one_route(id="r", **{"from": "src.x"}, to=["off.y", "mem.y"]))
    async with m:
        await m.wait_for_state("src", "connected", timeout=5)
        conn = m.get_connection("src")
        assert conn is not None
        conn.report_data("x", 1)
        await m.router.drain(timeout=5)
        assert mem.values == [1]
        stats = m.router.route_stats("r")
        assert stats["errors"] == 1 and "ConnectionLostError" in stats["last_error"]


PAIR = {
    "routes": [
        {"id": "ab", "from": "a.x", "to": "b.y", "transform": "deadband(0)"},
        {"id": "ba", "from": "b.y", "to": "a.x", "transform": "deadband(0)"},
    ]
}


def passed(m: ConnectionManager) -> int:
    return int(m.router.route_stats("ab")["passed"] + m.router.route_stats("ba")["passed"])


async def polled_pair(make_manager: Make, x: str, y: str) -> Any:
    pa = PingPongPeer(values={"x": x})
    pb = PingPongPeer(values={"y": y})
    await pa.start()
    await pb.start()
    m = make_manager()
    m.add_connection("a", "tcp", tcp(pa.port), poll=[{"tags": ["x"], "interval": 0.02}])
    m.add_connection("b", "tcp", tcp(pb.port), poll=[{"tags": ["y"], "interval": 0.02}])
    m.router.load_routes(PAIR)
    return m, pa, pb


async def test_polled_bidirectional_pair_settles(make_manager: Make) -> None:
    """Test that A.x <-> B.y between two polled devices propagates a change once, then rests."""
    m, pa, pb = await polled_pair(make_manager, "5", "5")
    try:
        async with m:
            await until(lambda: m.router.route_stats("ab")["suppressed"] >= 10)
            start = passed(m)
            assert start <= 2  # each side's first reading, nothing more
            pa.values["x"] = "7"  # someone changes a at the device
            await until(lambda: pb.values["y"] == "7")
            await until(lambda: m.router.route_stats("ba")["suppressed"] >= 20)
            settled = passed(m)
            await until(lambda: m.router.route_stats("ab")["suppressed"] >= 40)
            assert passed(m) == settled <= start + 2
            assert pa.values["x"] == "7" and pb.values["y"] == "7"
    finally:
        await pa.stop()
        await pb.stop()


async def test_polled_pair_changing_at_once_settles(make_manager: Make) -> None:
    """Test that a pair whose sides differ at start (writes racing reports) stops writing."""
    m, pa, pb = await polled_pair(make_manager, "5", "0")
    try:
        async with m:
            await until(lambda: m.router.route_stats("ab")["matched"] >= 10)
            first = passed(m)
            await until(lambda: m.router.route_stats("ab")["matched"] >= 40)
            assert passed(m) == first <= 4  # no ping-pong: the pair has settled
    finally:
        await pa.stop()
        await pb.stop()


async def test_spam_suspends_the_connection_until_resumed(
    make_manager: Make, clock: ManualClock, peer: PingPongPeer
) -> None:
    """Test that more than spam_max_pps datapoints in a second suspend it (reason spam)."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG)
    m.register_connection_type("chatty", ChattyDevice)
    conn = m.add_connection("dev", "chatty", tcp(peer.port), settings={"spam_max_pps": 50})
    assert isinstance(conn, ChattyDevice)
    rec = Recorder(m)
    seen: list[Any] = []
    m.on_data(lambda cid, tag, value, quality, ts: seen.append(value))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        conn.burst(60)  # all at one instant of the manual clock
        await m.wait_for_state("dev", "suspended", timeout=5)
        status = m.get_status("dev")
        assert status["reason"] == "spam" and status["desired"] == "running"
        assert seen == list(range(50))  # the rest was dropped
        assert m.router.stats()["spam_dropped"] == 10
        assert [dp.value for dp in m.router.data.history("dev.x")][-1] == 49
        spam = (await rec.wait_for("spam_suspended"))[0]
        assert spam.data["limit_pps"] == 50 and spam.data["count"] == 51
        suspended = await rec.of("suspended")
        assert [e.data["reason"] for e in suspended] == ["spam"]
        assert "disconnected" in await rec.types()
        await asyncio.sleep(0.05)
        assert peer.connections == 0  # the link is closed
        # It waits for a person: no cooldown probe, and the watchdog leaves it alone.
        assert all(delay > 1e6 for delay in clock.pending())
        assert m.check_supervisors() == []
        with pytest.raises(ConnectionLostError, match="suspended"):
            await m.execute_with_retry("dev", lambda c: c.read("temperature"))
        await m.resume("dev")
        await m.wait_for_state("dev", "connected", timeout=5)
        assert len(await rec.of("resumed")) == 1
        seen.clear()
        conn.burst(20)
        assert seen == list(range(20))
        assert m.get_state("dev") is S.CONNECTED


async def test_spam_protection_defaults_and_off(
    make_manager: Make, clock: ManualClock, peer: PingPongPeer
) -> None:
    """Test the 500 pps default, spam_max_pps null, and that code sources are not limited."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG)
    m.register_connection_type("chatty", ChattyDevice)
    default = m.add_connection("dflt", "chatty", tcp(peer.port))
    free = m.add_connection("free", "chatty", tcp(peer.port), settings={"spam_max_pps": None})
    assert m.get_spec("dflt").settings.spam_max_pps == 500
    async with m:
        await m.wait_for_state("dflt", "connected", timeout=5)
        await m.wait_for_state("free", "connected", timeout=5)
        assert isinstance(default, ChattyDevice) and isinstance(free, ChattyDevice)
        default.burst(500)
        free.burst(5000)
        for i in range(5000):
            m.router.route_data("calc", "x", i)
        await asyncio.sleep(0.05)
        assert m.get_state("dflt") is S.CONNECTED and m.get_state("free") is S.CONNECTED
        default.burst(1)  # the 501st within the same second
        await m.wait_for_state("dflt", "suspended", timeout=5)
        assert m.get_state("free") is S.CONNECTED
        assert m.router.data.value("calc.x") == 4999
        await m.remove_connection("free")
        assert "free" not in m.router.endpoints
