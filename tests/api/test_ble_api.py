"""The BLE device browser's API: devices in range, and Connect adding a BMS connection.

The radio is `edgelink.testing.ble.FakeRadio` (no adapter here); the gateway,
the API server and connections.json are real.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgelink.api.server import ApiServer
from edgelink.service.gateway import Gateway
from edgelink.sim.bms import BmsModel
from edgelink.testing.ble import BmsPeripheral, FakeRadio

TOKEN = "test-token-0123456789abcdef"
SETTINGS = {"connect_timeout": 0.5, "health_check_interval": 60, "reconnect_jitter": 0.0}
JBD = "C0:00:00:00:00:31"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway, FakeRadio]]:
    (tmp_path / "connections.json").write_text(
        json.dumps({"settings": SETTINGS, "connections": {}})
    )
    (tmp_path / "edgelink.json").write_text(
        json.dumps({"api": {"token": TOKEN}, "storage": {"path": "logs/system.db"}})
    )
    radio = FakeRadio(advert_interval=0.02)
    radio.add(BmsPeripheral(JBD, "jbd", BmsModel(cells=4, animate=False)))
    with radio.installed():
        async with radio.running():
            gw = Gateway(tmp_path)
            await gw.start()
            server = ApiServer(gw, port=0)
            await server.start()
            try:
                assert gw.api_address is not None
                host, port = gw.api_address
                async with httpx.AsyncClient(
                    base_url=f"http://{host}:{port}",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as client:
                    yield client, gw, radio
            finally:
                await gw.stop()
            assert not radio.scanners  # the gateway's stop ended the browser's scan


async def devices(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    import asyncio

    for _ in range(100):
        got = (await client.get("/api/ble/devices", params={"linger": 5})).json()
        if got["devices"]:
            return list(got["devices"])
        await asyncio.sleep(0.02)
    raise AssertionError("no device heard")


async def test_connect_adds_a_bms_connection_that_reports(
    api: tuple[httpx.AsyncClient, Gateway, FakeRadio], tmp_path: Path
) -> None:
    """Test that the browser identifies the BMS, and Connect writes connections.json and starts it."""
    client, gw, _ = api
    found = await devices(client)
    jbd = next(d for d in found if d["address"] == JBD)
    assert jbd["parsers"] == ["jbd"] and jbd["rssi"] == -60
    assert jbd["rssi_history"] and jbd["name"] == "xiaoxiang BMS"
    status = (await client.get("/api/ble/devices", params={"linger": 5})).json()
    assert status["scanner"]["running"] is True and status["error"] is None
    answer = await client.post(
        f"/api/ble/devices/{JBD}/connect", json={"connection_id": "bt.bms_001", "interval": 0.2}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["added"] == ["bt.bms_001"]
    saved = json.loads((tmp_path / "connections.json").read_text())["connections"]["bt.bms_001"]
    assert saved["config"] == {"parser": "jbd", "transport": "ble", "address": JBD, "interval": 0.2}
    await gw.manager.wait_for_state("bt.bms_001", "connected", timeout=5)
    import asyncio

    async with asyncio.timeout(5):
        while gw.data_point("bt.bms_001.cells.4") is None:
            await asyncio.sleep(0.02)
    again = await client.post(
        f"/api/ble/devices/{JBD}/connect", json={"connection_id": "bt.bms_001"}
    )
    assert again.status_code == 409 and "exists" in again.json()["detail"]
    audit = (await client.get("/api/audit", params={"action": "connection_add"})).json()
    assert audit


async def test_bad_connect_changes_nothing(
    api: tuple[httpx.AsyncClient, Gateway, FakeRadio], tmp_path: Path
) -> None:
    """Test that an unknown device without a parser, or a bad id, is refused and the file stays."""
    client, _, _ = api
    before = (tmp_path / "connections.json").read_text()
    unknown = await client.post(
        "/api/ble/devices/AA:AA:AA:AA:AA:AA/connect", json={"connection_id": "bt.x"}
    )
    assert unknown.status_code == 422 and "parser" in unknown.json()["detail"]
    bad_id = await client.post(
        f"/api/ble/devices/{JBD}/connect", json={"connection_id": "bt x", "parser": "jbd"}
    )
    assert bad_id.status_code == 422 and "connection_id" in bad_id.json()["detail"]
    victron = await client.post(
        f"/api/ble/devices/{JBD}/connect", json={"connection_id": "bt.v", "parser": "victron"}
    )
    assert victron.status_code == 422 and "encryption_key" in victron.json()["detail"]
    assert (tmp_path / "connections.json").read_text() == before
