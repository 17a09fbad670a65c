"""The example device service over HTTP: uvicorn on uvloop, `edgelink sim zkteco` terminals."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import uvicorn

from edgelink.testing.postgres import PostgresServer

HERE = Path(__file__).parent
KEY = "1234"


def load_app(monkeypatch: pytest.MonkeyPatch, url: str) -> ModuleType:
    """Import app.py afresh with its database URL."""
    monkeypatch.setenv("DEVICES_DATABASE_URL", url)
    spec = importlib.util.spec_from_file_location("zkteco_service_app", HERE / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # FastAPI resolves the handlers' annotations through the module's entry here.
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The app's database: a SQLite file, or a fresh database on the suite's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'devices.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    yield server.create_database("zkteco_service_example")
    server.drop_database("zkteco_service_example")


@pytest.fixture
async def terminals() -> AsyncIterator[list[int]]:
    """Two `edgelink sim zkteco` processes with comm key 1234; their ports."""
    procs = []
    try:
        for users in (3, 5):  # both start at once; each takes a second to import
            procs.append(  # noqa: PERF401 - one await per process
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "edgelink.cli", "sim", "zkteco", "--port", "0",
                    "--password", KEY, "--users", str(users),
                    stdout=asyncio.subprocess.PIPE,
                )
            )  # fmt: skip
        ports = []
        for proc in procs:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            match = re.fullmatch(r"zkteco simulator on 127\.0\.0\.1:(\d+)\n", line)
            assert match, line
            ports.append(int(match.group(1)))
        yield ports
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()


class Uvicorn:
    """The app served by uvicorn on uvloop in a thread of its own, on a free port."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, loop="uvloop", ws="none", log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn")

    async def __aenter__(self) -> str:
        self.thread.start()
        async with asyncio.timeout(15):
            while not self.server.started:
                assert self.thread.is_alive(), "uvicorn ended during startup"
                await asyncio.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, 15)


async def test_device_service_app(
    monkeypatch: pytest.MonkeyPatch, database: str, terminals: list[int]
) -> None:
    """Test the example app: rows in, connections follow, info from the terminals, DI per call."""
    module = load_app(monkeypatch, database)
    door_port, gate_port = terminals
    async with Uvicorn(module.app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        door = {"name": "door", "ip_address": "127.0.0.1", "port": door_port, "com_password": KEY}
        gate = {**door, "name": "gate", "port": gate_port}
        r = await http.post("/devices", json=door)
        assert r.status_code == 201, r.text
        door_id = r.json()["id"]
        gate_id = (await http.post("/devices", json=gate)).json()["id"]
        bad = await http.post("/devices", json={**door, "com_password": "secret"})
        assert bad.status_code == 422
        assert "com_password" in bad.json()["detail"]

        infos = await asyncio.gather(*(http.get(f"/devices/{i}/info") for i in (door_id, gate_id)))
        assert [i.json()["users"] for i in infos] == [3, 5]
        listed = (await http.get("/devices")).json()
        assert [(d["name"], d["status"]) for d in listed] == [
            ("door", "connected"),
            ("gate", "connected"),
        ]
        assert "com_password" not in listed[0]
        gate_since = (await http.get(f"/devices/{gate_id}/status")).json()["connected_at"]

        r = await http.patch(f"/devices/{door_id}", json={"enabled": False})
        assert r.json()["status"] == "disconnected"
        assert (await http.get(f"/devices/{door_id}/info")).status_code == 503
        assert (await http.get(f"/devices/{gate_id}/status")).json()["connected_at"] == gate_since
        await http.patch(f"/devices/{door_id}", json={"enabled": True})
        assert re.match(r"20\d\d-", (await http.get(f"/devices/{door_id}/time")).json()["time"])

        r = await http.post(f"/devices/{gate_id}/disconnect")
        assert (r.json()["status"], r.json()["desired"]) == ("disconnected", "stopped")
        assert (await http.get(f"/devices/{gate_id}/info")).json()["users"] == 5
        assert (await http.post("/devices/sync")).json() == {
            "added": [], "changed": [], "removed": [], "errors": {}
        }  # fmt: skip
        assert (await http.delete(f"/devices/{gate_id}")).status_code == 204
        assert (await http.get(f"/devices/{gate_id}/status")).status_code == 404
        assert (await http.post("/devices/disconnect-all")).json() == {str(door_id): "disconnected"}


async def test_providers_without_the_lifespan_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that an app run without device_lifespan gets a clear error from the providers."""
    module = load_app(monkeypatch, "sqlite://")
    transport = httpx.ASGITransport(app=module.app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        with pytest.raises(RuntimeError, match=r"lifespan=device_lifespan"):
            await http.get("/devices")
