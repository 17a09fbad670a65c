"""Batched poll reads (`Connection.read_many`) and config-time tag checks (`check_tag`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from devices import BatchDevice

from conftest import Recorder, tcp
from edgelink import ConfigError, ConnectionManager
from edgelink.testing.peers import PingPongPeer

Make = Callable[..., ConnectionManager]


async def test_batched_driver_polls_a_group_in_one_call(
    make_manager: Make, peer: PingPongPeer
) -> None:
    """Test that a driver with read_many gets one call per round and a refused tag goes bad alone."""
    m = make_manager(health_check_interval=60)
    m.register_connection_type("batch", BatchDevice)
    got: list[tuple[str, Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, value, quality)))
    rec = Recorder(m)
    conn = m.add_connection(
        "dev",
        "batch",
        tcp(peer.port),
        poll=[{"tags": ["temperature", "missing", "power"], "interval": 0.05}],
    )
    assert isinstance(conn, BatchDevice)
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        async with asyncio.timeout(5):
            while len(conn.batches) < 3:
                await asyncio.sleep(0.01)
        assert m.get_state("dev") == "connected"
    assert set(conn.batches) == {("temperature", "missing", "power")}
    assert ("temperature", "21.5", "good") in got and ("power", "230", "good") in got
    assert ("missing", None, "bad") in got
    failed = await rec.of("error")
    assert failed and all(e.data["tag"] == "missing" for e in failed)


async def test_batched_link_error_marks_the_group_stale_and_reconnects(
    make_manager: Make, peer: PingPongPeer
) -> None:
    """Test that a batch that breaks the link marks every tag stale (not bad) until it is back."""
    m = make_manager(health_check_interval=60, reconnect_initial_delay=0.01)
    m.register_connection_type("batch", BatchDevice)
    got: list[tuple[str, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, quality)))
    m.add_connection(
        "dev", "batch", tcp(peer.port), poll=[{"tags": ["temperature", "power"], "interval": 0.05}]
    )
    space = m.router.data

    def quality(tag: str) -> str | None:
        dp = space.get(f"dev.{tag}")
        return None if dp is None else dp.quality

    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        async with asyncio.timeout(5):
            while quality("power") != "good":
                await asyncio.sleep(0.01)
        peer.response_delay = 1.0  # longer than request_timeout (0.5 s): the batch times out
        await m.wait_for_state("dev", "reconnecting", timeout=5)
        assert (quality("temperature"), quality("power")) == ("stale", "stale")
        assert space.get("dev.power").value == "230"  # type: ignore[union-attr]
        peer.response_delay = 0.0
        await m.wait_for_state("dev", "connected", timeout=5)
        async with asyncio.timeout(5):
            while quality("power") != "good" or quality("temperature") != "good":
                await asyncio.sleep(0.01)
    assert ("temperature", "bad") not in got and ("power", "bad") not in got


@pytest.mark.parametrize(
    ("poll", "watch", "path"),
    [
        ([{"tags": ["temperature", "bad_tag"], "interval": 1}], [], "poll[0].tags[1]"),
        ([], [{"tag": "bad_power", "below": 1}], "watch[0].tag"),
    ],
)
def test_check_tag_fails_at_config_time(
    poll: list[dict[str, Any]], watch: list[dict[str, Any]], path: str
) -> None:
    """Test that a tag the driver refuses is a ConfigError naming its path, before anything runs."""
    m = ConnectionManager()
    m.register_connection_type("batch", BatchDevice)
    with pytest.raises(ConfigError) as info:
        m.add_connection("dev", "batch", tcp(1), poll=poll, watch=watch)
    assert info.value.path == f"connections.dev.{path}"
    assert "bad_" in info.value.message
    assert "dev" not in m


async def test_default_read_many_maps_refused_tags_to_their_error(peer: PingPongPeer) -> None:
    """Test that Connection.read_many reads tag by tag and keeps a refused tag's DeviceError."""
    from edgelink import DeviceError
    from edgelink.drivers.tcp import TcpConnection

    conn = TcpConnection("dev", tcp(peer.port))
    await conn.connect()
    try:
        results = await conn.read_many(["temperature", "missing"])
    finally:
        await conn.disconnect()
    assert results["temperature"] == "21.5"
    assert isinstance(results["missing"], DeviceError)
