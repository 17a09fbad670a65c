"""Planted secrets never leave ``edgelink run``: not on stdout/stderr, SQLite, the API, metrics or the stream."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from edgelink.sim.http import HttpDevice, HttpSimulator
from edgelink.testing import eventually

TOKEN = "Tk-planted-admin-token-5531"
SECRETS = {
    "userinfo user": "plantedUser7",
    "userinfo password": "Pw-planted-userinfo-9931",
    "api_key": "Ak-planted-apikey-4412",
    "wrong api_key": "Wk-planted-wrongkey-1187",
    "header value": "Hv-planted-header-3370",
    "cookie value": "Ck-planted-cookie-2209",
    "down password": "Dp-planted-down-6654",
    "webhook query token": "Qt-planted-query-8812",
    "webhook header": "Wh-planted-hookhdr-4401",
    "webhook api_key": "Wa-planted-hookkey-7730",
    "sink query token": "Sq-planted-sinkq-5190",
    "reload password": "Rp-planted-reload-3318",
    "admin token": TOKEN,
}
S = SECRETS
FAST = {
    "connect_timeout": 0.5,
    "health_check_timeout": 0.5,
    "health_check_interval": 0.3,
    "reconnect_initial_delay": 0.05,
    "reconnect_max_delay": 0.3,
    "reconnect_jitter": 0.0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connections(sim_port: int, refused: int, *, extra: dict[str, Any] | None = None) -> str:
    base = f"http://{S['userinfo user']}:{S['userinfo password']}@127.0.0.1:{sim_port}"
    conns = {
        "meter": {
            "type": "http",
            "config": {
                "base_url": base,
                "api_key": S["api_key"],
                "headers": {
                    "X-Custom-Token": S["header value"],
                    "Cookie": f"session={S['cookie value']}",
                },
            },
            "poll": [{"tags": ["/status#/power/ac"], "interval": 0.2}],
        },
        "meter_badkey": {
            "type": "http",
            "config": {"base_url": base, "api_key": S["wrong api_key"]},
        },
        "meter_down": {
            "type": "http",
            "config": {"base_url": f"http://admin:{S['down password']}@127.0.0.1:{refused}/api"},
        },
        **(extra or {}),
    }
    return json.dumps({"settings": FAST, "connections": conns})


@pytest.mark.parametrize("levels", [[], ["--log-level", "DEBUG", "--log-level-libs", "DEBUG"]])
async def test_no_planted_secret_reaches_any_output(tmp_path: Path, levels: list[str]) -> None:
    """Test that URL userinfo, keys, headers, query tokens and the admin token appear in no output channel."""
    refused = free_port()
    device = HttpDevice(api_key=S["api_key"])
    with HttpSimulator(device) as sim:
        folder = tmp_path / "config"
        folder.mkdir()
        (folder / "connections.json").write_text(connections(sim.port, refused))
        (folder / "routing.json").write_text(
            json.dumps(
                {
                    "version": "1.0",
                    "routes": [
                        {"id": "out", "from": "meter.*", "to": ["webhook.down", "webhook.sink"]}
                    ],
                }
            )
        )
        hook = f"http://127.0.0.1:{refused}/hook?token={S['webhook query token']}&n=1"
        sink = f"http://127.0.0.1:{sim.port}/values/hooked?access_token={S['sink query token']}"
        (folder / "edgelink.json").write_text(
            json.dumps(
                {
                    "api": {"token": TOKEN},
                    "storage": {"path": str(tmp_path / "system.db")},
                    "webhooks": {
                        "down": {
                            "url": hook,
                            "headers": {"X-Api-Key": S["webhook header"]},
                            "api_key": S["webhook api_key"],
                            "retries": 0,
                            "timeout": 0.5,
                        },
                        "sink": {"url": sink, "api_key": S["api_key"], "retries": 0},
                    },
                }
            )
        )
        out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            # By default, and with everything at DEBUG (libraries too): the filter must hold even then.
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edgelink.cli",
                "run",
                "--config",
                str(folder),
                "--port",
                "0",
                "--no-watch",
                *levels,
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONASYNCIODEBUG": "0"},
            )
        channels: dict[str, str] = {}
        try:
            line = await eventually(
                lambda: re.search(r"API on (http://\S+)", out_path.read_text()), 15
            )
            url = line.group(1)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            host_port = url.removeprefix("http://")
            async with (
                httpx.AsyncClient(base_url=url, headers=headers, timeout=5) as api,
                websockets.connect(f"ws://{host_port}/api/stream?token={TOKEN}&data=**") as ws,
            ):
                stream: list[str] = []

                async def listen() -> None:
                    try:
                        async for message in ws:
                            stream.append(str(message))
                    except websockets.ConnectionClosed:
                        stream.append("(closed)")

                listener = asyncio.get_running_loop().create_task(listen())

                async def states() -> dict[str, dict[str, Any]]:
                    listing = (await api.get("/api/connections")).json()["connections"]
                    return {c["connection_id"]: c for c in listing}

                async def failed_and_flowing() -> bool:
                    st = await states()
                    return (
                        st["meter"]["status"] == "connected"
                        and st["meter"]["stats"]["packets_received"] >= 3
                        and st["meter_badkey"]["status"] == "error"
                        and st["meter_down"]["last_error"] is not None
                        and device.values.get("hooked") is not None
                    )

                await eventually(failed_and_flowing)
                # A bad reload (the URL is quoted in the error), then a good one.
                bad = {
                    "meter_ftp": {
                        "type": "http",
                        "config": {"base_url": f"ftp://admin:{S['reload password']}@127.0.0.1/x"},
                    }
                }
                (folder / "connections.json").write_text(connections(sim.port, refused, extra=bad))
                channels["reload (bad)"] = (await api.post("/api/admin/reload")).text
                (folder / "connections.json").write_text(connections(sim.port, refused))
                channels["reload (good)"] = (await api.post("/api/admin/reload")).text
                await eventually(lambda: len(stream) > 5)
                await asyncio.sleep(0.5)
                for path in (
                    "/api/service",
                    "/api/connections",
                    "/api/connections/meter",
                    "/api/connections/meter_badkey",
                    "/api/connections/meter_down",
                    "/api/events?limit=1000",
                    "/api/events?limit=1000&level=error",
                    "/api/routes",
                    "/api/bridge",
                    "/api/data/tree?prefix=meter",
                    "/metrics",
                    "/openapi.json",
                ):
                    response = await api.get(path)
                    assert response.status_code == 200, (path, response.text)
                    channels[path] = response.text
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
            channels["stream"] = "\n".join(stream)
            assert any('"type":"event"' in m.replace(" ", "") for m in stream)
            events = json.loads(channels["/api/events?limit=1000"])["events"]
            kinds = {e["type"] for e in events}
            assert {"config_error", "webhook_failed", "error"} <= kinds, kinds
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        channels["stdout"] = out_path.read_text()
        channels["stderr"] = err_path.read_text()
        # httpx logs every request at INFO: only when asked to (the default is WARNING).
        assert ("HTTP Request" in channels["stderr"]) is bool(levels)
        with sqlite3.connect(tmp_path / "system.db") as db:
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                rows = db.execute(f"SELECT * FROM {table}").fetchall()
                channels[f"sqlite {table}"] = "\n".join(map(repr, rows))
        # A config error is a user error: reported without a stack trace (the
        # redaction of stack traces is tested with the event log itself).
        assert "Traceback" not in channels["sqlite events"]
    leaks = [
        f"{what} ({secret}) in {channel}"
        for what, secret in SECRETS.items()
        for channel, text in channels.items()
        if secret in text
    ]
    assert not leaks, "\n".join(leaks)
