"""The admin route that releases quarantined (poison) poll tags, against a real server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgelink.api.server import ApiServer
from edgelink.drivers.tcp import TcpConnection
from edgelink.service.gateway import Gateway
from edgelink.testing.peers import PingPongPeer

TOKEN = "test-token-0123456789abcdef"


class DecodeBugDevice(TcpConnection):
    """A driver whose decoding of ``status`` crashes (a KeyError)."""

    type_name = "decode_bug_api"

    async def read(self, tag: str) -> Any:
        raw = await super().read(tag)
        return {"ON": 1}[raw] if tag == "status" else raw


@pytest.fixture
async def gateway(tmp_path: Path, peer: PingPongPeer) -> AsyncIterator[Gateway]:
    (tmp_path / "connections.json").write_text(json.dumps({"connections": {}}))
    (tmp_path / "edgelink.json").write_text(
        json.dumps({"api": {"token": TOKEN}, "storage": {"path": "logs/system.db"}})
    )
    gw = Gateway(tmp_path)
    await gw.start()
    await ApiServer(gw, port=0).start()
    try:
        yield gw
    finally:
        await gw.stop()


async def test_release_quarantine_route(gateway: Gateway, peer: PingPongPeer) -> None:
    """Test that the route releases a quarantined tag, shows what is left and 404s the rest."""
    peer.values["status"] = "WEIRD"
    manager = gateway.manager
    manager.register_connection_type("decode_bug_api", DecodeBugDevice)
    manager.add_connection(
        "dev",
        "decode_bug_api",
        {"host": "127.0.0.1", "port": peer.port},
        poll=[{"tags": ["temperature", "status"], "interval": 0.02}],
    )
    await manager.wait_for_state("dev", "connected", timeout=5)
    assert gateway.api_address is not None
    host, port = gateway.api_address
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    ) as client:
        async with asyncio.timeout(5):
            while not (await client.get("/api/connections/dev")).json()["quarantined"]:
                await asyncio.sleep(0.02)
        st = (await client.get("/api/connections/dev")).json()
        assert st["status"] == "connected" and st["quarantined"][0]["tag"] == "status"
        assert st["quarantined"][0]["reason"] == "poison" and st["flapping"] is False

        url = "/api/admin/instances/dev/quarantine/release"
        missing = await client.post(url, params={"tag": "temperature"})
        assert missing.status_code == 404 and "not quarantined" in missing.json()["detail"]
        assert (
            await client.post("/api/admin/instances/nope/quarantine/release")
        ).status_code == 404
        assert (await client.post(url, headers={"Authorization": "Bearer x"})).status_code == 401

        good: list[Any] = []
        manager.on_data(lambda _c, tag, v, q, _t: good.append(v) if tag == "status" else None)
        peer.values["status"] = "ON"
        body = (await client.post(url, params={"tag": "status"})).json()
        assert body["released"] == ["status"] and body["quarantined"] == []
        audit = (await client.get("/api/audit", params={"action": "release_quarantine"})).json()
        results = [(r["target"], r["result"]) for r in audit["audit"]]
        assert results[:2] == [("dev", "ok"), ("dev", "error")]  # newest first; the 404 too
        async with asyncio.timeout(5):
            while 1 not in good:
                await asyncio.sleep(0.02)
