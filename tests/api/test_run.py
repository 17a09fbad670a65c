"""Tests of ``edgelink run`` as a real process: start, SIGHUP reload, SIGTERM shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import httpx

from edgelink.testing.peers import PingPongPeer

TOKEN = "run-test-token-0123456789abcdef"


async def read_line_matching(stream: asyncio.StreamReader, pattern: str, timeout: float) -> str:
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError(f"process ended before printing {pattern!r}")
            if re.search(pattern, line):
                return line


async def test_run_serves_reloads_on_sighup_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Test that edgelink run serves the API, reloads on SIGHUP, answers edgelink status, stops on SIGTERM."""
    async with PingPongPeer() as dev_a, PingPongPeer() as dev_b:
        settings = {"health_check_interval": 0.5, "reconnect_jitter": 0.0}
        conns = {"dev_a": {"type": "tcp", "config": {"host": "127.0.0.1", "port": dev_a.port}}}
        (tmp_path / "connections.json").write_text(
            json.dumps({"settings": settings, "connections": conns})
        )
        (tmp_path / "edgelink.json").write_text(json.dumps({"api": {"token": TOKEN}}))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgelink.cli",
            "run",
            "--config",
            str(tmp_path),
            "--port",
            "0",
            "--no-watch",
            "--log-level",
            "WARNING",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONASYNCIODEBUG": "0"},
        )
        try:
            assert proc.stdout is not None
            line = await read_line_matching(proc.stdout, r"API on http://", 15)
            url = re.search(r"(http://\S+)", line).group(1)  # type: ignore[union-attr]
            port = int(url.rsplit(":", 1)[1])
            headers = {"Authorization": f"Bearer {TOKEN}"}
            from edgelink.ui import is_available

            if is_available():
                ui_line = await read_line_matching(proc.stdout, r"web UI on http://", 5)
                assert f"web UI on {url}/ " in ui_line
                async with httpx.AsyncClient(timeout=5) as browser:
                    page = await browser.get(url + "/")
                    assert page.status_code == 303
                    assert page.headers["location"] == "/login"
                    login = await browser.get(url + "/login")
                    assert login.status_code == 200
                    assert "Token" in login.text
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=5) as client:
                async with asyncio.timeout(10):
                    while dev_a.connections == 0:
                        await asyncio.sleep(0.05)
                conns["dev_b"] = {
                    "type": "tcp",
                    "config": {"host": "127.0.0.1", "port": dev_b.port},
                }
                (tmp_path / "connections.json").write_text(
                    json.dumps({"settings": settings, "connections": conns})
                )
                proc.send_signal(signal.SIGHUP)
                async with asyncio.timeout(10):
                    while dev_b.connections == 0:
                        await asyncio.sleep(0.05)
                listing = (await client.get("/api/connections")).json()["connections"]
                assert {c["connection_id"] for c in listing} == {"dev_a", "dev_b"}
            status = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edgelink.cli",
                "status",
                "--url",
                url,
                "--token",
                TOKEN,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "COLUMNS": "160"},
            )
            out, err = await asyncio.wait_for(status.communicate(), 20)
            assert status.returncode == 0, err.decode()
            table = out.decode()
            assert re.search(r"dev_a\s.*tcp\s.*connected", table), table
            assert "dev_b" in table
            wrong = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edgelink.cli",
                "status",
                "--url",
                url,
                "--token",
                "nope",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(wrong.communicate(), 20)
            assert wrong.returncode == 1 and b"401" in err
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 10)
            elapsed = time.monotonic() - started
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert code == 0
        assert elapsed < 5.0
        async with asyncio.timeout(5):
            while dev_a.connections or dev_b.connections:
                await asyncio.sleep(0.05)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
