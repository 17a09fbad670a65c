"""Tests of the gateway service and its admin API, against a real server on loopback."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from edgelink.api.server import ApiServer
from edgelink.errors import ConfigError
from edgelink.service.gateway import Gateway
from edgelink.testing import eventually as _eventually
from edgelink.testing.peers import PingPongPeer

FAST = {
    "connect_timeout": 0.5,
    "health_check_timeout": 0.3,
    "health_check_interval": 0.2,
    "reconnect_initial_delay": 0.05,
    "reconnect_max_delay": 0.2,
    "reconnect_jitter": 0.0,
    "request_timeout": 0.5,
}
TOKEN = "test-token-0123456789abcdef"


def write_connections(folder: Path, ports: dict[str, int], **settings: Any) -> None:
    connections = {
        cid: {"type": "tcp", "config": {"host": "127.0.0.1", "port": port}}
        for cid, port in ports.items()
    }
    (folder / "connections.json").write_text(
        json.dumps({"settings": {**FAST, **settings}, "connections": connections})
    )


def write_service(folder: Path, **api: Any) -> None:
    (folder / "edgelink.json").write_text(
        json.dumps({"api": {"token": TOKEN, **api}, "storage": {"path": "logs/system.db"}})
    )


@pytest.fixture
async def peers() -> AsyncIterator[list[PingPongPeer]]:
    started = [PingPongPeer(values={"temperature": "21.5"}) for _ in range(3)]
    for p in started:
        await p.start()
    yield started
    for p in started:
        await p.stop()


@pytest.fixture
async def gateway(tmp_path: Path, peers: list[PingPongPeer]) -> AsyncIterator[Gateway]:
    write_connections(tmp_path, {"dev_a": peers[0].port, "dev_b": peers[1].port})
    write_service(tmp_path)
    gw = Gateway(tmp_path)
    await gw.start()
    await ApiServer(gw, port=0).start()
    try:
        for cid in ("dev_a", "dev_b"):
            await gw.manager.wait_for_state(cid, "connected", timeout=5)
        yield gw
    finally:
        await gw.stop()


def url_of(gw: Gateway) -> str:
    assert gw.api_address is not None
    host, port = gw.api_address
    return f"http://{host}:{port}"


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=url_of(gateway), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    ) as c:
        yield c


#: Waits a little shorter here than the kit's default.
eventually = functools.partial(_eventually, timeout=5.0)


async def test_health_needs_no_token_and_everything_else_does(gateway: Gateway) -> None:
    """Test that /api/health answers without a token and every schema route answers 401."""
    async with httpx.AsyncClient(base_url=url_of(gateway), timeout=5) as anon:
        health = await anon.get("/api/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert (await anon.get("/openapi.json")).status_code == 401
        assert (await anon.get("/docs")).status_code == 401
        assert (await anon.get("/metrics")).status_code == 401
        schema = (
            await anon.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
        ).json()
        checked = 0
        for path, methods in schema["paths"].items():
            concrete = re.sub(r"\{[^}]+\}", "dev_a", path).replace("dev_a/dev_a", "dev_a/stop")
            for method in methods:
                for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
                    response = await anon.request(method.upper(), concrete, headers=headers)
                    if path == "/api/health":
                        assert response.status_code == 200
                    else:
                        assert response.status_code == 401, (method, path, response.text)
                        assert response.headers["www-authenticate"] == "Bearer"
                checked += 1
        assert checked >= 10


async def test_connections_list_and_one(client: httpx.AsyncClient) -> None:
    """Test that the API lists every connection with its explainable status."""
    listing = (await client.get("/api/connections")).json()["connections"]
    assert {c["connection_id"] for c in listing} == {"dev_a", "dev_b"}
    assert all(c["status"] == "connected" for c in listing)
    one = await client.get("/api/connections/dev_a")
    assert one.status_code == 200
    assert one.json()["desired"] == "running"
    missing = await client.get("/api/connections/nope")
    assert missing.status_code == 404
    assert "nope" in missing.json()["detail"]


async def test_admin_actions(client: httpx.AsyncClient, gateway: Gateway) -> None:
    """Test stop, start, kill, restart, reconnect and a bad action through the API."""
    stopped = (await client.post("/api/admin/instances/dev_a/stop")).json()
    assert stopped["status"] == "disconnected"
    assert stopped["reason"] == "admin_stop"
    assert stopped["desired"] == "stopped"
    await client.post("/api/admin/instances/dev_a/start")
    await gateway.manager.wait_for_state("dev_a", "connected", timeout=5)
    killed = (await client.post("/api/admin/instances/dev_a/kill")).json()
    assert killed["reason"] == "killed"
    await client.post("/api/admin/instances/dev_a/restart")
    await gateway.manager.wait_for_state("dev_a", "connected", timeout=5)
    reconnects = gateway.manager.get_status("dev_a")["stats"]["reconnects"]
    assert (await client.post("/api/admin/instances/dev_a/reconnect")).status_code == 200
    await eventually(
        lambda: gateway.manager.get_status("dev_a")["stats"]["reconnects"] > reconnects
    )
    bad = await client.post("/api/admin/instances/dev_a/explode")
    assert bad.status_code == 422
    assert "action" in json.dumps(bad.json()["detail"])
    unknown = await client.post("/api/admin/instances/ghost/stop")
    assert unknown.status_code == 404


async def test_panic_closes_every_device_link_and_recover_restores(
    client: httpx.AsyncClient, gateway: Gateway, peers: list[PingPongPeer]
) -> None:
    """Test that panic leaves zero device connections open, blocks starts, and recover restores."""
    assert peers[0].connections == 1 and peers[1].connections == 1
    info = (await client.post("/api/admin/panic", json={"reason": "smoke in hall 2"})).json()
    assert info["reason"] == "smoke in hall 2"
    assert info["stopped"] == 2
    await eventually(lambda: peers[0].connections == 0 and peers[1].connections == 0)
    statuses = (await client.get("/api/connections")).json()["connections"]
    assert {c["reason"] for c in statuses} == {"panic"}
    assert (await client.get("/api/health")).json()["status"] == "panic"
    refused = await client.post("/api/admin/instances/dev_a/start")
    assert refused.status_code == 409
    assert peers[0].connections == 0
    recovered = (await client.post("/api/admin/recover")).json()
    assert recovered["recovered"] is True
    assert recovered["started"] == 2
    for cid in ("dev_a", "dev_b"):
        await gateway.manager.wait_for_state(cid, "connected", timeout=5)
    assert (await client.get("/api/health")).json()["status"] == "ok"
    panic_events = (await client.get("/api/events", params={"type": "panic"})).json()["events"]
    assert panic_events and panic_events[0]["data"]["reason"] == "smoke in hall 2"


async def test_events_are_kept_in_sqlite_and_paged(
    client: httpx.AsyncClient, gateway: Gateway, tmp_path: Path
) -> None:
    """Test that events land in the SQLite log and page newest first."""
    await client.post("/api/admin/instances/dev_b/restart")
    await gateway.manager.wait_for_state("dev_b", "connected", timeout=5)
    first = (await client.get("/api/events", params={"connection_id": "dev_b", "limit": 2})).json()
    assert len(first["events"]) == 2
    assert first["events"][0]["id"] > first["events"][1]["id"]
    assert all(e["connection_id"] == "dev_b" for e in first["events"])
    nxt = (
        await client.get(
            "/api/events",
            params={"connection_id": "dev_b", "limit": 2, "before_id": first["next_before_id"]},
        )
    ).json()
    assert nxt["events"] and nxt["events"][0]["id"] < first["events"][-1]["id"]
    connected = (await client.get("/api/events", params={"type": "connected"})).json()["events"]
    assert {e["connection_id"] for e in connected} >= {"dev_a", "dev_b"}
    assert (tmp_path / "logs" / "system.db").exists()
    bad = await client.get("/api/events", params={"limit": 5000})
    assert bad.status_code == 422


async def test_metrics(client: httpx.AsyncClient, gateway: Gateway) -> None:
    """Test that /metrics shows states, health latency and API requests."""
    await asyncio.sleep(0.5)  # a few health checks at 0.2 s
    text = (await client.get("/metrics")).text
    assert 'edgelink_connections{state="connected"} 2.0' in text
    assert 'edgelink_connection_up{connection_id="dev_a"} 1.0' in text
    count = re.search(r"^edgelink_health_check_seconds_count (\S+)$", text, re.M)
    assert count is not None and float(count.group(1)) >= 2
    assert (
        'edgelink_api_requests_total{method="GET",route="/metrics",status="200"}'
        in (await client.get("/metrics")).text
    )
    assert "edgelink_panic 0.0" in text
    lag = re.search(r"^edgelink_loop_lag_seconds_count (\S+)$", text, re.M)
    assert lag is not None and float(lag.group(1)) >= 1  # sampled every 0.25 s
    assert 'edgelink_loop_lag_seconds_bucket{le="+Inf"}' in text
    assert "edgelink_loop_stalls_total" in text
    runtime = (await client.get("/api/service")).json()["runtime"]
    assert runtime["loop_lag"]["samples"] >= 1
    assert runtime["gc"]["policy"] == "fleet"  # the service runs with the fleet gc policy


async def test_bad_reload_keeps_running_config_and_good_reload_touches_only_changes(
    client: httpx.AsyncClient, gateway: Gateway, tmp_path: Path, peers: list[PingPongPeer]
) -> None:
    """Test that a bad connections.json changes nothing and a good one adds only what is new."""
    before = gateway.manager.get_status("dev_a")["connected_at"]
    (tmp_path / "connections.json").write_text('{"connections": {"dev_a": {"type": "tcp",')
    report = (await client.post("/api/admin/reload")).json()
    assert report["connections"]["ok"] is False
    service = (await client.get("/api/service")).json()
    assert "connections.json" in service["config_errors"]["connections"]
    assert len(gateway.manager) == 2
    errors = (await client.get("/api/events", params={"type": "config_error"})).json()["events"]
    assert errors and errors[0]["level"] == "error"
    write_connections(
        tmp_path, {"dev_a": peers[0].port, "dev_b": peers[1].port, "dev_c": peers[2].port}
    )
    report = (await client.post("/api/admin/reload")).json()
    # The folder watch may have applied the file first (then this reload finds
    # nothing new): either way dev_c was added and nothing else touched.
    added = report["connections"].pop("added")
    assert added in (["dev_c"], [])
    assert report["connections"] == {"ok": True, "removed": [], "changed": []}
    await gateway.manager.wait_for_state("dev_c", "connected", timeout=5)
    assert gateway.manager.get_status("dev_a")["connected_at"] == before
    assert (await client.get("/api/service")).json()["config_errors"] == {}


async def test_folder_watch_reloads_on_file_change(
    gateway: Gateway, tmp_path: Path, peers: list[PingPongPeer]
) -> None:
    """Test that writing connections.json into the watched folder applies it."""
    write_connections(tmp_path, {"dev_a": peers[0].port})
    await eventually(lambda: "dev_b" not in gateway.manager, timeout=10)
    assert peers[1].connections == 0 or await eventually(lambda: peers[1].connections == 0)
    assert gateway.manager.get_state("dev_a") == "connected"


async def test_stream_sends_events_and_datapoints(gateway: Gateway) -> None:
    """Test that the WebSocket stream delivers events and matching datapoints, with the token."""
    host, port = gateway.api_address or ("", 0)
    uri = f"ws://{host}:{port}/api/stream?token={TOKEN}&events=disconnected&data=dev_a.*"
    async with websockets.connect(uri) as ws:
        hello = json.loads(await ws.recv())
        assert hello == {
            "type": "hello",
            "events": ["disconnected"],
            "data": ["dev_a.*"],
            "rate": 500.0,
        }
        gateway.manager.get_connection("dev_a").report_data("temperature", 22.0)  # type: ignore[union-attr]
        gateway.manager.get_connection("dev_b").report_data("temperature", 99.0)  # type: ignore[union-attr]
        data = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert data["type"] == "data"
        assert data["address"] == "dev_a.temperature"
        assert data["value"] == 22.0
        await gateway.manager.stop_connection("dev_b")
        event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert event["type"] == "event"
        assert event["event"] == "EVENT_DISCONNECTED"
        assert event["event_type"] == "disconnected"
        assert event["connection_id"] == "dev_b"
        await ws.send(json.dumps({"events": ["bogus"]}))
        error = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert error["type"] == "error" and "bogus" in error["error"]


async def test_stream_refuses_a_wrong_token(gateway: Gateway) -> None:
    """Test that the stream handshake fails without the right token."""
    host, port = gateway.api_address or ("", 0)
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        async with websockets.connect(f"ws://{host}:{port}/api/nodered/stream?token=nope"):
            pass
    assert info.value.response.status_code == 403


async def test_generated_token_file_is_private(tmp_path: Path, peers: list[PingPongPeer]) -> None:
    """Test that without a configured token one is generated into a 0600 file and reused."""
    write_connections(tmp_path, {"dev_a": peers[0].port})
    os.environ.pop("EDGELINK_TOKEN", None)
    gw = Gateway(tmp_path, watch=False)
    await gw.start()
    try:
        token_file = tmp_path / ".edgelink_token"
        assert gw.token_origin == "generated"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token_file.read_text().strip() == gw.token
        assert len(gw.token) >= 32
    finally:
        await gw.stop()
    again = Gateway(tmp_path, watch=False)
    await again.start()
    try:
        assert again.token_origin == "file"
        assert again.token == gw.token
    finally:
        await again.stop()


async def test_bad_service_config_names_file_and_path(
    tmp_path: Path, peers: list[PingPongPeer]
) -> None:
    """Test that a bad edgelink.json is a ConfigError with the file and the JSON path."""
    write_connections(tmp_path, {"dev_a": peers[0].port})
    (tmp_path / "edgelink.json").write_text(json.dumps({"api": {"port": "eighty"}}))
    with pytest.raises(ConfigError) as info:
        await Gateway(tmp_path, watch=False).start()
    assert info.value.path == "api.port"
    assert str(tmp_path / "edgelink.json") in str(info.value)
    (tmp_path / "edgelink.json").write_text(json.dumps({"api": {"token": "short"}}))
    with pytest.raises(ConfigError, match="too short"):
        await Gateway(tmp_path, watch=False).start()


async def test_stream_rate_limit_drops_and_reports(
    tmp_path: Path, peers: list[PingPongPeer]
) -> None:
    """Test that a stream client over its rate gets a dropped count, and the gateway goes on."""
    write_connections(tmp_path, {"dev_a": peers[0].port})
    write_service(tmp_path, stream_rate=20)
    gw = Gateway(tmp_path, watch=False)
    await gw.start()
    await ApiServer(gw, port=0).start()
    try:
        host, port = gw.api_address or ("", 0)
        uri = f"ws://{host}:{port}/api/stream?token={TOKEN}&events=none&data=calc.**"
        async with websockets.connect(uri) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            for i in range(500):
                gw.manager.router.route_data("calc", "flood", i)
            kinds: dict[str, int] = {}
            async with asyncio.timeout(5):
                while "dropped" not in kinds:
                    message = json.loads(await ws.recv())
                    kinds[message["type"]] = kinds.get(message["type"], 0) + 1
                    if message["type"] == "dropped":
                        assert message["count"] >= 400
            assert kinds["data"] <= 25  # the bucket holds one second's worth
        assert gw.manager.router.data.get("calc.flood").value == 499  # type: ignore[union-attr]
    finally:
        await gw.stop()


async def test_bad_bodies_are_422_with_the_field(client: httpx.AsyncClient) -> None:
    """Test that an invalid request body is refused with 422 naming the field."""
    response = await client.post("/api/admin/panic", json={"reason": "x" * 1000})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "reason"]
    response = await client.put(
        "/api/routes", content=b"not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_logged_exceptions_reach_the_event_log_with_their_trace(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    """Test that an exception logged anywhere in edgelink is kept in SQLite with its stack."""
    import logging

    def failing_listener(*_: Any) -> None:
        raise ZeroDivisionError("listener bug")

    off = gateway.manager.on_data(failing_listener)
    try:
        gateway.manager.get_connection("dev_a").report_data("temperature", 1.0)  # type: ignore[union-attr]
        await asyncio.sleep(0)
    finally:
        off()
    logging.getLogger("edgelink.test").error("from a thread", exc_info=ValueError("x"))
    rows = (await client.get("/api/events", params={"type": "exception"})).json()["events"]
    assert any("ZeroDivisionError: listener bug" in (r["traceback"] or "") for r in rows)
    assert all(r["level"] == "error" for r in rows)


async def test_stopped_and_panicked_values_are_stale_in_the_api_and_the_stream(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    """Test that stop and panic mark last values stale, seen by the data API and the stream."""
    host, port = gateway.api_address or ("", 0)
    uri = f"ws://{host}:{port}/api/stream?token={TOKEN}&events=none&data=dev_a.*"
    async with websockets.connect(uri) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        for cid in ("dev_a", "dev_b"):
            gateway.manager.get_connection(cid).report_data("temperature", 22.0)  # type: ignore[union-attr]
        good = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (good["quality"], good["value"]) == ("good", 22.0)
        assert "reason" not in good
        await client.post("/api/admin/instances/dev_a/stop")
        stale = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (stale["address"], stale["value"], stale["quality"]) == (
            "dev_a.temperature",
            22.0,
            "stale",
        )
        assert stale["reason"] == "admin_stop" and stale["since"] >= stale["ts"]
    point = (await client.get("/api/data/point", params={"address": "dev_a.temperature"})).json()
    assert (point["value"], point["quality"], point["reason"]) == (22.0, "stale", "admin_stop")
    await client.post("/api/admin/panic", json={"reason": "drill"})
    point = (await client.get("/api/data/point", params={"address": "dev_b.temperature"})).json()
    assert (point["quality"], point["reason"]) == ("stale", "panic")
    metrics = (await client.get("/metrics")).text
    assert "edgelink_datapoints_stale_marked_total 2.0" in metrics
    await client.post("/api/admin/recover")


async def test_admin_instances_give_the_seed_dict_and_process_totals(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    """Test GET /api/admin/instances: per connection the seed's keys, CPU measured, memory null."""
    await eventually(lambda: all(c["stats"]["packets_received"] > 0 for c in gateway.connections()))

    async def measured() -> bool:
        # Accounts are sampled (one handle in four timed): a few handles in,
        # a connection may not have been drawn yet.
        body = (await client.get("/api/admin/instances")).json()
        return all(i["cpu_seconds"] > 0 for i in body["instances"])

    await eventually(measured)
    first = (await client.get("/api/admin/instances")).json()
    body = (await client.get("/api/admin/instances")).json()
    seed = {
        "cpu_percent",
        "memory_mb",
        "memory_percent",
        "disk_io_read_mb",
        "disk_io_write_mb",
        "network_packets_sent",
        "network_packets_recv",
        "uptime_seconds",
        "error_count",
        "last_error",
    }
    by_id = {i["connection_id"]: i for i in body["instances"]}
    assert set(by_id) == {"dev_a", "dev_b"}
    for cid, figures in by_id.items():
        assert seed <= set(figures)
        assert figures["isolation"] == "in_process"
        for key in ("memory_mb", "memory_percent", "disk_io_read_mb", "disk_io_write_mb"):
            assert figures[key] is None, (cid, key)
        # The event loop's time in this connection's own code (edgelink.cpuaccount).
        assert figures["cpu_seconds"] > 0, cid
        assert figures["cpu_percent"] is None or 0 <= figures["cpu_percent"] < 100
        status = gateway.connection(cid)
        assert 0 < figures["network_packets_recv"] <= status["stats"]["packets_received"]
        assert figures["error_count"] == status["stats"]["errors"]
        assert figures["uptime_seconds"] >= 0
    process = body["process"]
    assert process["pid"] == os.getpid()
    assert process["memory_mb"] > 1
    assert first["process"]["cpu_percent"] is None or first["process"]["cpu_percent"] >= 0
    assert process["cpu_percent"] is not None and process["cpu_percent"] >= 0
    assert process["cpu_accounting"] == "event_loop"
    assert process["network_packets_recv"] == sum(
        i["network_packets_recv"] for i in body["instances"]
    )
    async with httpx.AsyncClient(base_url=url_of(gateway), timeout=5) as anon:
        assert (await anon.get("/api/admin/instances")).status_code == 401


async def test_a_second_stop_waits_for_the_first(tmp_path: Path, peers: list[PingPongPeer]) -> None:
    """Test that stop() during a stop returns only once the first is done (SIGTERM twice)."""
    write_connections(tmp_path, {"dev_a": peers[0].port})
    write_service(tmp_path)
    gw = Gateway(tmp_path, watch=False)
    await gw.start()
    closed = asyncio.Event()

    async def slow_close() -> None:
        await asyncio.sleep(0.2)
        closed.set()

    gw.stop_with(slow_close)
    first = asyncio.create_task(gw.stop())
    await asyncio.sleep(0.01)
    await gw.stop()
    assert closed.is_set()
    await first
