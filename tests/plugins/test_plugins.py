"""Plugins: manifests, enable/disable/configure at run time, updates from a local git remote, rollback.

The remotes are local bare git repositories (no internet here); the plugin
provides a real connection type that a real manager then runs against a
loopback TCP peer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgelink import ConfigError, ConnectionManager
from edgelink.plugins import Badge, PluginError, PluginManager, load_manifest
from edgelink.registry import DriverRegistry
from edgelink.testing.peers import PingPongPeer

PLUGIN = '''
from edgelink.drivers.tcp import TcpConnection

VERSION = "{version}"


class PingTcp(TcpConnection):
    """A tcp connection under another type name: what a plugin's driver looks like."""

    type_name = "ping_tcp"


def register(host):
    {body}
    host.add_driver("ping_tcp", PingTcp)
    host.on_config(lambda config: CONFIGS.append(config))


CONFIGS = []
'''


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


def write_plugin(work: Path, release_: str, *, body: str = "pass", **manifest: Any) -> None:
    data = {
        "name": "ping_plugin",
        "version": release_,
        "author": "edgelink tests",
        "description": "a tcp type under another name",
        "repository": "local",
        "entry": "ping_plugin_main:register",
        "dependencies": {"python": ">=3.11", "packages": []},
        "config_schema": {"scan_interval": 5, "auto_connect": True},
        "provides": {"drivers": ["ping_tcp"]},
        **manifest,
    }
    (work / "manifest.json").write_text(json.dumps(data, indent=2))
    (work / "README.md").write_text(f"# Ping plugin {release_}\n\n```python\nprint('hi')\n```\n")
    (work / "ping_plugin_main.py").write_text(PLUGIN.format(version=release_, body=body))


def release(work: Path, version: str, **kw: Any) -> None:
    write_plugin(work, version, **kw)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", f"v{version}")
    git(work, "tag", f"v{version}")
    git(work, "push", "-q", "--tags", "origin", "HEAD")


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    """A bare remote with v1.0.0 and the work tree that publishes to it."""
    return make_remote(tmp_path)


def bare_and_work(tmp_path: Path, bare_name: str, work_name: str) -> tuple[Path, Path]:
    """Make an empty bare repository and a work tree whose origin it is."""
    bare = tmp_path / bare_name
    git(tmp_path, "init", "-q", "--bare", str(bare))
    work = tmp_path / work_name
    work.mkdir()
    git(work, "init", "-q")
    git(work, "remote", "add", "origin", str(bare))
    return bare, work


def make_remote(tmp_path: Path) -> tuple[Path, Path]:
    """Make a bare remote with v1.0.0 and the work tree that publishes to it."""
    bare, work = bare_and_work(tmp_path, "remote.git", "work")
    release(work, "1.0.0")
    return bare, work


@pytest.fixture
def plugins(tmp_path: Path, remote: tuple[Path, Path]) -> PluginManager:
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"plugins": [{
        "name": "ping_plugin", "description": "ping", "repository": str(remote[0]),
        "version": "1.0.0",
    }]}))  # fmt: skip
    manager = PluginManager(tmp_path / "config" / "plugins", DriverRegistry(), index=index)
    manager.discover()
    return manager


async def test_install_enable_use_disable(plugins: PluginManager) -> None:
    """Test the index badge, install, enable (the type works in a manager), disable (it is gone)."""
    assert plugins.get("ping_plugin").badge() is Badge.AVAILABLE
    await plugins.install("ping_plugin")
    assert plugins.get("ping_plugin").badge() is Badge.INACTIVE
    assert "ping_tcp" not in plugins.registry.names()  # lazily: nothing imported yet
    await plugins.enable("ping_plugin")
    assert plugins.get("ping_plugin").badge() is Badge.ACTIVE
    async with PingPongPeer(values={"temperature": "21.5"}) as peer:
        m = ConnectionManager(registry=plugins.registry, connect_timeout=1.0)
        m.add_connection("dev", "ping_tcp", {"host": "127.0.0.1", "port": peer.port})
        async with m:
            await m.wait_for_state("dev", "connected", timeout=5)
    await plugins.disable("ping_plugin")
    assert "ping_tcp" not in plugins.registry.names()
    assert not any(n.startswith("ping_plugin_main") for n in sys.modules)
    state = json.loads((plugins.folder / "state.json").read_text())
    assert state["ping_plugin"]["enabled"] is False


async def test_enabled_state_survives_a_restart_and_panic_deactivates(
    plugins: PluginManager,
) -> None:
    """Test that a new manager enables what was enabled, and disable_all leaves it enabled on disk."""
    await plugins.install("ping_plugin")
    await plugins.enable("ping_plugin")
    assert await plugins.disable_all() == ["ping_plugin"]
    assert "ping_tcp" not in plugins.registry.names()
    again = PluginManager(plugins.folder, DriverRegistry(), index=plugins.index)
    await again.start()
    assert again.get("ping_plugin").active and "ping_tcp" in again.registry.names()
    await again.disable_all()


async def test_configure_validates_against_the_schema(plugins: PluginManager) -> None:
    """Test that a bad config names the field and changes nothing; a good one reaches the plugin."""
    await plugins.install("ping_plugin")
    await plugins.enable("ping_plugin")
    assert plugins.get("ping_plugin").config == {"scan_interval": 5, "auto_connect": True}
    with pytest.raises(ConfigError, match="scan_interval"):
        plugins.configure("ping_plugin", {"scan_interval": "fast", "auto_connect": True})
    with pytest.raises(ConfigError, match="colour"):
        plugins.configure("ping_plugin", {"colour": "red"})
    plugins.configure("ping_plugin", {"scan_interval": 2, "auto_connect": False})
    module = sys.modules["ping_plugin_main"]
    assert module.CONFIGS == [{"scan_interval": 2, "auto_connect": False}]
    await plugins.disable("ping_plugin")


async def test_update_and_a_broken_update_rolls_back(
    plugins: PluginManager, remote: tuple[Path, Path]
) -> None:
    """Test update-available, a good update, then a broken one rolled back with the reason shown."""
    _, work = remote
    await plugins.install("ping_plugin")
    await plugins.enable("ping_plugin")
    await plugins.check_update("ping_plugin")
    assert plugins.get("ping_plugin").update_to is None
    release(work, "1.1.0")
    await plugins.check_update("ping_plugin")
    plugin = plugins.get("ping_plugin")
    assert plugin.update_to == "v1.1.0" and plugin.badge() is Badge.UPDATE
    await plugins.update("ping_plugin")
    assert plugin.manifest is not None and plugin.manifest.version == "1.1.0"
    assert sys.modules["ping_plugin_main"].VERSION == "1.1.0" and plugin.active

    release(work, "1.2.0", body='raise RuntimeError("database missing")')
    with pytest.raises(PluginError, match=r"rolled back.*database missing"):
        await plugins.update("ping_plugin")
    assert plugin.manifest.version == "1.1.0" and plugin.active
    assert sys.modules["ping_plugin_main"].VERSION == "1.1.0"
    assert "ping_tcp" in plugins.registry.names()
    assert "rolled back" in (plugin.last_error or "")
    await plugins.disable("ping_plugin")


def test_invalid_manifests_name_the_plugin_and_the_field(tmp_path: Path) -> None:
    """Test that each manifest error names the plugin and the field."""
    folder = tmp_path / "ping_plugin"
    folder.mkdir()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"version": "one"}, "version"),
        ({"entry": "no-colon"}, "entry"),
        ({"provides": {"drivers": "ping_tcp"}}, "provides.drivers"),
        ({"sandbox": True}, "sandbox"),
        ({"name": "other"}, "name"),
    ]
    for change, field in cases:
        write_plugin(folder, "1.0.0", **change)  # the change overrides the field
        with pytest.raises(ConfigError) as err:
            load_manifest(folder)
        assert "plugin ping_plugin" in str(err.value) and err.value.path == field, change
    (folder / "manifest.json").write_text("{broken")
    with pytest.raises(ConfigError, match="not JSON"):
        load_manifest(folder)


async def test_unmet_requirements_are_refused_with_the_reason(tmp_path: Path) -> None:
    """Test that a Python requirement not met, or packages that cannot install, refuse the plugin."""
    root = tmp_path / "plugins"
    folder = root / "ping_plugin"
    folder.mkdir(parents=True)
    write_plugin(folder, "1.0.0", dependencies={"python": ">=99", "packages": []})
    manager = PluginManager(root, DriverRegistry(), pip_options=("--no-index",))
    manager.discover()
    with pytest.raises(PluginError, match="needs Python >=99"):
        await manager.enable("ping_plugin")
    write_plugin(folder, "1.0.0", dependencies={"packages": ["edgelink-test-no-such-package==9.9"]})
    manager.discover()
    with pytest.raises(PluginError, match="packages cannot be installed"):
        await manager.enable("ping_plugin")
    assert not manager.get("ping_plugin").active
    assert not (folder / ".deps").exists()  # nothing half-installed
    write_plugin(folder, "1.0.0", provides={"drivers": []})
    manager.discover()
    with pytest.raises(PluginError, match="not in its manifest"):
        await manager.enable("ping_plugin")
    assert "ping_tcp" not in manager.registry.names()


async def test_a_bad_manifest_is_listed_invalid_not_raised(tmp_path: Path) -> None:
    """Test that discovery keeps going past a broken plugin and shows why."""
    root = tmp_path / "plugins"
    (root / "broken").mkdir(parents=True)
    (root / "broken" / "manifest.json").write_text("{}")
    manager = PluginManager(root, DriverRegistry())
    manager.discover()
    listed = manager.as_list()
    assert listed[0]["badge"] == "invalid" and "name" in listed[0]["last_error"]


def test_readme_is_served(tmp_path: Path) -> None:
    """Test that a plugin's README text is returned for the modal."""
    root = tmp_path / "plugins"
    (root / "ping_plugin").mkdir(parents=True)
    write_plugin(root / "ping_plugin", "1.0.0")
    manager = PluginManager(root, DriverRegistry())
    manager.discover()
    assert manager.readme("ping_plugin").startswith("# Ping plugin 1.0.0")


async def test_the_gateway_loads_plugin_types_and_panic_disables_plugins(tmp_path: Path) -> None:
    """Test that a plugin's type is usable in connections.json, the API acts, and panic disables."""
    import httpx

    from edgelink.api.server import ApiServer
    from edgelink.service.gateway import Gateway

    token = "test-token-0123456789abcdef"
    config = tmp_path / "gw"
    (config / "plugins" / "ping_plugin").mkdir(parents=True)
    write_plugin(config / "plugins" / "ping_plugin", "1.0.0")
    (config / "plugins" / "state.json").write_text(
        json.dumps({"ping_plugin": {"enabled": True, "config": {}}})
    )
    async with PingPongPeer(values={"temperature": "21.5"}) as peer:
        (config / "connections.json").write_text(json.dumps({
            "settings": {"connect_timeout": 1.0, "reconnect_jitter": 0.0},
            "connections": {"dev": {"type": "ping_tcp", "config": {"host": "127.0.0.1", "port": peer.port}}},
        }))  # fmt: skip
        (config / "edgelink.json").write_text(
            json.dumps({"api": {"token": token}, "storage": {"path": "logs/system.db"}})
        )
        gw = Gateway(config, watch=False)
        await gw.start()
        await ApiServer(gw, port=0).start()
        try:
            await gw.manager.wait_for_state("dev", "connected", timeout=5)
            assert gw.api_address is not None
            host, port = gw.api_address
            async with httpx.AsyncClient(
                base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {token}"}
            ) as client:
                listed = (await client.get("/api/admin/plugins")).json()["plugins"]
                assert [(p["name"], p["badge"]) for p in listed] == [
                    ("ping_plugin", "installed_active")
                ]
                readme = (await client.get("/api/admin/plugins/ping_plugin/readme")).json()
                assert readme["markdown"].startswith("# Ping plugin")
                bad = await client.put(
                    "/api/admin/plugins/ping_plugin/config", json={"scan_interval": "x"}
                )
                assert bad.status_code == 422 and "scan_interval" in bad.json()["detail"]
                nope = await client.post("/api/admin/plugins/nope/enable")
                assert nope.status_code == 404
                check = await client.post("/api/admin/plugins/ping_plugin/check")
                assert check.status_code == 422 and "not a git checkout" in check.json()["detail"]
                await client.post("/api/admin/panic")
                assert not gw.plugins.get("ping_plugin").active
                refused = await client.post("/api/admin/plugins/ping_plugin/enable")
                assert refused.status_code == 409
                await client.post("/api/admin/recover")
                assert gw.plugins.get("ping_plugin").active
                await gw.manager.wait_for_state("dev", "connected", timeout=5)
                audit = await gw.query_audit(action="plugin_enable")
                assert audit and audit[0]["result"] == "error"  # the refusal, with who
        finally:
            await gw.stop()
    assert "ping_tcp" not in sys.modules.get("edgelink", sys).__dict__  # nothing leaked


async def test_the_example_plugin_counts(tmp_path: Path) -> None:
    """Test that examples/plugins/counter_plugin loads as documented and its type reports."""
    import shutil

    example = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "counter_plugin"
    root = tmp_path / "plugins"
    shutil.copytree(example, root / "counter_plugin")
    plugins = PluginManager(root, DriverRegistry())
    plugins.discover()
    await plugins.enable("counter_plugin")
    plugins.configure("counter_plugin", {"default_step": 5})
    m = ConnectionManager(registry=plugins.registry)
    m.add_connection("counter_1", "counter", {"interval": 0.01})
    async with m:
        await m.wait_for_state("counter_1", "connected", timeout=5)
        import asyncio

        async with asyncio.timeout(5):
            while (dp := m.router.data.get("counter_1.value")) is None or dp.value < 15:
                await asyncio.sleep(0.01)
        assert dp.value % 5 == 0
    await plugins.disable("counter_plugin")
