"""A plugin whose manifest asks for ``isolation: "process"``: its connections run in a child."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from test_plugins import write_plugin

from edgelink import ConfigError, ConnectionManager
from edgelink.isolation.parent import ProcessConnection
from edgelink.plugins import PluginManager, load_manifest
from edgelink.registry import DriverRegistry
from edgelink.testing.peers import PingPongPeer


async def test_the_manifest_isolation_runs_the_plugin_type_in_a_child(tmp_path: Path) -> None:
    """Test a plugin type's connection in a child process, its own isolation winning.

    The child imports the plugin from its folder; a connection's own
    ``isolation`` object replaces the manifest's; the default goes with the plugin.
    """
    folder = tmp_path / "plugins" / "ping_plugin"
    folder.mkdir(parents=True)
    write_plugin(folder, "1.0.0", isolation={"mode": "process", "heartbeat_interval": 1.0})
    registry = DriverRegistry()
    plugins = PluginManager(tmp_path / "plugins", registry)
    plugins.discover()
    await plugins.enable("ping_plugin")
    try:
        async with PingPongPeer(values={"temperature": "21.5"}) as peer:
            manager = ConnectionManager(registry=registry, connect_timeout=5.0)
            config = {"host": "127.0.0.1", "port": peer.port}
            manager.add_connection("iso", "ping_tcp", config)
            own = {"mode": "process", "heartbeat_interval": 2.0}
            manager.add_connection("own", "ping_tcp", config, isolation=own)
            async with manager:
                await manager.wait_for_state("iso", "connected", timeout=15)
                await manager.wait_for_state("own", "connected", timeout=15)
                child = manager.get_connection("iso")
                assert isinstance(child, ProcessConnection)
                assert child.pid is not None and child.pid != os.getpid()
                theirs = manager.get_connection("own")
                assert isinstance(theirs, ProcessConnection)
                assert theirs.isolation.heartbeat_interval == 2.0
                assert child.isolation.heartbeat_interval == 1.0
                value = await manager.execute_with_retry("iso", lambda c: c.read("temperature"))
                assert value == "21.5"  # read by the driver in the child
        await plugins.disable("ping_plugin")
        assert registry.isolation_of("ping_tcp") is None
    finally:
        sys.modules.pop("ping_plugin_main", None)


def test_a_bad_manifest_isolation_names_the_field(tmp_path: Path) -> None:
    """Test that an isolation the engine would refuse is refused in the manifest, named."""
    folder = tmp_path / "ping_plugin"
    folder.mkdir()
    write_plugin(folder, "1.0.0", isolation="sandbox")
    with pytest.raises(ConfigError) as info:
        load_manifest(folder)
    assert info.value.path == "isolation" and "ping_plugin" in str(info.value)
    assert json.loads((folder / "manifest.json").read_text())["isolation"] == "sandbox"
