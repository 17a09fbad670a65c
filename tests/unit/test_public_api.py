"""The curated public surface of ``edgelink``."""

from __future__ import annotations

import inspect

import edgelink


def test_all_is_sorted_and_importable() -> None:
    """Test that __all__ is sorted (case-insensitively) and every name exists."""
    names = list(edgelink.__all__)
    assert names == sorted(names, key=str.lower)
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(edgelink, name), name


def test_design_names_are_public() -> None:
    """Test that the public names DESIGN gives are exported under those names."""
    for name in (
        "ConnectionManager",
        "SyncConnectionManager",
        "ConnectionPool",
        "Connection",
        "BaseConnection",
        "SyncConnection",
        "ConnectionState",
        "Health",
        "Backoff",
        "Event",
        "EventBus",
        "EdgelinkError",
        "ConfigError",
        "ConnectError",
        "ConnectTimeout",
        "ConnectionLostError",
        "ReconnectionError",
        "ProtocolError",
        "DeviceError",
        "DeviceSleepError",
        "DeviceResetError",
        "PermanentError",
        "ConnectionHealthError",
        "ConnectionPoolExhaustedError",
        "RouteError",
    ):
        assert name in edgelink.__all__, name
    # One base for both driver styles: every async and blocking driver is a BaseConnection.
    assert issubclass(edgelink.Connection, edgelink.BaseConnection)
    assert issubclass(edgelink.SyncConnection, edgelink.BaseConnection)
    for name in ("AppContext", "ModuleManager"):
        assert name in edgelink.__all__, name


def test_router_names_are_public() -> None:
    """Test that the router's names of the issue are exported, and manager.router is one."""
    for name in ("Router", "DataPoint", "DataSpace", "Target", "RouteError", "MemoryTarget"):
        assert name in edgelink.__all__, name
    manager = edgelink.ConnectionManager()
    router = manager.router
    assert isinstance(router, edgelink.Router)
    assert isinstance(router.data, edgelink.DataSpace)
    for name in ("load_routes", "route_data", "add_target", "route_stats"):
        assert callable(getattr(router, name)) and not inspect.iscoroutinefunction(
            getattr(router, name)
        ), name
    assert inspect.iscoroutinefunction(router.drain)
    assert inspect.iscoroutinefunction(edgelink.Target.send)
    params = list(inspect.signature(router.route_data).parameters)
    assert params[:4] == ["source_id", "tag", "value", "metadata"]
    fields = edgelink.DataPoint._fields[:6]
    assert fields == ("address", "value", "ts", "quality", "source", "metadata")


def test_manager_has_design_methods() -> None:
    """Test that the manager offers every method of DESIGN section 4, async where it says."""
    m = edgelink.ConnectionManager
    coros = (
        "start",
        "stop",
        "start_connection",
        "stop_connection",
        "restart_connection",
        "kill_connection",
        "resume",
        "remove_connection",
        "wait_for_state",
        "execute_with_retry",
        "reload",
        "safe_reconnect",
    )
    plain = (
        "add_connection",
        "get_connection",
        "get_status",
        "on_event",
        "register_connection_type",
        "get_health_monitor",
        "get_connection_pool",
        "mark_tx_drop",
        "record_activity",
        "from_config",
    )
    for name in coros:
        assert inspect.iscoroutinefunction(getattr(m, name)), name
    for name in plain:
        assert callable(getattr(m, name)) and not inspect.iscoroutinefunction(getattr(m, name))


def test_driver_base_gives_the_hooks() -> None:
    """Test that the driver base classes give what DESIGN section 2 lists."""
    for cls in (edgelink.Connection, edgelink.SyncConnection):
        for name in (
            "update_stats",
            "report_data",
            "mark_tx_drop",
            "get_status",
            "connection_lost",
            "record_activity",
        ):
            assert callable(getattr(cls, name)), (cls, name)
        for prop in ("status", "last_error", "connected_at", "reconnect_attempts", "stats"):
            assert isinstance(inspect.getattr_static(cls, prop), property), (cls, prop)


def test_mixed_methods_on_base_connection_are_refused() -> None:
    """Test that a BaseConnection mixing blocking and async methods fails at class definition."""
    import pytest

    with pytest.raises(TypeError, match=r"Mixed mixes blocking and async.*connect\(\) is blocking"):

        class Mixed(edgelink.BaseConnection):
            def connect(self) -> bool:
                return True

            async def disconnect(self) -> None: ...
            def is_connected(self) -> bool:
                return True

            async def health_check(self) -> bool:
                return True


def test_wrong_style_on_a_flavoured_base_is_refused() -> None:
    """Test that blocking methods on Connection, and async ones on SyncConnection, are refused."""
    import pytest

    with pytest.raises(TypeError, match=r"Blocking: connect\(\) is blocking on an async"):

        class Blocking(edgelink.Connection):
            def connect(self) -> bool:  # type: ignore[override]
                return True

    with pytest.raises(TypeError, match=r"Coro: read\(\) is 'async def' on a blocking"):

        class Coro(edgelink.SyncConnection):
            async def read(self, tag: str) -> None:
                return None


def test_base_connection_decides_the_flavour_per_class() -> None:
    """Test that blocking methods make a SyncConnection, async ones a Connection."""
    import pytest

    class Blocking(edgelink.BaseConnection):
        def connect(self) -> bool:
            self.status = edgelink.ConnectionStatus.CONNECTED
            return True

    class Async(edgelink.BaseConnection):
        async def connect(self) -> None: ...

    class Helper(edgelink.BaseConnection):
        def helper(self) -> int:
            return 1

    class Later(Helper):
        def connect(self) -> bool:
            return True

    blocking = Blocking("b", {}, edgelink.AppContext())
    assert isinstance(blocking, edgelink.SyncConnection)
    assert isinstance(blocking, edgelink.BaseConnection)
    assert isinstance(Async("a"), edgelink.Connection)
    assert isinstance(Later("l"), edgelink.SyncConnection)
    assert blocking.is_connected() is False
    assert blocking.connect() is True
    assert blocking.is_connected() is True and blocking.health_check() is True
    assert blocking.status == "connected"
    with pytest.raises(TypeError, match="Helper defines none of connect"):
        Helper("h")


def test_stats_accept_seed_style_item_assignment() -> None:
    """Test that ``stats['errors'] += 1`` works as in the seed, and typos are refused."""
    import pytest

    stats = edgelink.Stats()
    stats["errors"] += 1
    assert stats.as_dict()["errors"] == 1
    with pytest.raises(KeyError, match="erors"):
        stats["erors"] = 1
