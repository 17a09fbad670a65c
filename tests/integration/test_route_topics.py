"""MQTT in -> route -> MQTT out with a new topic per message, through a real mosquitto."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgelink import ConnectionManager
from edgelink.drivers.mqtt import MqttConnection
from edgelink.testing.mosquitto import MosquittoBroker

TOPICS = 300


@pytest.fixture(scope="module")
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as b:
        yield b


class Peer:
    """A paho client on its own network thread: publishes the input, counts the output."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"peer-{secrets.token_hex(4)}"
        )
        self.got: dict[str, bytes] = {}
        self._subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.got.__setitem__(m.topic, bytes(m.payload))
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe("out/#", 0)
        assert self._subscribed.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def until(pred: Callable[[], object], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


async def test_a_topic_per_message_is_routed_with_every_bound_kept(
    make_manager: Callable[..., ConnectionManager], broker: MosquittoBroker
) -> None:
    """Test the pass-through at a new topic per message: all delivered, nothing grows past its bound.

    The mqtt driver keeps ``last_values`` topics, the data space ``max_addresses``;
    the router writes to the broker connection through its batched path.
    """
    m = make_manager(watchdog_interval=1e9)
    m.add_connection(
        "broker",
        "mqtt",
        {
            "host": broker.host,
            "port": broker.port,
            "subscribe": ["in/+"],
            "last_values": 50,
        },
        settings={"spam_max_pps": None},
    )
    m.router.configure(max_addresses=100)
    m.router.load_routes(
        {
            "version": "1.0",
            "routes": [
                {
                    "id": "p",
                    "from": "broker.in/+",
                    "to": "broker.out/{1}",
                    "condition": "value > 10",
                    "transform": "scale(0.001)",
                }
            ],
        }
    )
    peer = Peer(broker)
    try:
        async with m:
            await m.wait_for_state("broker", "connected", timeout=5)
            for i in range(TOPICS):
                peer.client.publish(f"in/t{i:04d}", b"20000" if i % 3 else b"5", 0)
            passing = sum(1 for i in range(TOPICS) if i % 3)
            await until(lambda: len(peer.got) >= passing)
            await asyncio.sleep(0.05)
            assert len(peer.got) == passing
            assert peer.got["out/t0001"] == b"20.0"
            conn = m.get_connection("broker")
            assert isinstance(conn, MqttConnection)
            assert len(conn._last) == 50 and conn.last_values_evicted == TOPICS - 50
            assert conn.last_value(f"in/t{TOPICS - 1:04d}") == 20000
            assert conn.last_value("in/t0000") is None  # forgotten: the least recent
            stats = m.router.stats()
            assert stats["addresses"] == 100 and stats["evicted_addresses"] == TOPICS - 100
            assert stats["cached_plans"] == 0
            target = m.router.target_stats("broker")
            assert target["sent"] == passing and target["errors"] == 0
            data: dict[str, Any] = {a: m.router.data.value(a) for a in m.router.data}
            assert len(data) == 100 and f"broker.in/t{TOPICS - 1:04d}" in data
    finally:
        peer.close()
