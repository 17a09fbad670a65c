"""Shared Modbus links: several unit ids on one link, a fair queue, a dead slave's probe lane."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from edgelink import ConfigError, ConnectError, ConnectionManager
from edgelink.drivers._modbus_bus import ModbusBus, _FairQueue
from edgelink.drivers.modbus import ModbusTcpConnection, ModbusTimeoutError
from edgelink.sim.modbus import ModbusDevice, ModbusServer
from edgelink.testing import FaultProxy, ManualClock

Make = Callable[..., ConnectionManager]


@pytest.fixture
async def gateway() -> AsyncIterator[ModbusServer]:
    """A Modbus TCP 'gateway': units 1, 2 and 3 behind one server, hr:0 = unit id."""
    devices = [ModbusDevice(unit, registers=20, bits=16) for unit in (1, 2, 3)]
    for dev in devices:
        dev.hr[0] = dev.unit_id
    async with ModbusServer(devices) as srv:
        yield srv


def unit(port: int, unit_id: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "unit_id": unit_id, "timeout": 0.3, **extra}


async def test_fair_queue_serves_lanes_round_robin() -> None:
    """Test that waiters are served one per lane in turn, not first come first served."""
    queue = _FairQueue()
    await queue.acquire("a")  # the wire is busy
    order: list[str] = []

    async def use(lane: str, name: str) -> None:
        await queue.acquire(lane)
        order.append(name)
        queue.release()

    tasks = [
        asyncio.create_task(use(lane, name))
        for lane, name in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1")]
    ]
    await asyncio.sleep(0)
    assert len(queue) == 5
    queue.release()
    await asyncio.gather(*tasks)
    assert order == ["a1", "b1", "c1", "a2", "a3"]
    assert len(queue) == 0


async def test_cancelled_waiter_leaves_the_queue() -> None:
    """Test that a waiter cancelled in the queue neither blocks nor takes a turn."""
    queue = _FairQueue()
    await queue.acquire(1)
    waiter = asyncio.create_task(queue.acquire(2))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(queue) == 0
    queue.release()
    await asyncio.wait_for(queue.acquire(3), 1)  # the wire is free again


async def test_units_on_one_host_port_share_one_link(gateway: ModbusServer) -> None:
    """Test that three unit ids on one host:port use one TCP connection, and each reads its own."""
    async with FaultProxy("127.0.0.1", gateway.port) as proxy:
        conns = [ModbusTcpConnection(f"u{u}", unit(proxy.port, u)) for u in (1, 2, 3)]
        for c in conns:
            await c.connect()
        try:
            assert [await c.read("hr:0") for c in conns] == [1, 2, 3]
            assert proxy.accepted == 1 and proxy.active_links == 1
            assert conns[0].bus is conns[1].bus is conns[2].bus
            status = conns[0].bus_status()
            assert status is not None and status["members"] == ["u1", "u2", "u3"]
            # Traffic is booked on the connection that made it.
            assert all(c.stats.packets_sent == 1 for c in conns)
            await conns[0].disconnect()
            assert conns[1].is_connected() and await conns[1].read("hr:0") == 2
        finally:
            for c in conns:
                await c.disconnect()
        await asyncio.sleep(0.05)
        assert proxy.active_links == 0  # the last one out closed the link


async def test_bus_names_keep_links_apart(gateway: ModbusServer) -> None:
    """Test that connections to one host:port with different bus names get their own links."""
    async with FaultProxy("127.0.0.1", gateway.port) as proxy:
        a = ModbusTcpConnection("a", unit(proxy.port, 1, bus="left"))
        b = ModbusTcpConnection("b", unit(proxy.port, 2, bus="right"))
        await a.connect()
        await b.connect()
        try:
            assert a.bus is not b.bus
            assert (await a.read("hr:0"), await b.read("hr:0")) == (1, 2)
            assert proxy.accepted == 2
        finally:
            await a.disconnect()
            await b.disconnect()


async def test_members_of_one_link_must_agree_on_its_settings(gateway: ModbusServer) -> None:
    """Test that a connection joining a link with other transport settings is a ConfigError."""
    a = ModbusTcpConnection("a", unit(gateway.port, 1))
    b = ModbusTcpConnection("b", unit(gateway.port, 2, keepalive_idle=60))
    await a.connect()
    try:
        with pytest.raises(ConfigError, match="settings differ") as info:
            await b.connect()
        assert info.value.connection_id == "b" and not b.is_connected()
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_dead_unit_fails_fast_until_its_probe_is_due(gateway: ModbusServer) -> None:
    """Test that a unit that stopped answering is probed once per interval, never in between."""
    gateway.device(3).silent = True
    c = ModbusTcpConnection("u3", unit(gateway.port, 3, dead_after=2, probe_interval=10))
    live = ModbusTcpConnection("u1", unit(gateway.port, 1))
    await c.connect()
    await live.connect()
    clock = ManualClock()
    assert c.bus is not None
    c.bus.clock = clock
    try:
        for _ in range(2):
            with pytest.raises(ModbusTimeoutError):
                await c.read("hr:0")
            assert await live.read("hr:0") == 1  # a live unit between keeps the link
        on_wire = len(gateway.device(3).requests)
        assert on_wire == 2
        started = time.monotonic()
        with pytest.raises(ConnectError, match=r"next probe in 10\.0 s"):
            await c.read("hr:0")
        assert time.monotonic() - started < 0.1  # no request, no timeout
        assert len(gateway.device(3).requests) == on_wire
        assert c.bus_status()["units"][3]["dead"] is True  # type: ignore[index]
        await clock.advance(10)
        gateway.device(3).silent = False
        assert await c.read("hr:0") == 3  # the probe
        assert c.bus_status()["units"][3] == {  # type: ignore[index]
            "failures": 0,
            "dead": False,
            "next_probe_in": None,
            "answered": 1,
            "timeouts": 2,
        }
        assert live.is_connected()
    finally:
        await c.disconnect()
        await live.disconnect()


async def test_silent_link_is_rebuilt_when_no_unit_answers(gateway: ModbusServer) -> None:
    """Test that two units silent in a row with no answer between fail the shared link itself."""
    for u in (1, 2):
        gateway.device(u).silent = True
    a = ModbusTcpConnection("a", unit(gateway.port, 1))
    b = ModbusTcpConnection("b", unit(gateway.port, 2))
    lost: list[BaseException | None] = []
    b.connection_lost = lost.append  # type: ignore[method-assign, assignment]
    await a.connect()
    await b.connect()
    try:
        with pytest.raises(ModbusTimeoutError):
            await a.read("hr:0")
        assert b.is_connected()
        with pytest.raises(ModbusTimeoutError):
            await b.read("hr:0")
        assert not a.is_connected() and not b.is_connected()
        assert lost and isinstance(lost[0], ModbusTimeoutError)
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_silent_unit_does_not_stall_the_others(
    make_manager: Make, gateway: ModbusServer
) -> None:
    """Test that with one of three units silent, the other two keep their polling cadence."""
    interval, timeout, window = 0.1, 0.2, 2.5
    gateway.device(3).silent = True
    m = make_manager(
        health_check_interval=60,
        # The silent unit's own supervisor retries as fast as it may: the bus's
        # probe lane, not its backoff, is what keeps it off the wire.
        reconnect_initial_delay=0.02,
        reconnect_max_delay=0.05,
        reconnect_max_attempts=None,
        connect_timeout=0.5,
    )
    seen: dict[str, list[float]] = defaultdict(list)

    def on_data(cid: str, tag: str, value: Any, quality: str, ts: float) -> None:
        if quality == "good":
            seen[cid].append(time.monotonic())

    m.on_data(on_data)
    for u in (1, 2, 3):
        m.add_connection(
            f"u{u}",
            "modbus_tcp",
            unit(gateway.port, u, timeout=timeout, dead_after=2, probe_interval=1.0),
            poll=[{"tags": ["hr:0", "hr:1:float32"], "interval": interval}],
        )
    async with m:
        await m.wait_for_state("u1", "connected", timeout=5)
        await m.wait_for_state("u2", "connected", timeout=5)
        start = time.monotonic()
        probes_before = len(gateway.device(3).requests)
        await asyncio.sleep(window)
        end = time.monotonic()
        probes = len(gateway.device(3).requests) - probes_before
        states = {cid: m.get_state(cid) for cid in ("u1", "u2", "u3")}
        reconnects = {cid: m.get_status(cid)["stats"]["reconnects"] for cid in ("u1", "u2")}
    assert states["u1"] == states["u2"] == "connected" and states["u3"] != "connected"
    assert reconnects == {"u1": 0, "u2": 0}
    assert "u3" not in seen
    # One probe per probe_interval (plus one in flight at the window's edges).
    assert probes <= window / 1.0 + 2
    for cid in ("u1", "u2"):
        stamps = [t for t in seen[cid] if start <= t <= end]
        rounds = len(stamps) / 2  # two tags per round
        assert rounds >= 0.75 * window / interval, (cid, rounds)
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        # At most one probe's timeout in the way of a round, plus scheduling slack.
        assert max(gaps) < interval + timeout + 0.2, (cid, max(gaps))


def bus_of(m: ConnectionManager, connection_id: str) -> ModbusBus:
    """The shared link of a Modbus TCP connection of ``m``."""
    conn = m.get_connection(connection_id)
    assert isinstance(conn, ModbusTcpConnection) and conn.bus is not None
    return conn.bus


async def test_one_unit_lost_keeps_the_others_on_the_link(
    make_manager: Make, gateway: ModbusServer
) -> None:
    """Test that a unit whose requests time out reconnects alone; the link and the others stay."""
    m = make_manager(health_check_interval=60, reconnect_initial_delay=0.02)
    for u in (1, 2):
        m.add_connection(
            f"u{u}",
            "modbus_tcp",
            unit(gateway.port, u),
            poll=[{"tags": ["hr:0"], "interval": 0.05}],
        )
    async with m:
        await m.wait_for_state("u1", "connected", timeout=5)
        await m.wait_for_state("u2", "connected", timeout=5)
        link = bus_of(m, "u1")
        generation = link.generation
        gateway.device(2).silent = True
        await m.wait_for_state("u2", "reconnecting", timeout=5)
        gateway.device(2).silent = False
        await m.wait_for_state("u2", "connected", timeout=5)
        assert m.get_state("u1") == "connected"
        assert m.get_status("u1")["stats"]["reconnects"] == 0
        assert link.generation == generation
        assert bus_of(m, "u2") is link


async def test_lost_link_reconnects_every_member(make_manager: Make, gateway: ModbusServer) -> None:
    """Test that when the shared link dies every member reconnects, onto one new link."""
    m = make_manager(health_check_interval=60, reconnect_initial_delay=0.05)
    for u in (1, 2, 3):
        m.add_connection(f"u{u}", "modbus_tcp", unit(gateway.port, u))
    async with m:
        for u in (1, 2, 3):
            await m.wait_for_state(f"u{u}", "connected", timeout=5)
        await gateway.stop()
        for u in (1, 2, 3):
            await m.wait_for_state(f"u{u}", "reconnecting", timeout=5)
        await gateway.start()
        for u in (1, 2, 3):
            await m.wait_for_state(f"u{u}", "connected", timeout=5)
        buses = {id(bus_of(m, f"u{u}")) for u in (1, 2, 3)}
        assert len(buses) == 1
        values = [await m.execute_with_retry(f"u{u}", lambda c: c.read("hr:0")) for u in (1, 2, 3)]
        assert values == [1, 2, 3]
