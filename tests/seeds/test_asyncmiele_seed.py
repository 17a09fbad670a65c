"""The asyncmiele connection guide's code, run on edgelink with only its imports changed.

The guide's examples live in ``asyncmiele_examples.py`` as the guide writes
them; here each runs against a real device on loopback: the PING/PONG device
(`edgelink.testing.PingPongPeer`), reached through ``Oven``, the ``tcp``
driver plus the two operations the guide calls on its client without
showing them (``some_operation``, ``reset``). Waits for a backoff run on a
`ManualClock` that the test moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncmiele_examples as seed
import pytest

import edgelink.errors
from edgelink.compat import asyncmiele
from edgelink.compat.asyncmiele import (
    ConnectionManager,
    ConnectionState,
    DeviceProfile,
    DeviceResetter,
)
from edgelink.compat.asyncmiele.exceptions import connection as exceptions
from edgelink.drivers.tcp import TcpConnection
from edgelink.errors import ConfigError
from edgelink.testing import ManualClock, PingPongPeer, eventually

DEVICE = "000123456789"


class Oven(TcpConnection):
    """The guide's fictional client operations, on the PING/PONG device (not the guide's)."""

    async def some_operation(self, device_id: str) -> str:
        return str(await self.read("program"))

    async def reset(self) -> None:
        await self.write("factory_reset", "1")


def profile_of(peer: PingPongPeer, device_id: str = DEVICE, **extra: Any) -> DeviceProfile:
    config = {"host": "127.0.0.1", "port": peer.port, "identity_request": "ID?\n"}
    return DeviceProfile(device_id, type="oven", config=config, **extra)


@pytest.fixture
async def peer() -> AsyncIterator[PingPongPeer]:
    async with PingPongPeer(values={"program": "cotton 60"}) as device:
        yield device


@pytest.fixture
async def manager() -> AsyncIterator[ConnectionManager]:
    cm = ConnectionManager(
        max_connections=2,
        connection_timeout=2.0,
        health_check_interval=3600.0,
        retry_count=2,
        retry_delay=0.5,
        engine_settings={"reconnect_jitter": 0.0, "watchdog_interval": 1e9},
        clock=ManualClock(),
    )
    cm.engine.register_connection_type("oven", Oven)
    async with cm:
        yield cm


@contextlib.asynccontextmanager
async def moving(clock: Any) -> AsyncIterator[None]:
    """Advance the manual clock to each timer as it is set, while the block runs."""

    async def drive() -> None:
        while True:
            await clock.wait_for_sleepers()
            await clock.advance_to_next()

    task = asyncio.create_task(drive())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_public_names_exist_where_issue_12_puts_them() -> None:
    """Test the guide's names in both modules, and that they are edgelink's own errors."""
    for name in ("ConnectionManager", "DeviceProfile", "DeviceResetter", "ConnectionState"):
        assert name in asyncmiele.__all__, name
    for name in ("ConnectionPool", "ConnectionHealthMonitor"):
        assert hasattr(asyncmiele, name), name
    for name in (
        "ConnectionLostError",
        "ReconnectionError",
        "ConnectionPoolExhaustedError",
        "DeviceResetError",
        "ConnectionHealthError",
        "DeviceSleepError",
    ):
        assert (
            getattr(exceptions, name) is getattr(asyncmiele, name) is getattr(edgelink.errors, name)
        )
    assert str(ConnectionState.UNHEALTHY) == "unhealthy"
    for name in ("get_client", "execute_with_retry", "get_health_monitor", "get_connection_pool"):
        assert callable(getattr(ConnectionManager, name)), name
    for name in ("detect_factory_reset", "recover_from_reset", "initiate_reset"):
        assert callable(getattr(DeviceResetter, name)), name


async def test_setting_up_runs_as_written(peer: PingPongPeer) -> None:
    """Test the first example: the guide's arguments, async with, get_client, execute_with_retry."""
    profile = DeviceProfile(
        DEVICE, type="tcp", config={"host": "127.0.0.1", "port": peer.port}, state_tags=("program",)
    )
    result = await seed.setting_up(DEVICE, profile)
    assert result["values"] == {"program": "cotton 60"}
    assert (result["state"], result["device_id"]) == ("connected", DEVICE)


async def test_retries_are_counted_and_run_on_a_new_link(
    manager: ConnectionManager, peer: PingPongPeer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Test retry_count: two broken links are retried, a third failure gives up."""
    client = await manager.get_client(DEVICE, profile_of(peer))
    await seed.automatic_retry(manager, client, DEVICE)
    assert "Operation succeeded: cotton 60" in capsys.readouterr().out
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionResetError("cut mid-frame")
        return str(await client.read("program"))

    async with moving(manager.engine.clock):
        assert await manager.execute_with_retry(DEVICE, flaky) == "cotton 60"
        assert calls == 3  # the first try and retry_count (2) retries
        calls = -10  # never succeeds within the retries now

        async def always_broken() -> None:
            nonlocal calls
            calls += 1
            raise ConnectionResetError("cut")

        with pytest.raises(exceptions.ConnectionLostError, match="gave up after 3 attempts"):
            await manager.execute_with_retry(DEVICE, always_broken)
    assert calls == -7


async def test_reconnection_error_when_the_engine_gives_up(
    manager: ConnectionManager, peer: PingPongPeer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Test ReconnectionError: the device is gone and the engine's attempts run out."""
    profile = profile_of(peer, settings={"reconnect_max_attempts": 2})
    client = await manager.get_client(DEVICE, profile)
    await peer.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with moving(manager.engine.clock):
        with pytest.raises(exceptions.ReconnectionError, match="gave up reconnecting: suspended"):
            await manager.execute_with_retry(DEVICE, lambda: client.read("program"))
        # Heard at once when the engine gave up, not after connection_timeout per retry.
        assert loop.time() - started < 1.5
        await seed.error_handling(manager, DEVICE, lambda: client.read("program"))
    assert "Failed to reconnect: " in capsys.readouterr().out
    assert manager.get_status(DEVICE)["status"] == "suspended"


async def test_health_monitor_callbacks_and_custom_checks(
    manager: ConnectionManager, peer: PingPongPeer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Test the UNHEALTHY callback, the custom check, and ConnectionHealthError."""
    profile = profile_of(peer, settings={"health_check_failures": 2})
    client = await manager.get_client(DEVICE, profile)
    seed.health_monitoring(manager, DEVICE)
    monitor = manager.get_health_monitor()
    seed.custom_health_checks(monitor, client, DEVICE)  # passes: the device answers ID?
    assert await monitor.check_now(DEVICE) is True
    healthy = True

    async def breakable() -> bool:
        return healthy

    monitor.register_health_check(DEVICE, breakable)
    healthy = False
    assert await monitor.check_now(DEVICE) is False  # one failure of two: degraded
    ran = False

    def operation() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(exceptions.ConnectionHealthError, match="1 in a row"):
        await manager.execute_with_retry(DEVICE, operation)
    assert not ran
    assert await monitor.check_now(DEVICE) is False  # the second: the link is lost
    await eventually(lambda: "changed to unhealthy" in capsys.readouterr().out, timeout=5)
    healthy = True
    clock = manager.engine.clock
    assert isinstance(clock, ManualClock)
    await clock.advance(1.0)  # the reconnect's backoff (retry_delay 0.5)
    await manager.engine.wait_for_state(DEVICE, "connected", timeout=5)


async def test_pool_counts_bounds_and_evicts(
    manager: ConnectionManager, peer: PingPongPeer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Test len/active/idle, max_connections, and the least recently used idle device's place."""
    first = await manager.get_client("a", profile_of(peer, "a"))
    await manager.get_client("b", profile_of(peer, "b"))
    pool = manager.get_connection_pool()
    gate = asyncio.Event()

    async def hold() -> str:
        await gate.wait()
        return str(await first.read("program"))

    running: asyncio.Task[Any] = asyncio.create_task(manager.execute_with_retry("a", hold))
    await eventually(lambda: pool.active_connections == 1)
    seed.pool_management(manager)
    out = capsys.readouterr().out
    assert "Total connections: 2" in out
    assert "Active connections: 1" in out
    assert "Idle connections: 1" in out
    # Full: "c" takes the place of "b", the idle one; "a" is busy and stays.
    await manager.get_client("c", profile_of(peer, "c"))
    assert sorted(manager.engine.connections) == ["a", "c"]
    busy_c: asyncio.Task[Any] = asyncio.create_task(manager.execute_with_retry("c", gate.wait))
    await eventually(lambda: pool.active_connections == 2)
    with pytest.raises(exceptions.ConnectionPoolExhaustedError, match="all 2 connections"):
        await manager.get_client("d", profile_of(peer, "d"))
    gate.set()
    assert await running == "cotton 60"
    await busy_c
    assert pool.stats() == {"size": 2, "max_size": 2, "active": 0, "idle": 2}


async def test_device_reset_detected_recovered_and_initiated(
    manager: ConnectionManager, peer: PingPongPeer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Test the reset example on the driver's identity: a rebooted device, and initiate_reset."""
    profile = profile_of(peer)
    client = await manager.get_client(DEVICE, profile)
    assert await seed.handling_resets(client, DEVICE, profile) is False
    resetter = DeviceResetter()
    await resetter.initiate_reset(client, DEVICE)
    assert peer.values["factory_reset"] == "1"
    resets: list[Any] = []
    manager.engine.on_event("device_reset", resets.append)
    peer.identity = "rebooted-after-factory-reset"
    assert await seed.handling_resets(client, DEVICE, profile) is True
    assert "Successfully recovered device" in capsys.readouterr().out
    (event,) = resets  # the engine saw the new identity on the new link
    assert event.data["new_identity"] == "rebooted-after-factory-reset"
    assert manager.engine.get_supervisor(DEVICE).identity == "rebooted-after-factory-reset"
    # A new resetter sees the identity of the current link: no reset. The
    # first one saw the engine's device_reset event: a reset until it recovers.
    assert await DeviceResetter(manager).detect_factory_reset(client, DEVICE) is False
    assert await resetter.detect_factory_reset(client, DEVICE) is True
    assert await resetter.recover_from_reset(DEVICE) == (True, client)
    assert await resetter.detect_factory_reset(client, DEVICE) is False


async def test_reset_needs_an_identity_and_a_reset(
    manager: ConnectionManager, peer: PingPongPeer
) -> None:
    """Test the clear errors: no identity to compare, no reset() in the driver."""
    plain = DeviceProfile("plain", type="tcp", config={"host": "127.0.0.1", "port": peer.port})
    client = await manager.get_client("plain", plain)
    resetter = DeviceResetter(manager)
    with pytest.raises(exceptions.DeviceResetError, match="reports no identity"):
        await resetter.detect_factory_reset(client, "plain")
    with pytest.raises(exceptions.DeviceResetError, match="cannot reset its device"):
        await resetter.initiate_reset(client, "plain")


async def test_the_guides_config_file(tmp_path: Path) -> None:
    """Test the guide's config layout: settings to the manager, devices to profiles."""
    path = tmp_path / "connection_config.json"
    path.write_text(seed.CONFIG_JSON)
    manager, profiles = ConnectionManager.from_config(path)
    assert (manager.max_connections, manager.health_check_interval) == (5, 30.0)
    assert manager.engine.settings.reconnect_initial_delay == 2.0
    profile = profiles["000123456789"]
    assert profile.connection_config() == {"base_url": "http://192.168.1.100"}
    assert profile.group_id == "11223344556677889900aabbccddeeff"
    assert "0011223344" not in repr(profile)  # the group key is never shown
    custom = DeviceProfile("m", "10.0.0.9", type="miele", group_id="g", group_key="k")
    assert custom.connection_config() == {"host": "10.0.0.9", "group_id": "g", "group_key": "k"}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"devices": {}}, "devices: must be a list of device objects"),
        ({"devices": [{"host": "x"}]}, "devices[0].id: id is required"),
        ({"devices": [{"id": "a", "port": "80"}]}, "devices[0].port: must be int, got '80'"),
        ({"devices": [{"id": "a", "hots": "x"}]}, "devices[0].hots: unknown key 'hots'"),
        ({"devices": [{"id": "a"}, {"id": "a"}]}, "devices[1].id: device id 'a' twice"),
        ({"connection_settings": {"retries": 3}}, "connection_settings.retries: unknown setting"),
        ({"connection_settings": {"retry_delay": 0}}, "retry_delay: must be a number above 0"),
    ],
)
def test_bad_config_says_where_and_why(document: dict[str, Any], message: str) -> None:
    """Test that a bad config file is one clear error naming the JSON path."""
    with pytest.raises(ConfigError) as caught:
        ConnectionManager.from_config(document)
    assert message in str(caught.value)


def test_bad_json_names_the_file_and_line(tmp_path: Path) -> None:
    """Test a config file that is not JSON."""
    path = tmp_path / "connection_config.json"
    path.write_text(json.dumps({"devices": []})[:-1])
    with pytest.raises(ConfigError, match=r"not JSON: .* at line 1") as caught:
        ConnectionManager.from_config(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ConfigError, match="must be at least 1, got 0"):
        ConnectionManager(max_connections=0)
