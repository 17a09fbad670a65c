"""``/api/connections/{id}/symbols`` and ``/poll``: refusals say why, and Poll edits connections.json."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from edgelink.api.server import ApiServer
from edgelink.service.gateway import Gateway
from edgelink.testing.peers import PingPongPeer

TOKEN = "test-token-0123456789abcdef"
SETTINGS = {"connect_timeout": 0.5, "health_check_interval": 60, "reconnect_jitter": 0.0}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    async with PingPongPeer(values={"temperature": "21.5"}) as peer:
        connections = {"dev": {"type": "tcp", "config": {"host": "127.0.0.1", "port": peer.port}}}
        (tmp_path / "connections.json").write_text(
            json.dumps({"settings": SETTINGS, "connections": connections})
        )
        (tmp_path / "edgelink.json").write_text(
            json.dumps({"api": {"token": TOKEN}, "storage": {"path": "logs/system.db"}})
        )
        gw = Gateway(tmp_path)
        await gw.start()
        await ApiServer(gw, port=0).start()
        try:
            assert gw.api_address is not None
            host, port = gw.api_address
            async with httpx.AsyncClient(
                base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as client:
                yield client, gw
        finally:
            await gw.stop()


async def test_symbols_of_a_non_ads_or_unknown_connection_are_refused(
    api: tuple[httpx.AsyncClient, Gateway],
) -> None:
    """Test 409 for a tcp connection and 404 for an unknown one, with the reason."""
    client, _ = api
    tcp = await client.get("/api/connections/dev/symbols")
    assert tcp.status_code == 409 and "not ads" in tcp.json()["detail"]
    assert (await client.get("/api/connections/nope/symbols")).status_code == 404


async def test_poll_adds_a_tag_once_and_bad_input_changes_nothing(
    api: tuple[httpx.AsyncClient, Gateway], tmp_path: Path
) -> None:
    """Test that Poll writes the tag to connections.json (once), and refusals leave the file."""
    client, gw = api
    await gw.manager.wait_for_state("dev", "connected", timeout=5)
    before = (tmp_path / "connections.json").read_text()
    bad = await client.post("/api/connections/dev/poll", json={"tag": "temperature", "interval": 0})
    assert bad.status_code == 422
    unknown = await client.post("/api/connections/nope/poll", json={"tag": "x"})
    assert unknown.status_code == 404
    assert (tmp_path / "connections.json").read_text() == before
    added = await client.post("/api/connections/dev/poll", json={"tag": "temperature"})
    assert added.status_code == 200 and added.json()["already"] is False
    again = await client.post("/api/connections/dev/poll", json={"tag": "temperature"})
    assert again.json()["already"] is True
    saved = json.loads((tmp_path / "connections.json").read_text())["connections"]["dev"]
    assert saved["poll"] == [{"tags": ["temperature"], "interval": 1.0}]
    await gw.manager.wait_for_state("dev", "connected", timeout=5)
    import asyncio

    async with asyncio.timeout(5):
        while gw.data_point("dev.temperature") is None:
            await asyncio.sleep(0.02)
