"""The device registry against SQLite and PostgreSQL, its connections against ZK simulators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import delete, insert, update

from device_registry.registry_kit import FAST, KEY, row
from edgelink import ConfigError, ConnectionManager
from edgelink.devices import Device, DeviceRegistry, database_url
from edgelink.drivers.zk_protocol import Command

Sims = Callable[..., Any]


async def connected(registry: DeviceRegistry, device_id: int) -> None:
    await registry.manager.wait_for_state(registry.connection_id(device_id), "connected", 5)


async def test_rows_become_connections_and_follow_changes(
    registry: DeviceRegistry, sims: Sims
) -> None:
    """Test that add, change, disable, enable and delete of a row each move only its connection."""
    manager = registry.manager
    a, b, b2 = await sims(), await sims(), await sims(serial_number="SECOND")
    door = await registry.add_device(**row(a, "door"))
    gate = await registry.add_device(**row(b, "gate"))
    assert registry.device_ids() == [door.id, gate.id]
    await connected(registry, door.id)
    await connected(registry, gate.id)
    door_cid, gate_cid = registry.connection_id(door.id), registry.connection_id(gate.id)
    assert manager.get_status(door_cid)["name"] == "door"
    assert manager.get_spec(door_cid).config["password"] == KEY
    door_driver = manager.get_connection(door_cid)

    await registry.update_device(gate.id, port=b2.port)  # the gate moves to another terminal
    await connected(registry, gate.id)
    assert await manager.execute_with_retry(gate_cid, lambda c: c.read("serial_number")) == "SECOND"
    assert manager.get_connection(door_cid) is door_driver
    assert a.sessions_opened == 1  # the door's link was not touched

    await registry.update_device(door.id, enabled=False)
    assert manager.get_state(door_cid) == "disconnected"
    assert manager.get_status(door_cid)["desired"] == "stopped"
    await registry.update_device(door.id, enabled=True)
    await connected(registry, door.id)

    await registry.delete_device(gate.id)
    assert gate_cid not in manager
    assert registry.device_ids() == [door.id]
    assert manager.get_state(door_cid) == "connected"
    assert [d.name for d in await registry.list_devices()] == ["door"]


async def test_session_commit_and_rollback(registry: DeviceRegistry, sims: Sims) -> None:
    """Test that a session's commit adds the connection before it returns, and a rollback nothing."""
    sim = await sims()
    async with registry.session() as db:
        db.add(Device(**row(sim, "kept")))
        dropped = Device(**row(sim, "dropped"))
        db.add(dropped)
        await db.flush()
        await db.delete(dropped)
        await db.commit()
    assert len(registry.device_ids()) == 1
    async with registry.session() as db:
        db.add(Device(**row(sim, "rolled back")))
        await db.flush()
        await db.rollback()
    assert len(registry.device_ids()) == 1
    async with registry.session() as db, db.begin():
        db.add(Device(**row(sim, "in a transaction block")))
    assert len(registry.device_ids()) == 2
    assert [d.name for d in await registry.list_devices()] == ["kept", "in a transaction block"]


async def test_sync_follows_bulk_statements_and_reports(
    registry: DeviceRegistry, sims: Sims
) -> None:
    """Test that sync() picks up rows changed around the ORM and says what it did."""
    sim = await sims()
    keep = await registry.add_device(**row(sim, "keep"))
    move = await registry.add_device(**row(sim, "move"))
    gone = await registry.add_device(**row(sim, "gone"))
    async with registry.engine.begin() as conn:
        await conn.execute(insert(Device).values(**row(sim, "new")))
        await conn.execute(update(Device).where(Device.id == move.id).values(name="moved"))
        await conn.execute(delete(Device).where(Device.id == gone.id))
    report = await registry.sync()
    assert (len(report.added), report.changed, report.removed) == (1, [move.id], [gone.id])
    assert report.errors == {}
    assert registry.manager.get_status(registry.connection_id(move.id))["name"] == "moved"
    assert keep.id in registry.device_ids()
    again = await registry.sync()
    assert not again
    assert again.as_dict() == {"added": [], "changed": [], "removed": [], "errors": {}}


async def test_bad_rows_are_refused_before_they_are_written(
    registry: DeviceRegistry, sims: Sims
) -> None:
    """Test that a bad comm key or driver key is a ConfigError naming the field, nothing written."""
    sim = await sims()
    with pytest.raises(ConfigError, match=r"com_password.*number"):
        await registry.add_device(**row(sim, com_password="secret"))
    with pytest.raises(ConfigError, match="colour"):
        await registry.add_device(**row(sim, config={"colour": "red"}))
    assert await registry.list_devices() == []
    door = await registry.add_device(**row(sim))
    with pytest.raises(ConfigError, match=r"devices\[\d+\].*transport"):
        await registry.update_device(door.id, config={"transport": "carrier pigeon"})
    with pytest.raises(ConfigError, match="no device column"):
        await registry.update_device(door.id, colour="red")
    with pytest.raises(KeyError, match="unknown device 999"):
        await registry.update_device(999, name="x")
    assert (await registry.get_device(door.id)).config == row(sim)["config"]  # type: ignore[union-attr]


async def test_row_broken_outside_the_orm_keeps_its_connection(
    registry: DeviceRegistry, sims: Sims
) -> None:
    """Test that sync() names a row it cannot apply and leaves that connection as it was."""
    sim = await sims()
    door = await registry.add_device(**row(sim))
    await connected(registry, door.id)
    async with registry.engine.begin() as conn:
        await conn.execute(update(Device).values(com_password="not a number"))
    report = await registry.sync()
    assert list(report.errors) == [door.id]
    assert "com_password" in report.errors[door.id]
    assert registry.manager.get_state(registry.connection_id(door.id)) == "connected"


async def test_restart_rebuilds_connections_and_a_shared_manager_keeps_its_own(
    db_url: str, sims: Sims, manager: ConnectionManager
) -> None:
    """Test that a registry started on a filled database connects its rows, and stops only them."""
    sim = await sims()
    manager.add_connection(
        "other", "zkteco", {"host": "127.0.0.1", "port": sim.port, "password": KEY, "timeout": 0.3}
    )
    async with DeviceRegistry(db_url, manager=manager) as registry:
        first = await registry.add_device(**row(sim))
    assert list(manager.connections) == ["other"]
    async with DeviceRegistry(db_url, manager=manager) as registry:
        assert registry.device_ids() == [first.id]
        await connected(registry, first.id)
        assert "running devices=1" in repr(registry)
    assert list(manager.connections) == ["other"]


async def test_own_manager_is_started_and_stopped(db_url: str, sims: Sims) -> None:
    """Test that a registry without a manager runs one of its own for its lifetime."""
    sim = await sims()
    registry = DeviceRegistry(db_url)
    with pytest.raises(RuntimeError, match="not started"):
        registry.session()
    async with registry:
        device = await registry.add_device(**row(sim))
        await connected(registry, device.id)
        assert sim.connections == 1
    assert registry.manager.get_state(registry.connection_id(device.id)) == "disconnected"
    assert sim.count(Command.EXIT) == 1


def test_database_urls() -> None:
    """Test the URL shorthands: default file, paths, and the async drivers added."""
    assert database_url(None) == "sqlite+aiosqlite:///devices.db"
    assert database_url("/var/lib/edgelink/devices.db") == (
        "sqlite+aiosqlite:////var/lib/edgelink/devices.db"
    )
    assert database_url("postgresql://u:p@db/edge") == "postgresql+asyncpg://u:p@db/edge"
    assert database_url("postgresql+psycopg://db/edge") == "postgresql+psycopg://db/edge"
    with pytest.raises(ConfigError, match="database_url"):
        database_url("://nowhere")
    with pytest.raises(ConfigError, match="database_url"):
        database_url("postgresql://db:port/edge")


async def test_unknown_database_driver_is_a_config_error() -> None:
    """Test that a URL naming a driver that is not installed says what to install."""
    with pytest.raises(ConfigError, match=r"no async driver.*edgelink\[devices\]"):
        await DeviceRegistry(
            "mysql+nosuchdriver://db/edge", manager=ConnectionManager(**FAST)
        ).start()
