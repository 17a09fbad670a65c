"""DeviceConnectionService on the registry's connections, against ZK simulators on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from device_registry.registry_kit import row
from edgelink.devices import DeviceConnection, DeviceConnectionService, DeviceRegistry
from edgelink.drivers.zk_protocol import Command
from edgelink.testing import ZkFault

Sims = Callable[..., Any]


async def test_connection_is_reused_after_a_real_liveness_test(
    registry: DeviceRegistry, sims: Sims
) -> None:
    """Test that get_connection reuses one session, each time after a request the device answered."""
    sim = await sims(user_count=3)
    device = await registry.add_device(**row(sim))
    async with registry.session() as db:
        service = DeviceConnectionService(db)
        first = await service.get_connection(device)
        assert isinstance(first, DeviceConnection)
        checks = sim.count(Command.GET_TIME)
        second = await service.get_connection(device.id)
        assert second is not None and second.connection_id == first.connection_id
    assert sim.count(Command.GET_TIME) == checks + 1  # the liveness test reached the device
    assert sim.sessions_opened == 1
    info = await second.device_info()
    assert info["serial_number"] == "SIM0000000001"
    assert [u.user_id for u in await second.get_users()] == ["1", "2", "3"]
    assert await second.read("user_count") == 3
    await second.write("enabled", False)
    assert sim.device.enabled is False
    assert second.is_connected() and second.get_status()["status"] == "connected"
    with pytest.raises(AttributeError, match="no operation 'fly'"):
        second.fly  # noqa: B018


async def test_stale_link_is_replaced(registry: DeviceRegistry, sims: Sims) -> None:
    """Test that a link the device forgot fails the liveness test and a new session replaces it."""
    sim = await sims()
    device = await registry.add_device(**row(sim))
    service = DeviceConnectionService(registry)
    assert await service.get_connection(device) is not None
    sim.fault = ZkFault.SILENCE  # the terminal hangs: the open link answers nothing
    assert await service.test_connection(device.id) is False
    sim.fault = None
    sim.drop_links()
    conn = await service.get_connection(device)
    assert conn is not None
    assert await conn.get_firmware_version() == "Ver 6.60 Apr 28 2017"
    assert sim.sessions_opened >= 2


async def test_unreachable_and_refusing_devices_give_none(
    registry: DeviceRegistry, sims: Sims
) -> None:
    """Test that a stopped terminal or a wrong comm key gives None at once, not a hang."""
    sim = await sims()
    other = await sims(comm_key=1)  # our key is wrong here
    device = await registry.add_device(**row(sim))
    locked = await registry.add_device(**row(other, "locked"))
    service = DeviceConnectionService(registry, timeout=3.0)
    await sim.stop()
    await registry.manager.wait_for_state(registry.connection_id(device.id), "reconnecting", 5)
    started = time.monotonic()
    assert await service.get_connection(device) is None
    assert await service.get_connection(locked) is None
    assert time.monotonic() - started < 2.0  # the failed attempts answered, not the timeout
    assert service.get_status(locked.id)["reason"] == "auth"
    await sim.start()  # back on the same port
    assert await service.get_connection(device) is not None


async def test_disconnect_device_and_all(registry: DeviceRegistry, sims: Sims) -> None:
    """Test that disconnect_device stops one connection until asked again, disconnect_all every one."""
    sim = await sims()
    devices = [await registry.add_device(**row(sim, f"d{i}")) for i in range(3)]
    service = DeviceConnectionService(registry)
    for d in devices:
        assert await service.get_connection(d) is not None
    await service.disconnect_device(devices[0].id)
    await service.disconnect_device(999)  # unknown: ignored, as in the document
    status = service.status()
    assert [status[d.id]["status"] for d in devices] == ["disconnected", "connected", "connected"]
    assert status[devices[0].id]["desired"] == "stopped"
    handle = await service.get_connection(devices[1])
    assert handle is not None
    await handle.disconnect()
    assert not handle.is_connected()
    assert await handle.connect() is True  # the document's `if await conn.connect():`
    assert await registry.sync() is not None and sim.connections == 2  # a sync does not restart it
    assert await service.get_connection(devices[0]) is not None
    await service.disconnect_all()
    assert {s["status"] for s in service.status().values()} == {"disconnected"}
    await asyncio.sleep(0)
    assert sim.count(Command.EXIT) == 5


async def test_disabled_unknown_and_foreign(registry: DeviceRegistry, sims: Sims) -> None:
    """Test None for a disabled device, KeyError for an unknown one, TypeError for a foreign session."""
    sim = await sims()
    device = await registry.add_device(**row(sim, enabled=False))
    service = DeviceConnectionService(registry)
    assert await service.get_connection(device) is None
    assert sim.accepted == 0
    with pytest.raises(KeyError, match="device 999 is not in the registry"):
        await service.get_connection(999)
    async with AsyncSession(registry.engine) as foreign:
        with pytest.raises(TypeError, match=r"DeviceRegistry\.session"):
            DeviceConnectionService(foreign)
    conn = DeviceConnection(registry, device.id)
    await registry.delete_device(device.id)
    with pytest.raises(KeyError, match="no longer in the registry"):
        await conn.call(lambda c: c.get_time())


async def test_many_devices_concurrently_one_session_each(
    registry: DeviceRegistry, sims: Sims
) -> None:
    """Test 12 devices asked for at once, each 3 times: 12 sessions, all answering."""
    terminals = [await sims(serial_number=f"SN{i:02d}") for i in range(12)]
    devices = [await registry.add_device(**row(s, f"t{i}")) for i, s in enumerate(terminals)]
    async with registry.session() as db:
        service = DeviceConnectionService(db)
        conns = await asyncio.gather(*(service.get_connection(d) for d in devices * 3))
    assert all(c is not None for c in conns)
    serials = await asyncio.gather(*(c.read("serial_number") for c in conns[:12]))  # type: ignore[union-attr]
    assert serials == [f"SN{i:02d}" for i in range(12)]
    assert [s.sessions_opened for s in terminals] == [1] * 12


async def test_threads_with_their_own_loops(registry: DeviceRegistry, sims: Sims) -> None:
    """Test that callers on other threads' loops get working handles, one session per device."""
    terminals = [await sims(serial_number=f"SN{i}") for i in range(3)]
    devices = [await registry.add_device(**row(s, f"t{i}")) for i, s in enumerate(terminals)]
    service = DeviceConnectionService(registry)
    results: list[str] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        async def use() -> str:
            conn = await service.get_connection(devices[n % 3])
            assert conn is not None
            serial: str = await conn.read("serial_number")
            if n == 0:
                await service.disconnect_device(devices[0].id)
                assert await service.get_connection(devices[0]) is not None
            return serial

        try:
            results.append(asyncio.run(use()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(9)]
    for t in threads:
        t.start()

    def join_all() -> None:
        for t in threads:
            t.join(10)

    await asyncio.to_thread(join_all)
    assert errors == []
    assert sorted(results) == sorted(f"SN{n % 3}" for n in range(9))
    assert [s.sessions_opened for s in terminals[1:]] == [1, 1]
