"""Plugins that provide router targets: registered when enabled, routed to, gone when disabled."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from edgelink.plugins import PluginError, PluginManager
from edgelink.registry import DriverRegistry
from edgelink.testing.peers import PingPongPeer

TARGET_PLUGIN = """
from edgelink.router.targets import Target

RECEIVED = []


class Collect(Target):
    async def send(self, tag, dp):
        RECEIVED.append((tag, dp.value, dp.address))


def register(host):
    host.add_target("collect.sink", Collect())
"""


def write_target_plugin(folder: Path, *, declared: tuple[str, ...] = ("collect.sink",)) -> None:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({
        "name": folder.name, "version": "1.0.0", "author": "edgelink tests",
        "description": "collects what routes send it", "repository": "local",
        "entry": "collect_main:register",
        "dependencies": {"python": ">=3.11", "packages": []},
        "config_schema": {}, "provides": {"targets": list(declared)},
    }))  # fmt: skip
    (folder / "README.md").write_text("# Collect\n")
    (folder / "collect_main.py").write_text(TARGET_PLUGIN)


async def test_a_target_must_be_declared(tmp_path: Path) -> None:
    """Test that a target missing from provides.targets is refused with the reason."""
    write_target_plugin(tmp_path / "plugins" / "collect", declared=("other.sink",))
    manager = PluginManager(tmp_path / "plugins", DriverRegistry())
    manager.discover()
    with pytest.raises(PluginError, match=r"target 'collect.sink' is not in .*provides.targets"):
        await manager.enable("collect")
    assert manager.targets == {}
    sys.modules.pop("collect_main", None)


async def test_routes_reach_a_plugin_target_until_it_is_disabled(tmp_path: Path) -> None:
    """Test a gateway routing to a plugin's target, then the target leaving with the plugin."""
    from edgelink.service.gateway import Gateway

    config = tmp_path / "gw"
    write_target_plugin(config / "plugins" / "collect")
    (config / "plugins" / "state.json").write_text(
        json.dumps({"collect": {"enabled": True, "config": {}}})
    )
    (config / "routing.json").write_text(json.dumps({"routes": [
        {"id": "out", "from": "dev.temperature", "to": "collect.sink.temp", "transform": "scale(2)"},
    ]}))  # fmt: skip
    async with PingPongPeer() as peer:
        (config / "connections.json").write_text(json.dumps({
            "connections": {"dev": {"type": "tcp", "config": {"host": "127.0.0.1", "port": peer.port}}},
        }))  # fmt: skip
        (config / "edgelink.json").write_text(json.dumps({"storage": {"path": "logs/system.db"}}))
        gw = Gateway(config, watch=False)
        await gw.start()
        try:
            received = sys.modules["collect_main"].RECEIVED
            router = gw.manager.router
            assert "collect.sink" in router.stats()["targets"]
            router.route_data("dev", "temperature", 21.5)
            async with asyncio.timeout(5):
                while not received:
                    await asyncio.sleep(0.02)
            assert received == [("temp", 43.0, "dev.temperature")]
            await gw.plugin_action("collect", "disable")
            assert "collect.sink" not in router.stats()["targets"]
            assert gw.plugins.targets == {}
            router.route_data("dev", "temperature", 22.0)
            await router.drain()
            assert len(received) == 1  # the route now ends in the data space
            assert router.data.get("collect.sink.temp").value == 44.0  # type: ignore[union-attr]
        finally:
            await gw.stop()
            sys.modules.pop("collect_main", None)
