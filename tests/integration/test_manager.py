"""The manager: config loading, reload diff, health monitor, leaks."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST, Recorder, tcp
from edgelink import ConfigError, ConnectionManager, ConnectionState, Health
from edgelink.drivers.configs import TcpConfig
from edgelink.drivers.tcp import TcpConnection
from edgelink.testing.peers import PingPongPeer

S = ConnectionState
Make = Callable[..., ConnectionManager]


def conf(peer: PingPongPeer, **conns: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": {**FAST, "health_check_interval": 30},
        "connections": {
            cid: {"type": "tcp", "config": tcp(peer.port), **extra} for cid, extra in conns.items()
        },
    }


async def test_from_config_file_starts_enabled_only(tmp_path: Path, peer: PingPongPeer) -> None:
    """Test that from_config reads a JSON file and starts only enabled connections."""
    path = tmp_path / "connections.json"
    path.write_text(json.dumps(conf(peer, a={}, b={"enabled": False, "name": "Bee"})))
    async with ConnectionManager.from_config(path) as m:
        await m.wait_for_state("a", "connected", timeout=5)
        await asyncio.sleep(0.05)
        assert m.get_state("b") is S.DISCONNECTED
        assert m.get_status("b")["name"] == "Bee"
        await m.start_connection("b")
        await m.wait_for_state("b", "connected", timeout=5)


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda c: c["connections"]["a"]["config"].pop("host"), "connections.a.config.host"),
        (lambda c: c["connections"]["a"]["config"].update(port=70000), "connections.a.config.port"),
        (lambda c: c["connections"]["a"].update(type="warp"), "connections.a.type"),
        (
            lambda c: c["settings"].update(health_check_interval=-1),
            "settings.health_check_interval",
        ),
    ],
)
def test_bad_config_names_the_path(
    peer: PingPongPeer, mutate: Callable[[dict[str, Any]], Any], path: str
) -> None:
    """Test that a bad config is a ConfigError naming the JSON path, before anything runs."""
    c = conf(peer, a={})
    mutate(c)
    with pytest.raises(ConfigError) as info:
        ConnectionManager.from_config(c)
    assert path in str(info.value)


async def test_reload_touches_only_what_changed(peer: PingPongPeer) -> None:
    """Test that reload starts added, stops removed, restarts changed, leaves the rest alone."""
    async with ConnectionManager.from_config(conf(peer, keep={}, change={}, drop={})) as m:
        for cid in ("keep", "change", "drop"):
            await m.wait_for_state(cid, "connected", timeout=5)
        keep_conn = m.get_connection("keep")
        keep_since = m.get_status("keep")["connected_at"]
        rec = Recorder(m)
        new = conf(peer, keep={}, change={"name": "changed"}, add={})
        diff = await m.reload(new)
        assert (diff.added, diff.removed, diff.changed, diff.unchanged) == (
            ["add"],
            ["drop"],
            ["change"],
            ["keep"],
        )
        await m.wait_for_state("add", "connected", timeout=5)
        await m.wait_for_state("change", "connected", timeout=5)
        assert m.get_connection("drop") is None
        assert m.get_connection("keep") is keep_conn
        assert m.get_status("keep")["connected_at"] == keep_since
        assert m.get_status("change")["name"] == "changed"
        touched = {e.connection_id for e in rec.events if e.type in ("connected", "disconnected")}
        assert "keep" not in touched


async def test_bad_reload_changes_nothing(peer: PingPongPeer) -> None:
    """Test that a reload with a bad file raises and leaves every connection running."""
    async with ConnectionManager.from_config(conf(peer, a={}, b={})) as m:
        await m.wait_for_state("a", "connected", timeout=5)
        await m.wait_for_state("b", "connected", timeout=5)
        bad = conf(peer, a={}, c={})
        bad["connections"]["c"]["config"]["port"] = "nope"
        with pytest.raises(ConfigError, match=r"connections\.c\.config\.port"):
            await m.reload(bad)
        assert sorted(m.connections) == ["a", "b"]
        assert m.get_state("a") is S.CONNECTED and m.get_state("b") is S.CONNECTED


async def test_add_connection_errors(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that duplicates, unknown types, bad settings and max_connections are refused."""
    m = make_manager(max_connections=1)
    m.add_connection("a", "tcp", tcp(peer.port))
    with pytest.raises(ConfigError, match="already exists"):
        m.add_connection("a", "tcp", tcp(peer.port))
    with pytest.raises(ConfigError, match="max_connections"):
        m.add_connection("b", "tcp", tcp(peer.port))
    m2 = make_manager()
    with pytest.raises(ConfigError, match="unknown connection type 'warp'"):
        m2.add_connection("x", "warp", {})
    with pytest.raises(ConfigError, match="health_check_interval"):
        m2.add_connection("x", "tcp", tcp(peer.port), settings={"health_check_interval": 0})
    with pytest.raises(ConfigError, match="reconnect_jitter"):
        ConnectionManager(reconnect_jitter=3)


async def test_health_monitor_custom_check_and_state_callbacks(
    make_manager: Make, peer: PingPongPeer
) -> None:
    """Test that a custom health check can fail a link and state callbacks see it."""
    m = make_manager(health_check_interval=0.05)
    m.add_connection("dev", "tcp", tcp(peer.port))
    monitor = m.get_health_monitor()
    ok = [True]

    async def custom() -> bool:
        return ok[0]

    seen: list[tuple[str, object]] = []
    monitor.register_health_check("dev", custom)
    monitor.register_state_callback("dev", lambda cid, new: seen.append((cid, new)))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        assert await monitor.check_now("dev") is True
        ok[0] = False
        await m.wait_for_state("dev", "reconnecting", timeout=3)
        ok[0] = True
        await m.wait_for_state("dev", "connected", timeout=5)
        await m.events.drain()
    assert ("dev", S.CONNECTED) in seen
    assert ("dev", S.RECONNECTING) in seen
    assert ("dev", Health.UNHEALTHY) in seen


async def test_callbacks_that_raise_or_block_never_stall_connections(
    make_manager: Make, peer: PingPongPeer
) -> None:
    """Test that raising and blocking callbacks leave supervision and other callbacks running."""
    m = make_manager(health_check_interval=60)
    m.add_connection("dev", "tcp", tcp(peer.port))
    release = threading.Event()
    good: list[str] = []

    def boom(ev: object) -> None:
        raise RuntimeError("callback bug")

    def hold(ev: object) -> None:
        release.wait(10)

    m.on_event("*", boom)
    m.on_event("*", hold)
    m.on_event("disconnected", lambda ev: good.append("disconnected"))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await peer.stop()
        await m.wait_for_state("dev", "reconnecting", timeout=2)
        await peer.start()
        await m.wait_for_state("dev", "connected", timeout=5)
        async with asyncio.timeout(2):
            while not good:
                await asyncio.sleep(0.01)
        release.set()
        await m.events.drain()
    assert m.events.callback_errors >= 4


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_leaks_after_500_reconnect_cycles(make_manager: Make, peer: PingPongPeer) -> None:
    """Test that 500 lose/reconnect cycles leave FDs, tasks and threads where they started."""
    # 500 drops in a row is flapping: dampening would hold the link down after three.
    m = make_manager(health_check_interval=60, stable_after=0, flap_dampening=False)
    m.add_connection("dev", "tcp", tcp(peer.port))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        await m.events.drain()
        gc.collect()
        await asyncio.sleep(0.05)
        fds, tasks, threads = _fds(), len(asyncio.all_tasks()), threading.active_count()
        for n in range(1, 501):
            m.mark_tx_drop("dev")
            await rec.wait_for("reconnect_ok", n)
        await m.events.drain()
        await asyncio.sleep(0.05)
        gc.collect()
        assert m.get_state("dev") is S.CONNECTED
        assert m.get_status("dev")["stats"]["reconnects"] == 500
        assert (_fds(), len(asyncio.all_tasks()), threading.active_count()) == (fds, tasks, threads)
    assert peer.connections == 0


class TCPWithLoginConfig(TcpConfig):
    """The tcp config plus credentials, as a custom driver might take them."""

    password: str | None = None
    api_key: str | None = None


class TCPWithLogin(TcpConnection):
    """The tcp driver with credentials in its config (it never sends them)."""

    config_model = TCPWithLoginConfig


async def test_secrets_stay_out_of_status_events_logs_and_reprs(
    make_manager: Make, peer: PingPongPeer, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that a password in a connection's config shows nowhere but the driver's config."""
    secret = "hunter2-very-secret"
    m = make_manager()
    # tcp refuses keys it does not know: a driver that takes credentials does.
    m.register_connection_type("tcp_with_login", TCPWithLogin)
    conn = m.add_connection(
        "dev", "tcp_with_login", tcp(peer.port, password=secret, api_key=secret)
    )
    rec = Recorder(m)
    with caplog.at_level("DEBUG"):
        async with m:
            await m.wait_for_state("dev", "connected", timeout=5)
            await peer.stop()
            await m.wait_for_state("dev", "reconnecting", timeout=2)
            await peer.start()
            await m.wait_for_state("dev", "connected", timeout=5)
            await m.events.drain()
            texts = [
                repr(conn),
                repr(m),
                repr(m.get_supervisor("dev")),
                repr(m.get_spec("dev")),
                json.dumps(m.get_status()),
                *(json.dumps(e.as_dict()) for e in rec.events),
                caplog.text,
            ]
    assert conn.config["password"] == secret
    for text in texts:
        assert secret not in text
