"""Failover as the service shows it: connections.json ``endpoints``, status, /metrics."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgelink import ConnectionManager
from edgelink.api.server import ApiServer
from edgelink.errors import ConfigError
from edgelink.service.gateway import Gateway
from edgelink.sim.modbus import ModbusDevice, ModbusServer
from edgelink.testing import eventually
from edgelink.testing.mosquitto import MosquittoBroker
from edgelink.testing.peers import PingPongPeer

TOKEN = "test-token-0123456789abcdef"
SETTINGS = {"connect_timeout": 0.5, "health_check_interval": 60, "reconnect_jitter": 0.0}


def write_folder(
    folder: Path, connections: dict[str, object], bridge: dict[str, Any] | None = None
) -> None:
    (folder / "connections.json").write_text(
        json.dumps({"settings": SETTINGS, "connections": connections})
    )
    service: dict[str, Any] = {"api": {"token": TOKEN}, "storage": {"path": "logs/system.db"}}
    if bridge is not None:
        service["bridge"] = bridge
    (folder / "edgelink.json").write_text(json.dumps(service))


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


class Subscriber:
    """A plain paho client in its own thread that records the payloads of one topic filter."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def values(self, topic: str) -> list[Any]:
        with self._lock:
            return [json.loads(p)["value"] for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_the_bridge_fails_over_to_the_standby_broker(tmp_path: Path) -> None:
    """Test that the MQTT bridge's broker connection moves to the standby broker and publishes."""
    device = ModbusDevice(1)
    device.hr[0] = 1
    with MosquittoBroker() as main, MosquittoBroker() as standby:
        async with ModbusServer([device]) as server:
            write_folder(
                tmp_path,
                {
                    "inv": {
                        "type": "modbus_tcp",
                        "config": {"host": "127.0.0.1", "port": server.port},
                        "poll": [{"tags": ["hr:0"], "interval": 0.1}],
                    },
                    "broker": {
                        "type": "mqtt",
                        "config": {"host": "127.0.0.1", "port": main.port, "qos": 1},
                        "endpoints": [{}, {"port": standby.port}],
                        "settings": {"spam_max_pps": None},
                    },
                },
                bridge={"connection": "broker", "base_topic": "site", "qos": 1},
            )
            sub_main = Subscriber(main, "site/#")
            sub_standby = Subscriber(standby, "site/#")
            gw = Gateway(tmp_path, watch=False)
            await gw.start()
            try:
                await gw.manager.wait_for_state("broker", "connected", timeout=10)
                await eventually(lambda: 1 in sub_main.values("site/inv/hr:0"))
                main.stop()
                device.hr[0] = 2
                await eventually(lambda: 2 in sub_standby.values("site/inv/hr:0"))
                endpoints = gw.manager.get_status("broker")["endpoints"]
                assert endpoints["active_index"] == 1 and endpoints["failovers"] == 1
            finally:
                await gw.stop()
                sub_main.close()
                sub_standby.close()
