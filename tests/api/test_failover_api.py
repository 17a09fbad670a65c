"""Failover as the service shows it: connections.json ``endpoints``, status, /metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from edgelink import ConnectionManager
from edgelink.api.server import ApiServer
from edgelink.errors import ConfigError
from edgelink.service.gateway import Gateway
from edgelink.testing.peers import PingPongPeer

TOKEN = "test-token-0123456789abcdef"
SETTINGS = {"connect_timeout": 0.5, "health_check_interval": 60, "reconnect_jitter": 0.0}


def write_folder(folder: Path, connections: dict[str, object]) -> None:
    (folder / "connections.json").write_text(
        json.dumps({"settings": SETTINGS, "connections": connections})
    )
    (folder / "edgelink.json").write_text(
        json.dumps({"api": {"token": TOKEN}, "storage": {"path": "logs/system.db"}})
    )


@pytest.fixture
async def standby() -> AsyncIterator[PingPongPeer]:
    async with PingPongPeer() as peer:
        yield peer


async def test_status_and_metrics_show_the_failover(tmp_path: Path, standby: PingPongPeer) -> None:
    """Test that a connection whose preferred endpoint is down shows the alternate and counts it."""
    async with PingPongPeer() as gone:
        dead_port = gone.port  # a port nobody listens on once the peer stopped
    write_folder(
        tmp_path,
        {
            "dev": {
                "type": "tcp",
                "config": {"host": "127.0.0.1", "port": dead_port},
                "endpoints": [{"name": "primary"}, {"port": standby.port, "name": "standby"}],
            }
        },
    )
    gw = Gateway(tmp_path)
    await gw.start()
    server = ApiServer(gw, port=0)
    await server.start()
    try:
        await gw.manager.wait_for_state("dev", "connected", timeout=5)
        assert gw.api_address is not None
        host, port = gw.api_address
        async with httpx.AsyncClient(
            base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as client:
            status = (await client.get("/api/connections/dev")).json()
            endpoints = status["endpoints"]
            assert endpoints["active"] == "standby" and endpoints["preferred"] == "primary"
            assert [e["last_result"] for e in endpoints["list"]] == ["refused", "ok"]
            text = (await client.get("/metrics")).text
            assert 'edgelink_failovers_total{connection_id="dev"} 1.0' in text
            assert 'edgelink_failbacks_total{connection_id="dev"} 0.0' in text
    finally:
        await gw.stop()


def test_bad_endpoint_in_connections_json_names_the_entry(tmp_path: Path) -> None:
    """Test that a bad endpoint in the file is a config error naming connection, index, field."""
    write_folder(
        tmp_path,
        {
            "dev": {
                "type": "tcp",
                "config": {"host": "127.0.0.1", "port": 5000},
                "endpoints": [{}, {"host": ""}],
            }
        },
    )
    with pytest.raises(ConfigError) as info:
        ConnectionManager.from_config(tmp_path / "connections.json")
    assert "connections.dev.endpoints[1].host" in str(info.value)
