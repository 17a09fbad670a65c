"""`Gateway.set_connection_setting` and its API, and the spam suspensions they serve.

A real gateway from a temp folder with PING/PONG devices on loopback; the
flooding device is a real peer pushing ``tag=value`` lines over its socket.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from edgelink.api.server import ApiServer
from edgelink.errors import ConfigError
from edgelink.service.gateway import ActionRefusedError, Gateway, UnknownConnectionError
from edgelink.testing import eventually as _eventually
from edgelink.testing.peers import PingPongPeer

TOKEN = "settings-token-0123456789abcdef"
WHO = "token:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:8]
FAST = {
    "connect_timeout": 0.5,
    "health_check_timeout": 0.3,
    "health_check_interval": 0.2,
    "reconnect_initial_delay": 0.05,
    "reconnect_max_delay": 0.2,
    "reconnect_jitter": 0.0,
    "request_timeout": 0.5,
}


@pytest.fixture
async def peers() -> AsyncIterator[list[PingPongPeer]]:
    started = [PingPongPeer(values={"temperature": "21.5"}) for _ in range(2)]
    for peer in started:
        await peer.start()
    yield started
    for peer in started:
        await peer.stop()


@pytest.fixture
async def gateway(tmp_path: Path, peers: list[PingPongPeer]) -> AsyncIterator[Gateway]:
    connections = {
        "dev_a": {"type": "tcp", "config": {"host": "127.0.0.1", "port": peers[0].port}},
        # The flooding device: no health checks, so no PING waits for a PONG
        # while its lines arrive (the first line would answer it).
        "flood": {
            "type": "tcp",
            "config": {"host": "127.0.0.1", "port": peers[1].port},
            "settings": {"spam_max_pps": 50, "health_check_interval": None},
        },
    }
    (tmp_path / "connections.json").write_text(
        json.dumps({"settings": FAST, "connections": connections}, indent=2)
    )
    (tmp_path / "edgelink.json").write_text(
        json.dumps({"api": {"token": TOKEN}, "storage": {"path": "logs/system.db"}})
    )
    gw = Gateway(tmp_path, watch=False)
    await gw.start()
    await ApiServer(gw, port=0).start()
    try:
        for cid in ("dev_a", "flood"):
            await gw.manager.wait_for_state(cid, "connected", timeout=5)
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    assert gateway.api_address is not None
    host, port = gateway.api_address
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    ) as http:
        yield http


#: Waits a little shorter here than the kit's default.
eventually = functools.partial(_eventually, timeout=5.0)


def connections_file(gw: Gateway) -> Path:
    return gw.config_dir / "connections.json"


async def test_a_bad_value_is_refused_with_where_and_why_and_nothing_changes(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    """Test 422 for a negative, a text and a boolean threshold and an unknown key; file kept."""
    before = connections_file(gateway).read_bytes()
    connected_at = gateway.connection("flood")["connected_at"]
    for value, why in ((-5, "greater than 0"), ("lots", "valid number"), (True, "not a valid")):
        answer = await client.put(
            "/api/admin/instances/flood/settings/spam_max_pps", json={"value": value}
        )
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"]
        assert detail["path"] == "connections.flood.settings.spam_max_pps"
        assert why in detail["message"]
        assert "connections.json" in detail["error"]
    unknown = await client.put("/api/admin/instances/flood/settings/spam_max", json={"value": 9})
    assert unknown.status_code == 422
    assert "unknown setting 'spam_max'" in unknown.json()["detail"]["message"]
    assert connections_file(gateway).read_bytes() == before
    assert gateway.manager.get_spec("flood").settings.spam_max_pps == 50
    assert gateway.connection("flood")["connected_at"] == connected_at
    records = await gateway.query_audit(limit=10)
    assert [r["result"] for r in records[:4]] == ["error"] * 4
    assert {r["action"] for r in records[:4]} == {"set_setting"}
    assert (
        await client.put("/api/admin/instances/nope/settings/x", json={"value": 1})
    ).status_code == 404


async def test_a_good_value_is_written_applied_live_and_audited(
    gateway: Gateway, client: httpx.AsyncClient, peers: list[PingPongPeer]
) -> None:
    """Test a new spam_max_pps: in the file, in force at once, no restart, one audit record."""
    connected_at = gateway.connection("flood")["connected_at"]
    answer = await client.put(
        "/api/admin/instances/flood/settings/spam_max_pps", json={"value": 200}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["applied"] == "live"
    assert answer.json()["value"] == 200
    written = json.loads(connections_file(gateway).read_text())
    assert written["connections"]["flood"]["settings"] == {
        "spam_max_pps": 200,
        "health_check_interval": None,
    }
    assert written["connections"]["dev_a"] == {
        "type": "tcp",
        "config": {"host": "127.0.0.1", "port": peers[0].port},
    }
    assert gateway.manager.get_spec("flood").settings.spam_max_pps == 200
    status = gateway.connection("flood")
    assert status["status"] == "connected" and status["connected_at"] == connected_at
    # In force: 150 datapoints at once pass the new threshold (they would trip the old 50).
    assert peers[1].push([f"x={i}" for i in range(150)]) == 1
    await eventually(lambda: gateway.data_point("flood.x") is not None)
    await eventually(lambda: getattr(gateway.data_point("flood.x"), "value", None) == "149")
    assert gateway.connection("flood")["status"] == "connected"
    (record,) = (await gateway.query_audit(limit=1))[:1]
    assert (record["who"], record["action"], record["target"], record["result"]) == (
        WHO,
        "set_setting",
        "flood",
        "ok",
    )
    assert record["params"] == {"setting": "spam_max_pps", "value": 200, "applied": "live"}
    # A reload of the file written changes nothing more.
    report = await gateway.reload({"connections"})
    assert report["connections"]["changed"] == []


async def test_a_setting_that_needs_a_restart_restarts_only_that_connection(
    gateway: Gateway,
) -> None:
    """Test a non-live setting (connect_timeout): applied by restarting the one connection."""
    other = gateway.connection("dev_a")["connected_at"]
    report = await gateway.set_connection_setting("flood", "connect_timeout", 0.7, who=WHO)
    assert report["applied"] == "restarted"
    assert gateway.manager.get_spec("flood").settings.connect_timeout == 0.7
    await gateway.manager.wait_for_state("flood", "connected", timeout=5)
    assert gateway.connection("dev_a")["connected_at"] == other


async def test_refused_during_panic_and_for_an_unknown_connection(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    """Test 409 in panic (the file untouched), then the same call accepted after recover."""
    before = connections_file(gateway).read_bytes()
    await gateway.panic(reason="test", by=WHO)
    answer = await client.put(
        "/api/admin/instances/flood/settings/spam_max_pps", json={"value": 80}
    )
    assert answer.status_code == 409
    assert "panic" in answer.json()["detail"]
    with pytest.raises(ActionRefusedError):
        await gateway.set_connection_setting("flood", "spam_max_pps", 80, who=WHO)
    assert connections_file(gateway).read_bytes() == before
    await gateway.recover(by=WHO)
    with pytest.raises(UnknownConnectionError):
        await gateway.set_connection_setting("nope", "spam_max_pps", 80, who=WHO)
    with pytest.raises(ConfigError, match="reconnect_max_delay"):
        # Valid alone, inconsistent with the merged settings: the resolver says so.
        await gateway.set_connection_setting("flood", "reconnect_max_delay", 0.01, who=WHO)
    assert connections_file(gateway).read_bytes() == before
    report = await gateway.set_connection_setting("flood", "spam_max_pps", 80, who=WHO)
    assert report["applied"] == "live"


async def test_a_flood_is_listed_with_its_rate_and_resume_clears_it(
    gateway: Gateway, client: httpx.AsyncClient, peers: list[PingPongPeer]
) -> None:
    """Test GET /api/admin/spam: the flooding device, its rate over its threshold; resume."""
    assert (await client.get("/api/admin/spam")).json() == []
    peers[1].push([f"x={i}" for i in range(300)])
    await gateway.manager.wait_for_state("flood", "suspended", timeout=5)
    (entry,) = await eventually(lambda: gateway.spam_suspensions())
    assert entry["connection_id"] == "flood"
    assert entry["limit_pps"] == 50 and entry["threshold_pps"] == 50
    assert entry["rate_pps"] > 50
    assert entry["last_activity"] is not None
    assert (await client.get("/api/admin/spam")).json() == [entry]
    # Adjusting the threshold keeps it suspended (a person reactivates it) and shows the new one.
    await gateway.set_connection_setting("flood", "spam_max_pps", 1000, who=WHO)
    (adjusted,) = gateway.spam_suspensions()
    assert adjusted["threshold_pps"] == 1000 and adjusted["limit_pps"] == 50
    answer = await client.post("/api/admin/instances/flood/resume")
    assert answer.status_code == 200
    await gateway.manager.wait_for_state("flood", "connected", timeout=5)
    assert gateway.spam_suspensions() == []
