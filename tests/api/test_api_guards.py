"""Tests of the API's guards (issue 8), against a real gateway.

Body limit, query ranges, routes key, stream frames and origin, panic/recover
with admin stops, reconnect, and the audit trail. All against a real gateway (uvicorn on a free loopback port, real device peers).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from edgelink.api.server import ApiServer
from edgelink.service.audit import token_identity
from edgelink.service.gateway import Gateway
from edgelink.store import Database
from edgelink.store.audit import AuditLog
from edgelink.testing import eventually as _eventually
from edgelink.testing.peers import PingPongPeer

TOKEN = "guards-test-token-0123456789abcdef"
LIMIT = 4096
FAST = {
    "connect_timeout": 0.5,
    "health_check_timeout": 0.3,
    "health_check_interval": 0.5,
    "reconnect_initial_delay": 0.05,
    "reconnect_max_delay": 0.2,
    "reconnect_jitter": 0.0,
}
ROUTES = {"routes": [{"id": "copy", "from": "dev_a.temperature", "to": ["calc.copy"]}]}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with (
        PingPongPeer(values={"temperature": "21.5"}) as a,
        PingPongPeer(values={"temperature": "21.5"}) as b,
    ):
        conns = {
            cid: {"type": "tcp", "config": {"host": "127.0.0.1", "port": peer.port}}
            for cid, peer in (("dev_a", a), ("dev_b", b))
        }
        (tmp_path / "connections.json").write_text(
            json.dumps({"settings": FAST, "connections": conns})
        )
        (tmp_path / "routing.json").write_text(json.dumps(ROUTES))
        api = {
            "token": TOKEN,
            "max_body_bytes": LIMIT,
            "allowed_origins": ["https://ui.example"],
        }
        (tmp_path / "edgelink.json").write_text(json.dumps({"api": api}))
        gw = Gateway(tmp_path, watch=False)
        await gw.start()
        await ApiServer(gw, port=0).start()
        gw.peers = (a, b)  # type: ignore[attr-defined]
        try:
            for cid in ("dev_a", "dev_b"):
                await gw.manager.wait_for_state(cid, "connected", timeout=5)
            yield gw
        finally:
            await gw.stop()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    host, port = gateway.api_address or ("", 0)
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    ) as c:
        yield c


#: Waits a little shorter here than the kit's default.
eventually = functools.partial(_eventually, timeout=5.0)


def stream_uri(gateway: Gateway) -> str:
    host, port = gateway.api_address or ("", 0)
    return f"ws://{host}:{port}/api/stream?token={TOKEN}&events=none"


# ------------------------------------------------------------------ body limit


async def test_declared_body_over_the_limit_is_413_and_small_bodies_pass(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    """Test that a Content-Length over api.max_body_bytes is 413, counted, and routes stay."""
    big = json.dumps({"routes": [], "pad": "x" * (LIMIT * 4)})
    response = await client.put(
        "/api/routes", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["detail"]
    assert [r["id"] for r in gateway.manager.router.routes] == ["copy"]
    ok = await client.post("/api/routes/validate", json=ROUTES)
    assert ok.status_code == 200 and ok.json()["ok"] is True
    metrics = (await client.get("/metrics")).text
    assert 'status="413"' in metrics


async def test_chunked_body_is_cut_off_at_the_limit_without_reading_the_rest(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that a body without Content-Length is refused once it passes the limit.

    The client sends the headers and a little over the limit, then waits: the
    server answers 413 and closes although the body never ended.
    """
    host, port = gateway.api_address or ("", 0)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            (
                f"PUT /api/routes HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        chunk = b"[" * 1024
        for _ in range(LIMIT // 1024 + 2):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()  # until the server closes
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert [r["id"] for r in gateway.manager.router.routes] == ["copy"]
    assert not [r for r in caplog.records if r.exc_info]


# ---------------------------------------------------------------- query ranges


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/events", {"before_id": "1e30"}, "before_id"),
        ("/api/events", {"before_id": str(2**63)}, "before_id"),
        ("/api/events", {"since": "nan"}, "since"),
        ("/api/events", {"until": "inf"}, "until"),
        ("/api/events", {"since": "-1"}, "since"),
        ("/api/events", {"limit": "0"}, "limit"),
        ("/api/audit", {"before_id": "1e30"}, "before_id"),
        ("/api/audit", {"limit": "1001"}, "limit"),
    ],
)
async def test_numeric_query_parameters_out_of_range_are_422_with_the_field(
    client: httpx.AsyncClient, path: str, params: dict[str, str], field: str
) -> None:
    """Test that every numeric query parameter is range-checked (422 naming it, never 500)."""
    response = await client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", field]


# ------------------------------------------------------------------ routes key


async def test_put_routes_without_the_routes_key_is_refused(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    """Test that PUT {} deletes nothing (422 naming 'routes'); {"routes": []} empties the table."""
    response = await client.put("/api/routes", json={})
    assert response.status_code == 422
    assert response.json()["detail"]["path"] == "routes"
    assert [r["id"] for r in gateway.manager.router.routes] == ["copy"]
    checked = (await client.post("/api/routes/validate", json={"version": "1.0"})).json()
    assert checked["ok"] is False and checked["path"] == "routes"
    emptied = await client.put("/api/routes", json={"routes": []})
    assert emptied.status_code == 200
    assert gateway.manager.router.routes == []


# ---------------------------------------------------------------------- stream


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x00\x01binary", 1003),
        ("[" * 2000 + "]" * 2000, 1007),
        ("[" * 100_000 + "]" * 100_000, 1009),  # over api.max_body_bytes
        ('{"events": ' + "[" * 40 + "]" * 40 + "}", 1007),
        ("{not json", 1007),
    ],
)
async def test_stream_closes_on_binary_or_bad_json_without_a_traceback(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, frame: str | bytes, code: int
) -> None:
    """Test that binary closes with 1003, bad or deep JSON 1007, oversize 1009; nothing logged."""
    caplog.set_level(logging.DEBUG)
    async with websockets.connect(stream_uri(gateway), max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(frame)
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            async with asyncio.timeout(5):
                await ws.recv()
        assert ws.close_code == code
    await asyncio.sleep(0.05)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


async def test_stream_checks_the_origin(gateway: Gateway) -> None:
    """Test that a foreign Origin is refused (403); own, configured and absent ones pass."""
    host, port = gateway.api_address or ("", 0)
    uri = stream_uri(gateway)
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        async with websockets.connect(uri, origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403
    for origin in (f"http://{host}:{port}", "https://ui.example", None):
        async with websockets.connect(uri, origin=origin) as ws:  # type: ignore[arg-type]
            assert json.loads(await ws.recv())["type"] == "hello"


# ------------------------------------------------------------ panic, reconnect


async def test_recover_keeps_a_stop_given_during_panic(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    """Test that recover restarts what ran before the panic except what an admin stopped since."""
    peer_a, _ = gateway.peers  # type: ignore[attr-defined]
    assert (await client.post("/api/admin/panic")).status_code == 200
    stopped = await client.post("/api/admin/instances/dev_a/stop")
    assert stopped.status_code == 200
    recovered = (await client.post("/api/admin/recover")).json()
    assert recovered["started"] == 1
    assert recovered["kept_stopped"] == ["dev_a"]
    await gateway.manager.wait_for_state("dev_b", "connected", timeout=5)
    status = gateway.manager.get_status("dev_a")
    assert (status["desired"], status["status"]) == ("stopped", "disconnected")
    assert peer_a.connections == 0


async def test_reconnect_brings_a_stopped_link_back_and_is_409_in_panic(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    """Test that reconnect of a stopped connection starts it, and during panic says why not."""
    await client.post("/api/admin/instances/dev_a/disconnect")
    assert gateway.manager.get_status("dev_a")["desired"] == "stopped"
    answer = await client.post("/api/admin/instances/dev_a/reconnect")
    assert answer.status_code == 200
    assert answer.json()["done"] == "started"
    await gateway.manager.wait_for_state("dev_a", "connected", timeout=5)
    again = (await client.post("/api/admin/instances/dev_a/reconnect")).json()
    assert again["done"] == "reconnecting"
    await client.post("/api/admin/panic")
    refused = await client.post("/api/admin/instances/dev_a/reconnect")
    assert refused.status_code == 409
    assert "panic" in refused.json()["detail"]


# ----------------------------------------------------------------------- audit


async def test_admin_actions_are_audited_with_who_what_and_result(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    """Test one audit record per action, route change, panic and recover; filters and paging."""
    await client.post("/api/admin/instances/dev_a/stop")
    await client.post("/api/admin/instances/dev_a/start")
    await client.put("/api/routes", json={"routes": []})
    await client.put("/api/routes", json={})
    await client.post("/api/admin/panic", json={"reason": "drill"})
    await client.post("/api/admin/instances/dev_b/start")  # 409 in panic
    await client.post("/api/admin/instances/ghost/kill")  # 404
    await client.post("/api/admin/recover")
    rows = (await client.get("/api/audit")).json()["audit"]
    who = token_identity(TOKEN)
    assert {r["who"] for r in rows} == {who}
    assert (await client.get("/api/service")).json()["audit"] == {
        "written": len(rows),
        "write_errors": 0,
    }
    assert TOKEN not in json.dumps(rows)
    done = [(r["action"], r["target"], r["result"]) for r in reversed(rows)]
    assert done == [
        ("stop", "dev_a", "ok"),
        ("start", "dev_a", "ok"),
        ("routes_replace", "routing", "ok"),
        ("routes_replace", "routing", "error"),
        ("panic", None, "ok"),
        ("start", "dev_b", "error"),
        ("kill", "ghost", "error"),
        ("recover", None, "ok"),
    ]
    by_action = {(r["action"], r["target"]): r for r in rows}
    assert "panic" in by_action[("start", "dev_b")]["error"]
    assert by_action[("panic", None)]["params"] == {"reason": "drill", "stopped": 2}
    assert by_action[("recover", None)]["params"]["started"] == 2
    assert "'routes' is required" in rows[4]["error"]
    assert all(r["ts"] > 0 for r in rows)
    stops = (await client.get("/api/audit", params={"action": "stop"})).json()["audit"]
    assert [r["target"] for r in stops] == ["dev_a"]
    on_a = (await client.get("/api/audit", params={"target": "dev_a"})).json()["audit"]
    assert [r["action"] for r in on_a] == ["start", "stop"]
    page = (await client.get("/api/audit", params={"limit": 3})).json()
    rest = (await client.get("/api/audit", params={"before_id": page["next_before_id"]})).json()
    assert [r["id"] for r in page["audit"] + rest["audit"]] == [r["id"] for r in rows]


async def test_audit_retention_is_bounded_by_rows_and_age(tmp_path: Path) -> None:
    """Test that the audit table keeps at most max_rows and drops records past max_age_s."""
    now = [1000.0]
    db = Database(tmp_path / "audit.db")
    log = AuditLog(db, max_rows=3, max_age_s=100, clock=lambda: now[0])
    await log.start()
    try:
        for i in range(5):
            await log.record("user:alice", "stop", f"dev_{i}", {"password": "hunter2"}, "ok")
        rows = await log.query()
        assert [r["target"] for r in rows] == ["dev_4", "dev_3", "dev_2"]
        assert rows[0]["params"] == {"password": "***"}
        now[0] += 500
        await log.record("user:alice", "recover", None, {}, "ok")
        assert [r["action"] for r in await log.query()] == ["recover"]
    finally:
        await db.close()
