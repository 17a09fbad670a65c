"""Truthful data quality: a lost or stopped link's values turn ``stale``, undecodable ones ``bad``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from conftest import Recorder, tcp
from edgelink import ConnectionManager
from edgelink.router import DataPoint, MemoryTarget
from edgelink.sim.http import HttpSimulator
from edgelink.sim.modbus import ModbusDevice, ModbusServer
from edgelink.testing import ManualClock
from edgelink.testing.fault_proxy import FaultProxy
from edgelink.testing.peers import PingPongPeer

Make = Callable[..., ConnectionManager]
NO_WATCHDOG = 1e9


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


def quality(m: ConnectionManager, address: str) -> str | None:
    dp = m.router.data.get(address)
    return None if dp is None else dp.quality


async def test_lost_link_marks_values_stale_once_and_fresh_data_makes_them_good(
    make_manager: Make, peer: PingPongPeer
) -> None:
    """Test that a killed link marks the last values stale once, routes stay quiet, data heals."""
    async with FaultProxy("127.0.0.1", peer.port) as proxy:
        m = make_manager(health_check_interval=60, reconnect_initial_delay=0.02)
        m.add_connection(
            "dev",
            "tcp",
            tcp(proxy.port),
            poll=[{"tags": ["temperature", "power"], "interval": 0.05}],
        )
        mirror = MemoryTarget()
        m.router.add_target("out", mirror)
        m.router.load_routes({"routes": [{"id": "copy", "from": "dev.*", "to": "out.{tag}"}]})
        seen: list[DataPoint] = []
        m.router.data.subscribe("dev.*", seen.append)
        rec = Recorder(m)
        async with m:
            await m.wait_for_state("dev", "connected", timeout=5)
            await until(lambda: quality(m, "dev.power") == "good")
            await m.router.drain()
            fired = m.router.route_stats("copy")["passed"]

            await proxy.stop_listening()  # reconnects are refused from now on
            await proxy.drop_all()
            await m.wait_for_state("dev", "reconnecting", timeout=5)
            await rec.wait_for("reconnect_failed", count=3)

            stale = m.router.data.get("dev.power")
            assert stale is not None
            assert (stale.value, stale.quality) == ("230", "stale")
            lost = await rec.of("disconnected")
            assert stale.as_dict()["reason"] == lost[0].data["reason"]
            assert stale.as_dict()["since"] >= stale.ts
            assert quality(m, "dev.temperature") == "stale"
            # Once per outage, however many attempts fail.
            marks = sorted(dp.address for dp in seen if dp.quality == "stale")
            assert marks == ["dev.power", "dev.temperature"]
            assert m.router.data.stale_marked == 2
            # A quality mark is not a measurement: no route fired for it.
            await m.router.drain()
            assert m.router.route_stats("copy")["passed"] == fired
            # The history keeps measurements: the mark replaced the last one.
            kept = [dp.quality for dp in m.router.data.history("dev.power")]
            assert kept == ["good"] * (len(kept) - 1) + ["stale"]

            await proxy.start_listening()
            await m.wait_for_state("dev", "connected", timeout=5)
            await until(lambda: quality(m, "dev.power") == quality(m, "dev.temperature") == "good")
            fresh = m.router.data.get("dev.power")
            assert fresh is not None and fresh.metadata is None


async def test_data_watchdog_marks_values_stale(
    make_manager: Make, peer: PingPongPeer, clock: ManualClock
) -> None:
    """Test that the data watchdog firing marks the connection's values stale with its reason."""
    m = make_manager(
        clock=clock,
        watchdog_interval=NO_WATCHDOG,
        health_check_interval=None,
        data_timeout=30,
        reconnect_initial_delay=60,
        reconnect_max_delay=60,
    )
    conn = m.add_connection("dev", "tcp", tcp(peer.port))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        conn.report_data("temperature", 21.0, ts=1_000.0)
        await until(lambda: quality(m, "dev.temperature") == "good")
        lost_at = clock.time() + 30
        await clock.advance(30.05)
        await m.wait_for_state("dev", "reconnecting", timeout=5)
        dp = m.router.data.get("dev.temperature")
        assert dp is not None
        assert (dp.value, dp.quality, dp.ts) == (21.0, "stale", 1_000.0)
        assert dp.as_dict()["reason"] == "data_timeout"
        assert dp.as_dict()["since"] >= lost_at


async def test_stop_connection_marks_values_stale_and_start_heals(
    make_manager: Make, peer: PingPongPeer
) -> None:
    """Test that stop_connection marks the values stale (admin_stop) and a new datapoint is good."""
    m = make_manager(health_check_interval=60)
    conn = m.add_connection("dev", "tcp", tcp(peer.port))
    async with m:
        await m.wait_for_state("dev", "connected", timeout=5)
        conn.report_data("temperature", 21.0)
        await until(lambda: quality(m, "dev.temperature") == "good")
        await m.stop_connection("dev")
        dp = m.router.data.get("dev.temperature")
        assert dp is not None and dp.quality == "stale"
        assert dp.as_dict()["reason"] == "admin_stop"
        await m.start_connection("dev")
        await m.wait_for_state("dev", "connected", timeout=5)
        assert quality(m, "dev.temperature") == "stale"  # nothing new measured yet
        conn.report_data("temperature", 22.0)
        await until(lambda: quality(m, "dev.temperature") == "good")
        await m.remove_connection("dev")
        dp = m.router.data.get("dev.temperature")
        assert dp is not None and (dp.value, dp.quality) == (22.0, "stale")
        assert dp.as_dict()["reason"] == "removed"


async def test_http_pointer_that_does_not_resolve_is_bad_once_with_its_reason(
    make_manager: Make,
) -> None:
    """Test that a JSON pointer with nothing there is reported bad once per transition."""
    reports: list[tuple[str, Any, str]] = []
    async with HttpSimulator() as sim:
        m = make_manager(health_check_interval=60)
        m.on_data(lambda cid, tag, value, q, ts: reports.append((tag, value, q)))
        rec = Recorder(m)
        m.add_connection(
            "inv",
            "http",
            {"base_url": sim.url},
            poll=[{"tags": ["/status#/power/ac", "/status#/power/reactive"], "interval": 0.02}],
        )
        ac = "/status#/power/ac"
        reactive = "/status#/power/reactive"
        async with m:
            await until(lambda: reports.count((ac, 1500.0, "good")) >= 5)
            assert reports.count((reactive, None, "bad")) == 1
            dp = m.router.data.get(f"inv.{reactive}")
            assert dp is not None and dp.quality == "bad"
            assert "no member 'reactive'" in dp.as_dict()["reason"]
            failed = await rec.of("error")
            assert [e.data["tag"] for e in failed] == [reactive]

            sim.device.set_status("power/reactive", 12.5)
            await until(lambda: quality(m, f"inv.{reactive}") == "good")
            sim.device.set_status("power", {"ac": 1500.0})
            await until(lambda: reports.count((reactive, None, "bad")) == 2)
            count = len(reports)
            await until(lambda: len(reports) >= count + 5)
            assert reports.count((reactive, None, "bad")) == 2


async def test_modbus_float_that_cannot_be_decoded_is_bad_once(make_manager: Make) -> None:
    """Test that a float32 register pair holding NaN is reported bad once, then good when fixed."""
    device = ModbusDevice(1)
    device.hr[0], device.hr[1] = 0x7FC0, 0x0000  # NaN
    device.hr[2] = 7
    reports: list[tuple[str, Any, str]] = []
    async with ModbusServer([device]) as server:
        m = make_manager(health_check_interval=60)
        m.on_data(lambda cid, tag, value, q, ts: reports.append((tag, value, q)))
        m.add_connection(
            "inv",
            "modbus_tcp",
            {"host": "127.0.0.1", "port": server.port, "unit_id": 1},
            poll=[{"tags": ["hr:0:float32", "hr:2"], "interval": 0.02}],
        )
        async with m:
            await until(lambda: reports.count(("hr:2", 7, "good")) >= 5)
            assert reports.count(("hr:0:float32", None, "bad")) == 1
            assert m.get_state("inv") == "connected"
            dp = m.router.data.get("inv.hr:0:float32")
            assert dp is not None and dp.quality == "bad"
            assert "not a finite number" in dp.as_dict()["reason"]
            device.hr[0], device.hr[1] = 0x3FC0, 0x0000  # 1.5
            await until(lambda: ("hr:0:float32", 1.5, "good") in reports)
