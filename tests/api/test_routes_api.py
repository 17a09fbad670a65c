"""Tests of the service's router parts: routing.json, the routes and data API, webhooks, panic."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgelink.api.server import ApiServer
from edgelink.errors import RouteError
from edgelink.service.gateway import Gateway
from edgelink.testing import eventually as _eventually
from edgelink.testing.peers import PingPongPeer

TOKEN = "routes-test-token-0123456789"
FAST = {
    "connect_timeout": 0.5,
    "health_check_timeout": 0.3,
    "health_check_interval": 0.5,
    "reconnect_initial_delay": 0.05,
    "reconnect_jitter": 0.0,
}
ROUTES = {
    "version": "1.0",
    "routes": [
        {
            "id": "hot",
            "from": "dev.temperature",
            "to": ["calc.temp_f", "webhook.alerts"],
            "condition": "value > 30",
            "transform": "scale(1.8) | offset(32)",
        }
    ],
}


class HookServer:
    """A real HTTP server on loopback that records POSTed JSON and can be told to fail."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length)
                self.requests += 1
                if self.status < 300:
                    self.bodies.append(json.loads(body))
                reason = "OK" if self.status < 300 else "Error"
                writer.write(
                    f"HTTP/1.1 {self.status} {reason}\r\ncontent-length: 0\r\n\r\n".encode()
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def hook() -> AsyncIterator[HookServer]:
    server = HookServer()
    server.port = await server.start()  # type: ignore[attr-defined]
    yield server
    await server.stop()


@pytest.fixture
async def gateway(tmp_path: Path, hook: HookServer) -> AsyncIterator[Gateway]:
    async with PingPongPeer(values={"temperature": "21.5"}) as peer:
        conns = {"dev": {"type": "tcp", "config": {"host": "127.0.0.1", "port": peer.port}}}
        (tmp_path / "connections.json").write_text(
            json.dumps({"settings": FAST, "connections": conns})
        )
        (tmp_path / "routing.json").write_text(json.dumps(ROUTES))
        url = f"http://127.0.0.1:{hook.port}/hook"  # type: ignore[attr-defined]
        (tmp_path / "edgelink.json").write_text(
            json.dumps(
                {
                    "api": {"token": TOKEN},
                    "webhooks": {
                        "alerts": {"url": url, "retries": 2, "timeout": 2, "retry_delay": 0.01}
                    },
                }
            )
        )
        gw = Gateway(tmp_path)
        await gw.start()
        await ApiServer(gw, port=0).start()
        try:
            await gw.manager.wait_for_state("dev", "connected", timeout=5)
            yield gw
        finally:
            await gw.stop()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    assert gateway.api_address is not None
    host, port = gateway.api_address
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    ) as c:
        yield c


#: Waits a little shorter here than the kit's default.
eventually = functools.partial(_eventually, timeout=5.0)


def report(gateway: Gateway, value: float) -> None:
    conn = gateway.manager.get_connection("dev")
    assert conn is not None
    conn.report_data("temperature", value)


async def test_route_with_condition_transform_reaches_data_space_and_webhook(
    gateway: Gateway, client: httpx.AsyncClient, hook: HookServer
) -> None:
    """Test that routing.json is loaded: condition, transform, virtual address and webhook."""
    report(gateway, 20.0)
    report(gateway, 35.0)
    await gateway.manager.router.drain()
    await eventually(lambda: hook.bodies)
    assert [b["value"] for b in hook.bodies] == [pytest.approx(95.0)]
    assert hook.bodies[0]["address"] == "dev.temperature"
    point = (await client.get("/api/data/point", params={"address": "calc.temp_f"})).json()
    assert point["value"] == pytest.approx(95.0)
    tree = (await client.get("/api/data/tree")).json()["children"]
    assert {"calc", "dev"} <= set(tree)
    history = (await client.get("/api/data/history", params={"address": "dev.temperature"})).json()
    assert [p["value"] for p in history["history"]][-2:] == [20.0, 35.0]
    assert (await client.get("/api/data/point", params={"address": "nope.x"})).status_code == 404
    routes = (await client.get("/api/routes")).json()
    stats = routes["routes"][0]["stats"]
    assert stats["matched"] >= 2 and stats["filtered"] >= 1 and stats["passed"] >= 1
    assert (await client.get("/api/routes/hot")).json()["id"] == "hot"
    assert (await client.get("/api/routes/missing")).status_code == 404
    metrics = (await client.get("/metrics")).text
    assert 'edgelink_route_passed_total{route="hot"}' in metrics


async def test_failing_webhook_retries_then_reports_and_never_blocks(
    gateway: Gateway, client: httpx.AsyncClient, hook: HookServer
) -> None:
    """Test that a failing webhook is retried, evented and does not stop the data space."""
    hook.status = 503
    report(gateway, 40.0)
    await gateway.manager.router.drain(timeout=15)
    assert hook.requests == 3  # the first try and two retries
    async with asyncio.timeout(5):
        while True:
            response = await client.get("/api/events", params={"type": "webhook_failed"})
            events = response.json()["events"]
            if events:
                break
            await asyncio.sleep(0.05)
    assert events[0]["data"]["webhook"] == "alerts"
    assert gateway.webhooks["alerts"].stats()["failed"] == 1
    assert gateway.manager.router.data.get("calc.temp_f") is not None


async def test_bad_routing_file_keeps_the_old_routes_and_shows_the_error(
    gateway: Gateway, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Test that a bad routing.json written to the folder leaves the old routes running."""
    bad = {
        "version": "1.0",
        "routes": [{"id": "x", "from": "dev.a", "to": "calc.b", "transform": "explode(1)"}],
    }
    (tmp_path / "routing.json").write_text(json.dumps(bad))
    service = await eventually(lambda: gateway.config_errors.get("routing"), timeout=10)
    assert "explode" in service and "routing.json" in service
    shown = (await client.get("/api/service")).json()["config_errors"]["routing"]
    assert "explode" in shown
    assert [r["id"] for r in gateway.manager.router.routes] == ["hot"]
    report(gateway, 50.0)
    await gateway.manager.router.drain()
    assert gateway.manager.router.data.get("calc.temp_f").value == pytest.approx(122.0)  # type: ignore[union-attr]


async def test_put_and_validate_routes(
    gateway: Gateway, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Test validating and replacing the route table through the API, persisted to the folder."""
    new = {
        "version": "1.0",
        "routes": [{"id": "copy", "from": "dev.temperature", "to": "calc.copy"}],
    }
    checked = (await client.post("/api/routes/validate", json=new)).json()
    assert checked == {"ok": True, "routes": 1}
    broken = {
        "version": "1.0",
        "routes": [{"id": "c", "from": "dev.t", "to": "calc.c", "condition": "value >"}],
    }
    verdict = (await client.post("/api/routes/validate", json=broken)).json()
    assert verdict["ok"] is False and "routes[0].condition" in verdict["path"]
    refused = await client.put("/api/routes", json=broken)
    assert refused.status_code == 422
    assert [r["id"] for r in gateway.manager.router.routes] == ["hot"]
    applied = (await client.put("/api/routes", json=new)).json()
    assert applied["ok"] is True and applied["added"] == ["copy"] and applied["removed"] == ["hot"]
    assert json.loads((tmp_path / "routing.json").read_text()) == new
    report(gateway, 12.0)
    await gateway.manager.router.drain()
    assert gateway.manager.router.data.get("calc.copy").value == 12.0  # type: ignore[union-attr]


async def test_try_a_route_on_a_sample_value_sends_nothing(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    """Test POST /api/routes/try: match, condition, value, targets; errors with the position.

    The live table and the data space stay untouched.
    """
    route = {
        "id": "f",
        "from": "dev.*",
        "to": "calc.{1}_f",
        "condition": "value > 20",
        "transform": "scale(1.8) | offset(32) | round(1)",
    }
    before = len(gateway.manager.router.data)
    hot = (
        await client.post("/api/routes/try", json={"route": route, "address": "dev.t", "value": 50})
    ).json()
    assert hot == {
        "matches": True,
        "condition": True,
        "passed": True,
        "value": 122.0,
        "dropped": False,
        "targets": ["calc.t_f"],
        "error": None,
    }
    cold = (
        await client.post("/api/routes/try", json={"route": route, "address": "dev.t", "value": 5})
    ).json()
    assert (cold["condition"], cold["passed"], cold["value"]) == (False, False, None)
    other = (
        await client.post("/api/routes/try", json={"route": route, "address": "x.t", "value": 50})
    ).json()
    assert other["matches"] is False
    text = (
        await client.post(
            "/api/routes/try", json={"route": route, "address": "dev.t", "value": "hot"}
        )
    ).json()
    assert text["passed"] is False and text["error"]
    bad = await client.post(
        "/api/routes/try", json={"route": {**route, "condition": "value > > 3"}, "address": "dev.t"}
    )
    assert bad.status_code == 422
    detail = bad.json()["detail"]
    assert detail["path"] == "routes[0].condition" and "position 9" in detail["error"]
    missing = await client.post("/api/routes/try", json={"route": {"id": "x"}, "address": "dev.t"})
    assert missing.status_code == 422 and "from" in missing.json()["detail"]["path"]
    assert [r["id"] for r in gateway.manager.router.routes] == ["hot"]
    assert len(gateway.manager.router.data) == before


async def test_panic_pauses_the_router(gateway: Gateway, client: httpx.AsyncClient) -> None:
    """Test that panic stops the data flow until recover."""
    await client.post("/api/admin/panic")
    assert gateway.manager.router.route_data("calc", "x", 1) is False
    assert gateway.manager.router.stats()["paused"] is True
    await client.post("/api/admin/recover")
    assert gateway.manager.router.route_data("calc", "x", 2) is True


async def test_bad_routing_at_start_is_refused(tmp_path: Path) -> None:
    """Test that a gateway with a bad routing.json does not start, and says where."""
    (tmp_path / "connections.json").write_text(json.dumps({"connections": {}}))
    (tmp_path / "routing.json").write_text(json.dumps({"version": "1.0", "routes": [{"id": "a"}]}))
    with pytest.raises(RouteError) as info:
        await Gateway(tmp_path, watch=False).start()
    assert "routing.json" in str(info.value)
