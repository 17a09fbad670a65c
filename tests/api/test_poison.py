"""A hostile route against a live gateway: bounded expressions, quarantine, admin re-enable.

A real mosquitto feeds 1 MB MQTT messages to a route whose transform would
copy each of them 40 times (``expr(value+value+...)``); a PING/PONG device
is health-checked alongside. The loop must stay responsive, the other
connection's health checks on time, and the route must end quarantined.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgelink.api.server import ApiServer
from edgelink.api.stream import StreamHub, _Client
from edgelink.events import Event
from edgelink.service.gateway import Gateway
from edgelink.testing import eventually
from edgelink.testing.mosquitto import MosquittoBroker
from edgelink.testing.peers import PingPongPeer

TOKEN = "poison-test-token-0123456789"
FAST = {
    "connect_timeout": 1.0,
    "health_check_timeout": 0.5,
    "health_check_interval": 0.2,
    "reconnect_initial_delay": 0.05,
    "reconnect_jitter": 0.0,
    "spam_max_pps": None,
}
#: 40 copies of the input: 1 MB in, 40 MB out and 820 MB copied on the way, uncapped.
AMPLIFIER = "expr(" + "+".join(["value"] * 40) + ")"


class LagSampler:
    """Measures event-loop lag: how late a 5 ms sleep wakes up; also samples a counter."""

    def __init__(self, counter: Callable[[], int]) -> None:
        self.lags: list[float] = []
        self.counts: list[tuple[float, int]] = []
        self._counter = counter
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            self.lags.append(now - start - 0.005)
            self.counts.append((now, self._counter()))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task

    def p99(self) -> float:
        ordered = sorted(self.lags)
        return ordered[math.ceil(0.99 * len(ordered)) - 1]

    def longest_gap(self) -> float:
        """The longest time the counter stood still."""
        longest, since, last = 0.0, self.counts[0][0], self.counts[0][1]
        for at, count in self.counts:
            if count != last:
                longest = max(longest, at - since)
                since, last = at, count
        return max(longest, self.counts[-1][0] - since)


def publish(broker: MosquittoBroker, topic: str, payloads: list[bytes], pause: float) -> None:
    """Publish from a plain paho client in this thread, QoS 1, waiting for each ack."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert connected.wait(5)
        for payload in payloads:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
            time.sleep(pause)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Gateway, PingPongPeer, MosquittoBroker]]:
    with MosquittoBroker() as broker:
        async with PingPongPeer(values={"temperature": "21.5"}) as peer:
            conns = {
                "dev": {"type": "tcp", "config": {"host": "127.0.0.1", "port": peer.port}},
                "feed": {
                    "type": "mqtt",
                    "config": {"host": "127.0.0.1", "port": broker.port, "subscribe": ["big"]},
                },
            }
            routes = [
                {"id": "amp", "from": "feed.big", "to": "calc.amp", "transform": AMPLIFIER},
                {"id": "fine", "from": "dev.temperature", "to": "calc.t", "transform": "scale(2)"},
            ]
            (tmp_path / "connections.json").write_text(
                json.dumps({"settings": FAST, "connections": conns})
            )
            (tmp_path / "routing.json").write_text(json.dumps({"routes": routes}))
            (tmp_path / "edgelink.json").write_text(
                json.dumps(
                    {
                        "api": {"token": TOKEN},
                        "router": {"quarantine_after": 3, "quarantine_window": 30},
                        "bridge": {"connection": "feed", "qos": 1},
                    }
                )
            )
            gw = Gateway(tmp_path, watch=False)
            await gw.start()
            await ApiServer(gw, port=0).start()
            try:
                await gw.manager.wait_for_state("dev", "connected", timeout=5)
                await gw.manager.wait_for_state("feed", "connected", timeout=5)
                yield gw, peer, broker
            finally:
                await gw.stop()


@pytest.mark.timeout(30)
async def test_one_megabyte_amplification_keeps_the_loop_responsive_and_is_quarantined(
    gateway: tuple[Gateway, PingPongPeer, MosquittoBroker],
) -> None:
    """Test 1 MB messages into expr(value+...40 terms): lag p99 < 50 ms, health on time, quarantine."""
    gw, peer, broker = gateway
    router = gw.manager.router
    seen: list[Event] = []

    async def record(event: Event) -> None:
        seen.append(event)

    gw.manager.on_event("*", record)
    sampler = LagSampler(lambda: peer.requests)
    sampler.start()
    before = router.received
    payloads = [b"x" * 1_000_000 for _ in range(6)]
    await asyncio.to_thread(publish, broker, "big", payloads, 0.05)
    await eventually(lambda: router.received - before >= len(payloads), timeout=15)
    await asyncio.sleep(0.5)  # the health checks go on past the quarantine
    await sampler.stop()

    assert sampler.p99() < 0.05, f"event-loop lag p99 {sampler.p99() * 1000:.1f} ms"
    # Health checks every 0.2 s: the device hears from us all along.
    assert sampler.longest_gap() < 0.6, f"health checks stalled {sampler.longest_gap():.2f} s"
    assert not [e for e in seen if e.type == "health_check_failed"]
    stats = router.route_stats("amp")
    assert stats.get("state") == "quarantined"
    assert stats["limit_errors"] == 3
    assert "max_string_length" in str(stats["last_error"])
    quarantined = [e for e in seen if e.type == "route_quarantined"]
    assert len(quarantined) == 1
    assert quarantined[0].data["route_id"] == "amp"
    assert quarantined[0].data["reason"] == "poison"
    # Quarantined: the next messages are not evaluated at all (the feed itself flows).
    received = router.received
    await asyncio.to_thread(publish, broker, "big", [b"y" * 1_000_000], 0)
    await eventually(lambda: router.received > received)
    assert router.route_stats("amp")["limit_errors"] == 3
    assert router.quarantined_sources == {}  # the route's fault, not the feed's

    assert gw.api_address is not None
    host, port = gw.api_address
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    ) as client:
        listed = (await client.get("/api/routes")).json()["routes"]
        amp = next(r for r in listed if r["id"] == "amp")["stats"]
        assert amp["state"] == "quarantined"
        assert amp["reason"] == "poison"
        assert isinstance(amp["since"], float)
        fine = next(r for r in listed if r["id"] == "fine")["stats"]
        assert fine["state"] == "enabled"
        # The 332-term version of the route is refused up front, naming route and cap.
        huge = {
            "routes": [
                {"id": "amp332", "from": "feed.big", "to": "calc.amp", "transform": AMPLIFIER}
            ]
        }
        huge["routes"][0]["transform"] = "expr(" + "+".join(["value"] * 332) + ")"
        refused = await client.put("/api/routes", json=huge)
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert detail["route_id"] == "amp332"
        assert "max_terms=64" in detail["error"]
        assert "332 variable terms" in detail["error"]
        # The admin lets it run again.
        enabled = await client.post("/api/routes/amp/enable")
        assert enabled.status_code == 200
        assert enabled.json()["stats"]["state"] == "enabled"
        assert (await client.post("/api/routes/nope/enable")).status_code == 404
        audit = (await client.get("/api/audit", params={"action": "enable_route"})).json()
        assert [(r["target"], r["result"]) for r in audit["audit"]] == [
            ("nope", "error"),
            ("amp", "ok"),
        ]
    assert router.route_stats("amp")["state"] == "enabled"
    assert router.match("feed.big") == ["amp"]
    await eventually(lambda: any(e.type == "quarantine_lifted" for e in seen))


class Subscriber:
    """A plain paho client in its own thread that records what it receives."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda c, u, msg: self._add(msg.topic, bytes(msg.payload))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _add(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages.append((topic, payload))

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_unserializable_values_go_out_bad_once_on_bridge_and_stream(
    gateway: tuple[Gateway, PingPongPeer, MosquittoBroker], caplog: pytest.LogCaptureFixture
) -> None:
    """Test a 5,000-digit integer and NaN: quality bad with the reason, one log line each."""
    gw, _, broker = gateway
    sub = Subscriber(broker, "smarthome/calc/#")
    try:
        await asyncio.to_thread(sub.subscribed.wait, 5)
        bridge = gw.bridge
        assert bridge is not None
        await eventually(lambda: bridge.stats()["live"])
        hub = StreamHub(gw)
        client = _Client(1000.0)
        client.configure(None, ["calc.**"])
        hub._clients.add(client)
        gw.manager.router.data.subscribe("calc.**", hub.publish_data, changes_only=False)
        router = gw.manager.router
        for value in (10**5000, 10**5000 + 1, float("nan"), 21.5):
            router.route_data("calc", "v", value)

        def payloads() -> list[dict[str, Any]]:
            return [json.loads(p) for t, p in sub.snapshot() if t == "smarthome/calc/v"]

        got = await eventually(lambda: len(payloads()) >= 4 and payloads())
        streamed = [json.loads(client.queue.get_nowait()) for _ in range(4)]
        for out in (got, streamed):
            assert [p["quality"] for p in out] == ["bad", "bad", "bad", "good"]
            assert "over 4300 digits" in out[0]["error"]
            assert "NaN" in out[2]["error"]
            assert out[3]["value"] == 21.5
        lines = [r for r in caplog.records if "sent as quality bad" in r.getMessage()]
        assert len(lines) == 2  # once per channel and address
        assert not any(r.exc_info for r in caplog.records)
    finally:
        sub.close()
