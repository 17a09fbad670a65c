"""Plugins: the scheduled update check (a gateway on a manual clock) and an index kept in git.

Remotes are local bare git repositories, as in test_plugins.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from test_plugins import bare_and_work, git, make_remote, release

from edgelink.events import Event
from edgelink.plugins import Badge, PluginManager
from edgelink.registry import DriverRegistry
from edgelink.service.config import load_service_settings
from edgelink.testing import ManualClock
from edgelink.testing.peers import PingPongPeer


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    """A bare remote with the plugin's v1.0.0 and the work tree that publishes to it."""
    return make_remote(tmp_path)


def index_repository(tmp_path: Path, entries: Any, file: str = "index.json") -> Path:
    """A bare repository whose ``file`` holds ``entries``; returns the bare repository."""
    bare, work = bare_and_work(tmp_path, "index.git", "index-work")
    publish_index(work, entries, file)
    return bare


def publish_index(work: Path, entries: Any, file: str = "index.json") -> None:
    target = work / file
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(entries))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "index")
    git(work, "push", "-q", "origin", "HEAD:refs/heads/main")
    git(work.parent / "index.git", "symbolic-ref", "HEAD", "refs/heads/main")


async def test_an_index_in_a_git_repository_is_fetched_and_refreshed(
    tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    """Test an index fetched from a repository and refreshed; errors named with the source.

    A broken index or an unreachable repository is named with the reason.
    """
    entry = {"name": "ping_plugin", "repository": str(remote[0]), "version": "1.0.0"}
    bare = index_repository(tmp_path, {"plugins": [entry]}, "catalog/plugins.json")
    config = tmp_path / "config"
    manager = PluginManager(config / "plugins", DriverRegistry())
    manager.use_index(str(bare), config, "catalog/plugins.json")
    manager.discover()
    assert manager.as_list() == [] and manager.index_error is None  # not fetched yet
    await manager.refresh_index()
    assert [p["name"] for p in manager.as_list()] == ["ping_plugin"]
    assert manager.get("ping_plugin").badge() is Badge.AVAILABLE
    await manager.install("ping_plugin")  # from the repository the index names
    assert manager.get("ping_plugin").badge() is Badge.INACTIVE

    work = tmp_path / "index-work"
    publish_index(work, {"plugins": [entry, {"name": "broken"}]}, "catalog/plugins.json")
    await manager.refresh_index()
    assert manager.index_error == (
        f"plugin index catalog/plugins.json in {bare}: plugins[1] needs a 'name' and a"
        " 'repository' (1 left out)"
    )
    publish_index(work, {"plugins": "nope"}, "catalog/plugins.json")
    await manager.refresh_index()
    assert "'plugins' must be a list" in (manager.index_error or "")
    status = manager.status()
    assert status["index"]["repository"] == str(bare) and status["index"]["error"]

    manager.use_index(str(tmp_path / "gone.git"), config, "index.json")
    await manager.refresh_index()
    assert (manager.index_error or "").startswith(f"plugin index {tmp_path / 'gone.git'}: ")
    manager.use_index("missing.json", config)
    manager.discover()
    assert manager.index_error == f"plugin index {config / 'missing.json'}: no such file"


def test_the_plugins_settings_are_validated_with_the_field_named() -> None:
    """Test the defaults and that a bad value names plugins.<field>."""
    settings = load_service_settings({"plugins": {"update_check_hours": 6}})
    assert settings.plugins.update_check_hours == 6 and settings.plugins.index is None
    with pytest.raises(Exception, match=r"plugins\.update_check_hours"):
        load_service_settings({"plugins": {"update_check_hours": -1}})
    with pytest.raises(Exception, match=r"plugins\.index_file"):
        load_service_settings({"plugins": {"index_file": "../x.json"}})


async def test_the_gateway_checks_for_updates_on_its_schedule(
    tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    """Test on a manual clock: no check before the delay, then one that finds the new tag.

    It is evented and shown (badge, last check); the next one comes only after
    the configured hours.
    """
    from edgelink.service.gateway import PLUGIN_CHECK_DELAY_S, Gateway

    bare, work = remote
    config = tmp_path / "gw"
    (config / "plugins").mkdir(parents=True)
    git(tmp_path, "clone", "-q", str(bare), str(config / "plugins" / "ping_plugin"))
    clock = ManualClock()
    async with PingPongPeer() as peer:
        (config / "connections.json").write_text(json.dumps({
            "connections": {"dev": {"type": "tcp", "config": {"host": "127.0.0.1", "port": peer.port}}},
        }))  # fmt: skip
        (config / "edgelink.json").write_text(
            json.dumps(
                {"storage": {"path": "logs/system.db"}, "plugins": {"update_check_hours": 2}}
            )
        )
        gw = Gateway(config, watch=False, clock=clock)
        await gw.start()
        events: list[Event] = []
        gw.subscribe_events(events.append, "plugin_update_available")
        try:
            plugins = gw.plugins
            await asyncio.sleep(0.05)
            assert plugins.last_check is None
            release(work, "1.1.0")
            await clock.advance(PLUGIN_CHECK_DELAY_S)
            async with asyncio.timeout(10):
                while plugins.last_check is None:
                    await asyncio.sleep(0.02)
            assert plugins.get("ping_plugin").update_to == "v1.1.0"
            assert plugins.get("ping_plugin").badge() is Badge.UPDATE
            async with asyncio.timeout(5):
                while not events:
                    await asyncio.sleep(0.02)
            assert events[0].data == {"plugin": "ping_plugin", "version": "v1.1.0"}
            first = plugins.last_check
            await clock.advance(3600.0)
            await asyncio.sleep(0.2)
            assert plugins.last_check == first  # not before two hours
            await clock.advance(3600.0)
            async with asyncio.timeout(10):
                while plugins.last_check == first:
                    await asyncio.sleep(0.02)
        finally:
            await gw.stop()
