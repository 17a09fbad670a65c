"""Tests of the API server beside the gateway (`edgelink.api.server`), on loopback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest

from edgelink.api.server import ApiServer, serve
from edgelink.errors import ConfigError
from edgelink.service.gateway import Gateway, LogClosedError

TOKEN = "test-token-0123456789abcdef"


def write_folder(folder: Path) -> None:
    (folder / "connections.json").write_text(json.dumps({"connections": {}}))
    (folder / "edgelink.json").write_text(
        json.dumps({"api": {"token": TOKEN}, "storage": {"path": "logs/system.db"}})
    )


async def test_serve_sets_and_clears_the_gateway_api_address(tmp_path: Path) -> None:
    """Test that `serve` answers on its address, shows it in the status, and clears it on exit."""
    write_folder(tmp_path)
    gateway = Gateway(tmp_path, watch=False)
    await gateway.start()
    try:
        async with serve(gateway, port=0) as server:
            assert gateway.api_address == server.address
            async with httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
            ) as client:
                status = (await client.get("/api/service")).json()
            assert status["api"] == {"host": "127.0.0.1", "port": server.address[1]}  # type: ignore[index]
        assert gateway.api_address is None
        assert gateway.status()["api"] is None
    finally:
        await gateway.stop()


async def test_gateway_stop_closes_the_api_server(tmp_path: Path) -> None:
    """Test that the gateway's stop (SIGTERM) closes a server started beside it."""
    write_folder(tmp_path)
    gateway = Gateway(tmp_path, watch=False)
    await gateway.start()
    server = ApiServer(gateway, port=0)
    try:
        await server.start()
        host, port = server.address or ("", 0)
    finally:
        await gateway.stop()
    assert server.address is None
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, port), timeout=2):
        pass
    await server.stop()  # idempotent


async def test_a_taken_port_is_a_config_error_naming_api_port(tmp_path: Path) -> None:
    """Test that a port in use is refused with api.port and the file, and the gateway goes on."""
    write_folder(tmp_path)
    gateway = Gateway(tmp_path, watch=False)
    await gateway.start()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            with pytest.raises(ConfigError) as info:
                await ApiServer(gateway, port=taken.getsockname()[1]).start()
        assert info.value.path == "api.port"
        assert "cannot listen on 127.0.0.1:" in str(info.value)
        assert gateway.api_address is None
    finally:
        await gateway.stop()


async def test_logs_before_start_are_closed(tmp_path: Path) -> None:
    """Test that reading the event or audit log before start is LogClosedError (API: 503)."""
    gateway = Gateway(tmp_path, watch=False)
    with pytest.raises(LogClosedError, match="event log is not open"):
        await gateway.query_events(limit=1)
    with pytest.raises(LogClosedError, match="audit log is not open"):
        await gateway.query_audit(limit=1)
