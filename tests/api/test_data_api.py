"""The data space API with real peers: topic levels as tree levels, writes, run-time subscriptions.

A gateway with a simulated Modbus device (pymodbus server on loopback) and an
``mqtt`` connection to a private mosquitto on a free port; messages are
published with a plain paho client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from edgelink.api.server import ApiServer
from edgelink.service.audit import token_identity
from edgelink.service.gateway import Gateway
from edgelink.sim.modbus import ModbusDevice, ModbusServer
from edgelink.testing import eventually
from edgelink.testing.mosquitto import MosquittoBroker

TOKEN = "data-api-test-token-0123456789"
FAST = {
    "connect_timeout": 0.5,
    "health_check_timeout": 0.5,
    "reconnect_initial_delay": 0.05,
    "reconnect_max_delay": 0.2,
    "reconnect_jitter": 0.0,
    "request_timeout": 1.0,
}


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as b:
        yield b


@pytest.fixture
async def device() -> AsyncIterator[tuple[ModbusDevice, ModbusServer]]:
    dev = ModbusDevice(1, registers=16, bits=8)
    dev.hr[0] = 7
    dev.ir[0] = 99
    async with ModbusServer([dev]) as server:
        yield dev, server


@pytest.fixture
async def gateway(
    tmp_path: Path, broker: MosquittoBroker, device: tuple[ModbusDevice, ModbusServer]
) -> AsyncIterator[Gateway]:
    connections = {
        "inv": {
            "type": "modbus_tcp",
            "config": {"host": "127.0.0.1", "port": device[1].port, "unit_id": 1},
            "poll": [{"tags": ["hr:0", "ir:0"], "interval": 0.05}],
        },
        "broker": {
            "type": "mqtt",
            "config": {
                "host": "127.0.0.1",
                "port": broker.port,
                "qos": 1,
                "subscribe": ["nodered/#"],
            },
            "settings": {"spam_max_pps": None},
        },
    }
    (tmp_path / "connections.json").write_text(
        json.dumps({"settings": FAST, "connections": connections})
    )
    (tmp_path / "edgelink.json").write_text(
        json.dumps({"api": {"token": TOKEN}, "storage": {"path": "logs/system.db"}})
    )
    gw = Gateway(tmp_path, watch=False)
    await gw.start()
    await ApiServer(gw, port=0).start()
    try:
        for cid in ("inv", "broker"):
            await gw.manager.wait_for_state(cid, "connected", timeout=10)
        yield gw
    finally:
        await gw.stop()


def client_of(gateway: Gateway) -> httpx.AsyncClient:
    assert gateway.api_address is not None
    host, port = gateway.api_address
    return httpx.AsyncClient(
        base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )


async def publish(broker: MosquittoBroker, topic: str, payload: str) -> None:
    """Publish one message with a plain paho client (QoS 1)."""
    await asyncio.to_thread(broker.publish, topic, payload)


async def children(client: httpx.AsyncClient, prefix: str) -> list[str]:
    answer = await client.get("/api/data/tree", params={"prefix": prefix})
    assert answer.status_code == 200
    result: list[str] = answer.json()["children"]
    return result


async def test_topic_levels_are_tree_levels_in_the_api(
    gateway: Gateway, broker: MosquittoBroker
) -> None:
    """Test ``GET /api/data/tree`` walking broker -> nodered -> flows -> temp from real messages."""
    await publish(broker, "nodered/flows/temp", "21.5")
    await publish(broker, "nodered/flows/hum", "40")
    await publish(broker, "nodered/status", "online")
    async with client_of(gateway) as client:

        async def arrived() -> bool:
            return len(await children(client, "broker.nodered/flows")) == 2

        await eventually(arrived)
        assert "broker" in await children(client, "")
        assert await children(client, "broker") == ["broker.nodered"]
        assert await children(client, "broker.nodered") == [
            "broker.nodered/flows",
            "broker.nodered/status",
        ]
        assert await children(client, "broker.nodered/flows") == [
            "broker.nodered/flows/hum",
            "broker.nodered/flows/temp",
        ]
        point = await client.get("/api/data/point", params={"address": "broker.nodered/flows/temp"})
        assert point.status_code == 200 and point.json()["value"] == 21.5
        assert await children(client, "inv") == ["inv.hr:0", "inv.ir:0"]


async def test_a_write_reaches_the_device_and_is_audited(
    gateway: Gateway, device: tuple[ModbusDevice, ModbusServer]
) -> None:
    """Test ``POST /api/data/write``: the register changes, the answer reads it back, refusals."""
    dev, _server = device
    async with client_of(gateway) as client:
        answer = await client.post("/api/data/write", json={"address": "inv.hr:0", "value": 42})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["ok"] is True and body["connection_id"] == "inv" and body["tag"] == "hr:0"
        assert body["read_back"] == 42 and body["elapsed_ms"] >= 0
        assert dev.hr[0] == 42
        await eventually(lambda: gateway.data_point("inv.hr:0").value == 42)  # type: ignore[union-attr]

        read_only = await client.post("/api/data/write", json={"address": "inv.ir:0", "value": 1})
        assert read_only.status_code == 422 and "cannot be written" in read_only.json()["detail"]
        unknown = await client.post("/api/data/write", json={"address": "nope.x", "value": 1})
        assert unknown.status_code == 404
        too_big = await client.post("/api/data/write", json={"address": "inv.hr:0", "value": 70000})
        assert too_big.status_code == 422
        dev.exception = 2  # the device refuses: illegal data address
        try:
            refused = await client.post("/api/data/write", json={"address": "inv.hr:0", "value": 5})
        finally:
            dev.exception = None
        assert refused.status_code == 502 and "DeviceError" in refused.json()["detail"]
        assert dev.hr[0] == 42

        await client.post("/api/admin/panic")
        in_panic = await client.post("/api/data/write", json={"address": "inv.hr:0", "value": 1})
        assert in_panic.status_code == 409
        await client.post("/api/admin/recover")

        audit = (await client.get("/api/audit", params={"action": "write"})).json()["audit"]
    results = [(r["target"], r["result"], r["params"]["value"]) for r in audit]
    assert results[-1] == ("inv.hr:0", "ok", 42)  # newest first: the first write is last
    assert ("inv.hr:0", "error", 1) in results and ("inv.ir:0", "error", 1) in results
    assert {r["who"] for r in audit} == {token_identity(TOKEN)}
    assert gateway.data_writable("inv.hr:0") and not gateway.data_writable("inv.ir:0")
    assert not gateway.data_writable("calc.x") and gateway.data_writable("broker.a/b")


async def test_run_time_subscriptions_join_the_ledger_and_bring_data(
    gateway: Gateway, broker: MosquittoBroker
) -> None:
    """Test subscribe / unsubscribe through the API: the ledger, the data, refusals, the audit."""
    url = "/api/connections/broker/subscriptions"
    async with client_of(gateway) as client:
        ledger = (await client.get(url)).json()["subscriptions"]
        assert [(e["key"], e["origin"]) for e in ledger] == [("nodered/#", "config")]

        added = await client.post(url, json={"filter": "plant/+/power", "qos": 0})
        assert added.status_code == 200, added.text
        entries = {e["key"]: e for e in added.json()["subscriptions"]}
        assert entries["plant/+/power"]["origin"] == "run time"

        async def confirmed() -> bool:
            got = (await client.get(url)).json()["subscriptions"]
            return any(e["key"] == "plant/+/power" and e["state"] == "confirmed" for e in got)

        await eventually(confirmed)
        await publish(broker, "plant/7/power", "1500")
        await eventually(lambda: gateway.data_point("broker.plant/7/power") is not None)
        assert await children(client, "broker.plant") == ["broker.plant/7"]

        bad = await client.post(url, json={"filter": "plant/#/x"})
        assert bad.status_code == 422 and "plant/#/x" in bad.json()["detail"]
        not_mqtt = await client.post("/api/connections/inv/subscriptions", json={"filter": "a/#"})
        assert not_mqtt.status_code == 422 and "only mqtt" in not_mqtt.json()["detail"]
        unknown = await client.post("/api/connections/nope/subscriptions", json={"filter": "a"})
        assert unknown.status_code == 404

        await client.post("/api/admin/panic")
        in_panic = await client.post(url, json={"filter": "other/#"})
        assert in_panic.status_code == 409
        gone = await client.delete(url, params={"filter": "plant/+/power"})
        assert gone.status_code == 200  # taking a filter away is allowed in panic
        assert [e["key"] for e in gone.json()["subscriptions"]] == ["nodered/#"]
        await client.post("/api/admin/recover")
        again = await client.delete(url, params={"filter": "plant/+/power"})
        assert again.status_code == 404

        audit = (await client.get("/api/audit", params={"target": "broker"})).json()["audit"]
    actions = [(r["action"], r["result"], r["params"].get("filter")) for r in audit]
    assert ("subscribe", "ok", "plant/+/power") in actions
    assert ("subscribe", "error", "other/#") in actions
    assert ("unsubscribe", "ok", "plant/+/power") in actions
    assert ("unsubscribe", "error", "plant/+/power") in actions

    await gateway.manager.wait_for_state("broker", "connected", timeout=10)
    await publish(broker, "plant/8/power", "1")  # no longer subscribed: never arrives
    await publish(broker, "nodered/after", "1")  # the configured filter still works
    await eventually(lambda: gateway.data_point("broker.nodered/after") is not None)
    assert gateway.data_point("broker.plant/8/power") is None
