"""The custom-connection SDK seed's code, run on edgelink with only its imports changed.

The document's classes live in ``sdk_examples.py`` as the document writes
them; each runs here under the real manager against a real peer on loopback:
a PING/PONG device (TCP), a pymodbus server (Modbus TCP), a socat pty pair
(serial) and an HTTP device (REST). The document's integration steps are
followed as written: the manager found through ``app_context``,
``register_connection_type``, its ``connections.json``, ``get_connection``,
``get_status`` and ``on_event`` callbacks that take "the connection".
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sdk_examples as seed

import edgelink
from edgelink import AppContext, BaseConnection, ConnectionManager, ConnectionStatus
from edgelink.sim.http import HttpSimulator
from edgelink.sim.modbus import ModbusDevice, ModbusServer
from edgelink.testing import ManualClock
from edgelink.testing.peers import PingPongPeer
from edgelink.testing.serial_peer import SerialPeer

Make = Callable[..., ConnectionManager]

#: No health check or watchdog between the steps of a test (they share the socket).
QUIET = {"health_check_interval": 3600, "watchdog_interval": 1e9}


def seed_document(
    cid: str, type_name: str, config: dict[str, Any], *, auto_reconnect: bool = True
) -> dict[str, Any]:
    """The document's ``connections.json`` for one connection."""
    return {
        "connections": {
            cid: {
                "type": type_name,
                "name": "Mein Gerät",
                "enabled": True,
                "config": {**config, "auto_reconnect": auto_reconnect},
                "settings": {"health_check_interval": 3600, "reconnect_max_attempts": 10},
            }
        }
    }


def conn_mgr_of(manager: ConnectionManager) -> Any:
    """The document's lookup: ``app_context.module_manager.get_module('connection_manager')``."""
    app_context = manager.context
    return app_context.module_manager.get_module("connection_manager")


def test_public_names_exist_where_issue_12_puts_them() -> None:
    """Test that the document's names import from edgelink and mean what it says."""
    for name in ("BaseConnection", "ConnectionStatus", "AppContext", "ModuleManager"):
        assert name in edgelink.__all__, name
    members = {m.name: m.value for m in ConnectionStatus}
    for name in ("DISCONNECTED", "CONNECTING", "CONNECTED", "ERROR", "SUSPENDED"):
        assert members[name] == name.lower()
    for name in ("register_connection_type", "get_connection", "on_event"):
        assert callable(getattr(ConnectionManager, name)), name
    assert isinstance(inspect.getattr_static(ConnectionManager, "connections"), property)
    driver = seed.CustomTCPConnection("x", {}, AppContext())
    for attr in ("connection_id", "config", "app_context", "status", "last_error"):
        assert hasattr(driver, attr), attr
    for attr in ("connected_at", "reconnect_attempts", "stats", "update_stats", "get_status"):
        assert hasattr(driver, attr), attr
    for cls in (seed.MyConnection, seed.CustomTCPConnection, seed.ModbusTCPConnection):
        assert isinstance(cls("x", {"host": "h", "port": 1}, None), BaseConnection)


def test_interface_sketch_is_a_blocking_driver() -> None:
    """Test that the document's four-method sketch defines and instantiates as a blocking driver."""
    driver = seed.MyConnection("sketch", {}, AppContext())
    assert isinstance(driver, edgelink.SyncConnection)
    assert driver.connect() is None and driver.health_check() is None


def test_manager_is_found_through_app_context() -> None:
    """Test that the default context carries the manager, and the sync facade names itself."""
    manager = ConnectionManager()
    assert conn_mgr_of(manager) is manager
    assert manager.context.module_manager.get_module("unknown") is None
    with edgelink.SyncConnectionManager() as sync:
        assert sync._manager.context.module_manager.get_module("connection_manager") is sync
    own = object()
    assert ConnectionManager(context=own).context is own


async def test_custom_tcp_connection_runs_as_the_document_shows(
    make_manager: Make, peer: PingPongPeer
) -> None:
    """Test the TCP example: registered via app_context, used, its status and events."""
    manager = make_manager(**QUIET)
    conn_mgr = conn_mgr_of(manager)
    conn_mgr.register_connection_type("custom_tcp", seed.CustomTCPDevice)
    seen: list[str] = []

    def on_connected(connection: BaseConnection) -> None:
        seen.append(f"Verbunden: {connection.connection_id}")

    conn_mgr.on_event("connected", on_connected)
    await manager.reload(
        seed_document("my_tcp_device", "custom_tcp", {"host": "127.0.0.1", "port": peer.port})
    )
    async with manager:
        await manager.wait_for_state("my_tcp_device", "connected", timeout=5)
        connection = conn_mgr.get_connection("my_tcp_device")
        assert connection is not None and connection.is_connected()
        assert connection.app_context is manager.context

        def use(connection: Any) -> bytes:
            connection.send_data(b"temperature?\n")
            return bytes(connection.receive_data())

        assert await manager.execute_with_retry("my_tcp_device", use) == b"21.5\n"
        assert await manager.execute_with_retry("my_tcp_device", lambda c: c.health_check())
        status = connection.get_status()
        assert status["connection_id"] == "my_tcp_device"
        assert status["status"] == "connected"
        assert status["last_error"] is None and status["reconnect_attempts"] == 0
        assert status["stats"]["packets_sent"] == 1 and status["stats"]["bytes_received"] == 5
        assert list(conn_mgr.connections.keys()) == ["my_tcp_device"]
        await manager.events.drain()
    assert seen == ["Verbunden: my_tcp_device"]


async def test_error_callback_reads_last_error(make_manager: Make) -> None:
    """Test that the document's ``on_error(connection)`` reads ``connection.last_error``."""
    manager = make_manager(**QUIET)
    manager.register_connection_type("custom_tcp", seed.CustomTCPConnection)
    errors: list[str] = []

    def on_error(connection: BaseConnection) -> None:
        errors.append(f"Fehler: {connection.last_error}")

    manager.on_event("error", on_error)  # type: ignore[arg-type]
    # Nothing listens: connect() returns False with last_error set; no retries,
    # so the failure is final and the manager emits "error".
    config = {"host": "127.0.0.1", "port": free_port()}
    await manager.reload(seed_document("dead", "custom_tcp", config, auto_reconnect=False))
    async with manager:
        await manager.wait_for_state("dead", "error", timeout=5)
        await manager.events.drain()
    assert len(errors) == 1
    assert "refused" in errors[0].lower(), errors


async def test_failed_attempts_do_not_nest_their_messages(
    make_manager: Make, clock: ManualClock
) -> None:
    """Test that each failed attempt's error is the driver's own, not the last one quoted again."""
    manager = make_manager(clock=clock, **QUIET)
    manager.register_connection_type("custom_tcp", seed.CustomTCPConnection)
    texts: list[str] = []
    delays: list[float] = []
    manager.on_event("reconnect_failed", lambda connection: texts.append(connection.last_error))
    manager.on_event("reconnect_start", lambda event: delays.append(event.data["delay"]))
    config = {"host": "127.0.0.1", "port": free_port()}
    await manager.reload(seed_document("dead", "custom_tcp", config))

    async def until(got: list[Any], count: int) -> None:
        async with asyncio.timeout(5):
            while len(got) < count:
                await manager.events.drain()
                await asyncio.sleep(0.005)

    async with manager:
        for attempt in range(1, 4):
            await until(delays, attempt)  # the backoff before this retry began
            await clock.advance(delays[-1] + 0.001)  # the event's delay is rounded
            await until(texts, attempt)
        status = manager.get_status("dead")
    assert len(texts) == 3
    assert len(set(texts)) == 1, texts
    assert texts[0].count("ConnectError") == 1 and "refused" in texts[0].lower(), texts
    assert status["last_error"] == texts[0]


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_modbus_example_reads_holding_registers(make_manager: Make) -> None:
    """Test the Modbus TCP example against a real pymodbus server."""
    device = ModbusDevice(1)
    device.hr[0:3] = [11, 22, 33]
    async with ModbusServer([device]) as server:
        manager = make_manager(**QUIET)
        manager.register_connection_type("modbus_seed", seed.ModbusTCPConnection3)
        await manager.reload(
            seed_document("mb", "modbus_seed", {"host": "127.0.0.1", "port": server.port})
        )
        async with manager:
            await manager.wait_for_state("mb", "connected", timeout=5)
            registers = await manager.execute_with_retry(
                "mb", lambda c: c.read_holding_registers(0, 3)
            )
            assert registers == [11, 22, 33]
            connection = manager.get_connection("mb")
            assert connection is not None
            assert connection.get_status()["stats"]["packets_received"] == 1
            # The document's own read passes count positionally, which pymodbus 3 refuses.
            verbatim = seed.ModbusTCPConnection.read_holding_registers
            with pytest.raises(TypeError):
                await manager.execute_with_retry("mb", lambda c: verbatim(c, 0, 3))


async def test_serial_example_talks_to_a_pty_device(make_manager: Make, tmp_path: Path) -> None:
    """Test the RS485 example on a socat pty pair with a line-protocol device."""
    async with SerialPeer(tmp_path / "ttyUSB0", values={"temperature": "19.0"}) as device:
        manager = make_manager(**QUIET)
        manager.register_connection_type("serial_seed", seed.SerialConnection)
        await manager.reload(
            seed_document("rs485", "serial_seed", {"port": str(device.path), "baudrate": 9600})
        )
        async with manager:
            await manager.wait_for_state("rs485", "connected", timeout=5)

            def ask(connection: Any) -> bytes:
                connection.serial.write(b"temperature?\n")
                return bytes(connection.serial.readline())

            assert await manager.execute_with_retry("rs485", ask) == b"19.0\n"


async def test_rest_example_against_an_http_device(make_manager: Make) -> None:
    """Test the REST example: /health gates connect(), get() returns the JSON."""
    with HttpSimulator() as sim:
        sim.device.set_value("power", 1200)
        manager = make_manager(**QUIET)
        manager.register_connection_type("rest_seed", seed.RESTAPIConnection)
        await manager.reload(seed_document("api", "rest_seed", {"base_url": sim.url}))
        async with manager:
            await manager.wait_for_state("api", "connected", timeout=5)
            answer = await manager.execute_with_retry("api", lambda c: c.get("values/power"))
            assert answer == 1200
            status = manager.get_status("api")
            assert status["stats"]["packets_sent"] == 1


async def test_rest_example_unhealthy_device_fails_connect(
    make_manager: Make, clock: ManualClock
) -> None:
    """Test that a 503 from /health makes the document's connect() fail with a clear error."""
    with HttpSimulator() as sim:
        sim.device.healthy = False
        manager = make_manager(clock=clock, **QUIET)
        manager.register_connection_type("rest_seed", seed.RESTAPIConnection)
        await manager.reload(seed_document("api", "rest_seed", {"base_url": sim.url}))
        async with manager:
            await manager.wait_for_state("api", "reconnecting", timeout=5)
            assert "connect() returned False" in (manager.get_status("api")["last_error"] or "")


async def test_service_gateway_is_in_the_app_context(tmp_path: Path) -> None:
    """Test that under ``edgelink run`` the drivers' app_context names the manager and gateway."""
    from edgelink.service.gateway import Gateway

    (tmp_path / "connections.json").write_text('{"connections": {}}')
    gateway = Gateway(tmp_path, watch=False)
    await gateway.start()
    try:
        modules = gateway.manager.context.module_manager
        assert modules.get_module("connection_manager") is gateway.manager
        assert modules.get_module("gateway") is gateway
    finally:
        await gateway.stop()


def test_module_manager_refuses_a_taken_name() -> None:
    """Test that a second module under a taken name is refused unless replaced on purpose."""
    context = AppContext(billing="a")
    modules = context.module_manager
    modules.register_module("billing", "a")  # the same object again: fine
    with pytest.raises(ValueError, match="'billing' is already registered"):
        modules.register_module("billing", "b")
    modules.register_module("billing", "b", replace=True)
    assert modules.get_module("billing") == "b"
    with pytest.raises(ValueError, match="non-empty string"):
        modules.register_module("", "c")


def test_event_answers_for_its_connection_or_says_why_not() -> None:
    """Test that an Event delegates unknown attributes to its driver, with clear errors."""
    driver = seed.CustomTCPConnection("dev", {}, AppContext())
    driver.last_error = "driver's text"
    ev = edgelink.Event("connected", "dev", ts=0.0, connection=driver)
    assert ev.last_error == "driver's text" and ev.stats is driver.stats and ev.host == "localhost"
    carried = edgelink.Event(
        "error", "dev", ts=0.0, data={"error": "at emission"}, connection=driver
    )
    assert carried.last_error == "at emission"
    with pytest.raises(AttributeError, match="nor its connection CustomTCPConnection has"):
        _ = ev.nonexistent
    with pytest.raises(AttributeError, match="no connection to ask"):
        _ = edgelink.Event("panic", None, ts=0.0).last_error
