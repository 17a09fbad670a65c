"""The ads driver against pyads's ADS test server (AdvancedHandler) on 127.0.0.1:48898.

adslib on Linux dials no AMS/TCP port but 48898, so these tests share that
fixed port and run one after the other; they skip when something else holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pyads import constants, pyads_ex
from pyads.testserver import PLCVariable

from conftest import Recorder
from edgelink import ConfigError, ConnectError, ConnectionManager, DeviceError, ProtocolError
from edgelink.drivers.ads import RUNTIME, AdsConnection, AdsRuntime, SymbolInfo
from edgelink.subscriptions import SubscriptionState
from edgelink.testing import FaultMode, FaultProxy, ManualClock
from edgelink.testing.ads_peer import AdsPeer, port_in_use

NET_ID = "127.0.0.1.1.1"
NO_WATCHDOG = 1e9
Make = Callable[..., ConnectionManager]
MOTOR = struct.pack("<hhf", 3, -1, 1.5)

SYMBOLS: list[tuple[str, str, Any, str]] = [
    ("MAIN.bPump", "BOOL", True, "pump running"),
    ("MAIN.iCount", "INT", 5, ""),
    ("MAIN.uiWord", "UINT", 65000, ""),
    ("MAIN.diBig", "DINT", -100000, ""),
    ("MAIN.fTemp", "LREAL", 21.5, "boiler temperature"),
    ("MAIN.rLevel", "REAL", 0.25, ""),
    ("MAIN.sName", "STRING(20)", "boiler", "display name"),
    ("GVL.stMotor", "ST_Motor", MOTOR, "a structure"),
]


@pytest.fixture
async def plc() -> AsyncIterator[AdsPeer]:
    """A TwinCAT-like test PLC on 127.0.0.1:48898 with a few typed symbols."""
    if port_in_use():
        pytest.skip("127.0.0.1:48898 is in use: the ADS tests need that fixed port")
    peer = AdsPeer()
    for name, type_name, value, comment in SYMBOLS:
        peer.add_symbol(name, type_name, value, comment=comment)
    async with peer:
        yield peer
    # Every test leaves the process-wide router as it found it.
    assert RUNTIME.routes() == {}


def driver(connection_id: str = "plc", **extra: Any) -> AdsConnection:
    config = {"ams_net_id": NET_ID, "host": "127.0.0.1", "timeout": 0.2, **extra}
    return AdsConnection(connection_id, config)


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a blocking driver method off the event loop, as the Supervisor does."""
    return await asyncio.to_thread(fn, *args)


async def test_read_and_write_by_name_with_types(plc: AdsPeer) -> None:
    """Test that symbols read and write by name, typed by the PLC's symbol table."""
    conn = driver()
    await run(conn.connect)
    try:
        assert conn.is_connected()
        assert await run(conn.health_check) is True
        assert await run(conn.read, "MAIN.bPump") is True
        assert await run(conn.read, "MAIN.iCount") == 5
        assert await run(conn.read, "MAIN.uiWord") == 65000
        assert await run(conn.read, "MAIN.diBig") == -100000
        assert await run(conn.read, "MAIN.fTemp") == 21.5
        assert await run(conn.read, "MAIN.rLevel") == 0.25
        assert await run(conn.read, "MAIN.sName") == "boiler"
        assert await run(conn.read, "GVL.stMotor") == MOTOR
        writes: list[tuple[str, Any, Any]] = [
            ("MAIN.bPump", "false", False),
            ("MAIN.iCount", -7, -7),
            ("MAIN.uiWord", "0x10", 16),
            ("MAIN.diBig", 12.0, 12),
            ("MAIN.fTemp", "22.75", 22.75),
            ("MAIN.rLevel", 1, 1.0),
            ("MAIN.sName", "Kessel Süd", "Kessel Süd"),
            ("GVL.stMotor", b"\x01" * 8, b"\x01" * 8),
        ]
        for tag, value, expected in writes:
            await run(conn.write, tag, value)
            assert plc.value(tag) == expected, tag
            assert await run(conn.read, tag) == expected, tag
        stats = conn.stats.as_dict()
        assert stats["packets_sent"] == stats["packets_received"] > 16
        assert stats["bytes_received"] > 0 and stats["bytes_sent"] > 0
    finally:
        await run(conn.disconnect)
        await run(conn.disconnect)  # idempotent
    assert not conn.is_connected()


@pytest.mark.parametrize(
    ("tag", "value", "match"),
    [
        ("MAIN.iCount", 40000, r"out of range -32768\.\.32767"),
        ("MAIN.uiWord", -1, r"out of range 0\.\.65535"),
        ("MAIN.iCount", True, "not a bool"),
        ("MAIN.iCount", 1.5, "whole number"),
        ("MAIN.bPump", "maybe", "BOOL takes"),
        ("MAIN.fTemp", "warm", "takes a number"),
        ("MAIN.sName", "x" * 21, "holds 20"),
        ("MAIN.sName", "\u2603", "Windows-1252"),
        ("GVL.stMotor", b"\x00", "exactly 8 raw bytes"),
    ],
)
async def test_bad_values_say_where_and_why(plc: AdsPeer, tag: str, value: Any, match: str) -> None:
    """Test that a value that does not fit the symbol's type is refused, naming symbol and type."""
    conn = driver()
    await run(conn.connect)
    try:
        before = plc.value(tag)
        with pytest.raises(ValueError, match=match) as info:
            await run(conn.write, tag, value)
        assert tag in str(info.value)
        assert plc.value(tag) == before
        assert conn.is_connected()
    finally:
        await run(conn.disconnect)


async def test_unknown_symbol_is_a_device_error_and_the_link_stays(plc: AdsPeer) -> None:
    """Test that a symbol the PLC lacks is a DeviceError with ADS code 0x710 and the link stays."""
    conn = driver()
    await run(conn.connect)
    try:
        with pytest.raises(DeviceError, match="symbol not found") as info:
            await run(conn.read, "MAIN.nothing")
        assert info.value.code == 0x710
        with pytest.raises(DeviceError):
            await run(conn.write, "MAIN.nothing", 1)
        assert conn.is_connected()
        assert await run(conn.read, "MAIN.iCount") == 5
    finally:
        await run(conn.disconnect)


async def test_list_symbols_gives_name_type_size_comment(plc: AdsPeer) -> None:
    """Test that list_symbols uploads the symbol table with name, type, size and comment."""
    conn = driver()
    await run(conn.connect)
    try:
        symbols = await run(conn.list_symbols)
    finally:
        await run(conn.disconnect)
    sizes = {"BOOL": 1, "INT": 2, "UINT": 2, "DINT": 4, "LREAL": 8, "REAL": 4, "STRING(20)": 21}
    expected = [
        SymbolInfo(name, type_name, sizes.get(type_name, len(MOTOR)), comment)
        for name, type_name, _, comment in SYMBOLS
    ]
    assert [(s.name, s.type, s.size, s.comment) for s in symbols] == [
        (s.name, s.type, s.size, s.comment) for s in expected
    ]
    # Where each value lives: the peer's index group, one offset per symbol.
    assert all(s.index_group > 0 for s in symbols)
    assert len({(s.index_group, s.index_offset) for s in symbols}) == len(symbols)
    got = symbols[4].as_dict()
    assert {k: got[k] for k in ("name", "type", "size", "comment")} == {
        "name": "MAIN.fTemp",
        "type": "LREAL",
        "size": 8,
        "comment": "boiler temperature",
    }
    assert set(got) == {"name", "type", "size", "comment", "index_group", "index_offset"}


async def test_health_follows_the_plc_state(plc: AdsPeer) -> None:
    """Test that health needs ADS state RUN unless require_run is off, and read_state names it."""
    strict, lenient = driver("strict"), driver("lenient", require_run=False)
    await run(strict.connect)
    await run(lenient.connect)
    try:
        assert await run(strict.read_state) == ("RUN", 0)
        plc.ads_state = constants.ADSSTATE_STOP
        with pytest.raises(ConnectError, match="ADS state STOP, not RUN"):
            await run(strict.health_check)
        assert await run(lenient.health_check) is True
        assert await run(lenient.read_state) == ("STOP", 0)
        # The PLC answered: the link itself is fine.
        assert strict.is_connected()
    finally:
        await run(strict.disconnect)
        await run(lenient.disconnect)


async def test_two_plc_connections_share_the_router_safely(plc: AdsPeer) -> None:
    """Test that several connections at once share routes, and one leaving keeps the others'."""
    runtimes = [
        driver("plc_a"),
        driver("plc_b", ams_port=852),
        driver("plc_c", ams_net_id="10.0.0.9.1.1"),
    ]
    for conn in runtimes:
        await run(conn.connect)
    try:
        assert RUNTIME.routes() == {"127.0.0.1": [NET_ID, "10.0.0.9.1.1"]}
        tags = ["MAIN.iCount", "MAIN.fTemp", "MAIN.sName"] * 10
        results = await asyncio.gather(*(run(conn.read, tag) for conn in runtimes for tag in tags))
        assert results == [5, 21.5, "boiler"] * 30
        await run(runtimes[0].disconnect)
        # plc_b still uses the same net id's route, plc_c the same TCP link.
        assert await run(runtimes[1].read, "MAIN.iCount") == 5
        assert await run(runtimes[2].health_check)
        assert RUNTIME.routes() == {"127.0.0.1": [NET_ID, "10.0.0.9.1.1"]}
    finally:
        for conn in runtimes:
            await run(conn.disconnect)
    assert RUNTIME.routes() == {}


async def test_net_id_and_local_address_conflicts_are_config_errors(plc: AdsPeer) -> None:
    """Test that one net id on two addresses, or two local net ids, are refused with the reason."""
    runtime = AdsRuntime()
    lease = runtime.acquire("10.1.1.1.1.1", "127.0.0.1", "a")
    try:
        with pytest.raises(ConfigError, match=r"already routed to 127\.0\.0\.1") as info:
            runtime.acquire("10.1.1.1.1.1", "127.0.0.2", "b")
        assert info.value.path == "config.ams_net_id"
    finally:
        runtime.release(lease)
    assert runtime.routes() == {}
    runtime.set_local_net_id("127.0.0.1.1.1", "a")
    runtime.set_local_net_id("127.0.0.1.1.1", "b")  # the same one again is fine
    with pytest.raises(ConfigError, match="one process has one local AMS net id"):
        runtime.set_local_net_id("192.168.7.7.1.1", "c")


async def test_unreachable_plc_is_a_connect_error() -> None:
    """Test that a PLC address where nothing listens fails fast with ConnectError, nothing routed."""
    if port_in_use():
        pytest.skip("127.0.0.1:48898 is in use: the ADS tests need that fixed port")
    conn = driver()
    with pytest.raises(ConnectError, match="unreachable") as info:
        await run(conn.connect)
    assert isinstance(info.value.cause, ConnectionRefusedError)
    assert not conn.is_connected()
    assert RUNTIME.routes() == {}


def ads_config(**extra: Any) -> dict[str, Any]:
    return {"ams_net_id": NET_ID, "host": "127.0.0.1", "timeout": 0.2, **extra}


def live_callbacks(conn: AdsConnection) -> int:
    """Notification callbacks of ``conn`` in pyads's process-wide store."""
    return len([k for k in pyads_ex.callback_store if k[0] is conn._adr])


async def test_notifications_are_replayed_after_a_plc_restart_and_confirmed_by_data(
    make_manager: Make, plc: AdsPeer, clock: ManualClock
) -> None:
    """Test that notifications are replayed after a PLC restart and confirmed by the first value."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=5)
    conn = m.add_connection(
        "plc",
        "ads",
        ads_config(
            notifications=["MAIN.iCount", {"tag": "MAIN.fTemp", "mode": "cycle", "cycle_time": 1}]
        ),
    )
    assert isinstance(conn, AdsConnection)
    ledger = conn.subscriptions
    got: list[tuple[str, Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, value, quality)))
    async with m:
        await m.wait_for_state("plc", "connected", timeout=5)
        # The PLC sends each one's current value when it is added: that confirms it.
        await wait_until(ledger.is_confirmed)
        assert sorted(got) == [("MAIN.fTemp", 21.5, "good"), ("MAIN.iCount", 5, "good")]
        plc.set_value("MAIN.iCount", 6)
        await wait_until(lambda: got[-1] == ("MAIN.iCount", 6, "good"))
        await plc.restart()
        await clock.advance(5)  # the health check finds the link dead
        await m.wait_for_state("plc", "reconnecting", timeout=3)
        assert not ledger.is_link_up
        assert {e.state for e in ledger} == {SubscriptionState.IDLE}
        delay = await clock.wait_for_timer(lambda d: d < 1)
        plc.set_value("MAIN.iCount", 7)  # while the link is down
        seen = len(got)
        await clock.advance(delay)
        await m.wait_for_state("plc", "connected", timeout=3)
        await wait_until(ledger.is_confirmed)
        # Replayed once on the new link, each confirmed by the value it brought.
        assert sorted(got[seen:]) == [("MAIN.fTemp", 21.5, "good"), ("MAIN.iCount", 7, "good")]
        assert [(e.key, e.replays) for e in ledger] == [("MAIN.iCount", 1), ("MAIN.fTemp", 1)]
        assert plc.notifications_added("MAIN.iCount") == 2
        status = m.get_status("plc")
        assert (status["health"], status["health_reason"]) == ("healthy", None)
        # One live callback each: the dead link's were dropped.
        assert live_callbacks(conn) == 2
        plc.set_value("MAIN.iCount", 8)
        await wait_until(lambda: got[-1] == ("MAIN.iCount", 8, "good"))
    assert live_callbacks(conn) == 0


async def test_a_notification_that_never_delivers_degrades_and_is_replayed_until_it_does(
    make_manager: Make, plc: AdsPeer, clock: ManualClock
) -> None:
    """Test that a notification bringing no value degrades the health, is retried, then heals."""
    plc.drop_notifications("MAIN.iCount")
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60)
    conn = m.add_connection(
        "plc",
        "ads",
        ads_config(notifications=["MAIN.iCount", "MAIN.fTemp"], notification_timeout=2),
    )
    assert isinstance(conn, AdsConnection)
    ledger = conn.subscriptions
    got: list[tuple[str, Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, value, quality)))
    async with m:
        await m.wait_for_state("plc", "connected", timeout=5)
        await wait_until(lambda: got == [("MAIN.fTemp", 21.5, "good")])
        assert plc.notifications_added("MAIN.iCount") == 1
        assert m.get_status("plc")["health"] == "healthy"
        await clock.advance(2)
        status = m.get_status("plc")
        assert (status["status"], status["health"]) == ("connected", "degraded")
        assert status["health_reason"] == (
            "1 subscription unconfirmed: 'MAIN.iCount' (no data within 2 s)"
        )
        # Replayed at once (the dead notification deleted, a new one added),
        # and given twice as long this time.
        await wait_until(lambda: plc.notifications_added("MAIN.iCount") == 2)
        assert ledger.get("MAIN.iCount").replays == 2  # type: ignore[union-attr]
        assert 4.0 in clock.pending()
        plc.drop_notifications("MAIN.iCount", drop=False)
        await clock.advance(4)
        await wait_until(lambda: m.get_status("plc")["health"] == "healthy")
        assert m.get_status("plc")["health_reason"] is None
        assert got[-1] == ("MAIN.iCount", 5, "good")
        assert plc.notifications_added("MAIN.iCount") == 3
        assert ledger.is_confirmed()
        assert live_callbacks(conn) == 2
        assert m.get_status("plc")["stats"]["reconnects"] == 0


async def test_missing_symbols_and_run_time_changes_go_through_the_ledger(
    make_manager: Make, plc: AdsPeer, clock: ManualClock
) -> None:
    """Test that a missing symbol is bad and degraded until it exists; subscribe/unsubscribe work."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60)
    conn = m.add_connection(
        "plc",
        "ads",
        ads_config(notifications=["MAIN.iCount", "MAIN.nothing"], notification_timeout=2),
    )
    assert isinstance(conn, AdsConnection)
    ledger = conn.subscriptions
    got: list[tuple[str, Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, value, quality)))
    async with m:
        await m.wait_for_state("plc", "connected", timeout=5)
        # The missing symbol does not stop the link; it is reported bad, and refused.
        await wait_until(lambda: len(got) == 2 and m.get_status("plc")["health"] == "degraded")
        assert sorted(got) == [("MAIN.iCount", 5, "good"), ("MAIN.nothing", None, "bad")]
        assert m.get_status("plc")["health_reason"] == (
            "1 subscription unconfirmed: 'MAIN.nothing' (refused: symbol not found (1808))"
        )
        await clock.advance(2)
        await wait_until(lambda: got.count(("MAIN.nothing", None, "bad")) == 2)
        plc.add_symbol("MAIN.nothing", "INT", 3)  # an online change adds it
        await clock.advance(4)
        await wait_until(ledger.is_confirmed)
        assert got[-1] == ("MAIN.nothing", 3, "good")
        assert m.get_status("plc")["health"] == "healthy"

        await m.execute_with_retry("plc", lambda c: c.subscribe("MAIN.sName"))
        await wait_until(lambda: got[-1] == ("MAIN.sName", "boiler", "good"))
        await m.execute_with_retry("plc", lambda c: c.unsubscribe("MAIN.iCount"))
        assert ledger.keys() == ["MAIN.nothing", "MAIN.sName"]
        plc.set_value("MAIN.iCount", 8)
        await wait_until(lambda: live_callbacks(conn) == 2)
        plc.set_value("MAIN.iCount", 9)
        await asyncio.sleep(0.05)
        assert ("MAIN.iCount", 8, "good") not in got and ("MAIN.iCount", 9, "good") not in got
        assert ledger.is_confirmed()
    assert live_callbacks(conn) == 0


async def test_plc_stopped_reconnecting_then_back_and_polling_resumes(
    make_manager: Make, plc: AdsPeer, clock: ManualClock
) -> None:
    """Test that a PLC that goes away is noticed, retried with backoff and polled again once back."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60)
    m.add_connection(
        "plc",
        "ads",
        {"ams_net_id": NET_ID, "host": "127.0.0.1", "timeout": 0.2},
        poll=[{"tags": ["MAIN.fTemp"], "interval": 1.0}],
    )
    got: list[tuple[Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((value, quality)))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("plc", "connected", timeout=5)
        await wait_until(lambda: len(got) == 1)
        await plc.stop()
        await clock.advance(1.0)  # the next poll finds the PLC gone
        await m.wait_for_state("plc", "reconnecting", timeout=3)
        assert RUNTIME.routes() == {}  # the dead TCP link was torn down
        assert await clock.wait_for_timer(lambda d: d < 1) == 0.1
        await clock.advance(0.1)
        failed = await rec.wait_for("reconnect_failed")
        assert "unreachable" in failed[0].data["error"]
        await plc.start()
        plc.set_value("MAIN.fTemp", 30.0)
        await clock.advance(await clock.wait_for_timer(lambda d: d < 1))
        await m.wait_for_state("plc", "connected", timeout=3)
        await wait_until(lambda: got[-1] == (30.0, "good"))
        assert got[0] == (21.5, "good")
        pollers = [t for t in asyncio.all_tasks() if t.get_name() == "edgelink[plc].poll0"]
        assert len(pollers) == 1
        assert m.get_status("plc")["stats"]["reconnects"] == 1


async def test_read_errors_in_a_poll_keep_the_link(make_manager: Make, plc: AdsPeer) -> None:
    """Test that a polled symbol the PLC lacks is reported bad while the good one keeps flowing."""
    m = make_manager(health_check_interval=60)
    m.add_connection(
        "plc",
        "ads",
        {"ams_net_id": NET_ID, "host": "127.0.0.1", "timeout": 0.2},
        poll=[{"tags": ["MAIN.nothing", "MAIN.iCount"], "interval": 0.05}],
    )
    got: list[tuple[str, Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, value, quality)))
    async with m:
        await m.wait_for_state("plc", "connected", timeout=5)
        await wait_until(lambda: got.count(("MAIN.iCount", 5, "good")) >= 4)
        # Bad once per good->bad transition, with the reason, not on every poll.
        assert got[:2] == [("MAIN.nothing", None, "bad"), ("MAIN.iCount", 5, "good")]
        assert got.count(("MAIN.nothing", None, "bad")) == 1
        dp = m.router.data.get("plc.MAIN.nothing")
        assert dp is not None and dp.as_dict()["reason"]
        assert m.get_status("plc")["stats"]["reconnects"] == 0


@pytest.mark.parametrize(
    ("config", "path", "match"),
    [
        ({}, "config.ams_net_id", "required"),
        ({"ams_net_id": "1.2.3"}, "config.ams_net_id", "six numbers"),
        ({"ams_net_id": "1.2.3.4.5.256"}, "config.ams_net_id", "six numbers"),
        ({"ams_net_id": NET_ID, "ams_port": 0}, "config.ams_port", "greater than or equal to 1"),
        ({"ams_net_id": NET_ID, "port": 851}, "config.port", "ams_port"),
        ({"ams_net_id": NET_ID, "port": 48899}, "config.port", "always connects"),
        ({"ams_net_id": NET_ID, "host": ""}, "config.host", "at least 1 character"),
        ({"ams_net_id": NET_ID, "timeout": 0}, "config.timeout", "greater than 0"),
        ({"ams_net_id": NET_ID, "require_run": "yes"}, "config.require_run", "valid boolean"),
        ({"ams_net_id": NET_ID, "local_ams_net_id": "x"}, "config.local_ams_net_id", "six"),
        ({"ams_net_id": NET_ID, "notifications": "MAIN.x"}, "config.notifications", "array"),
        ({"ams_net_id": NET_ID, "notifications": [5]}, "config.notifications[0]", "symbol name"),
        (
            {"ams_net_id": NET_ID, "notifications": [{"tag": "a", "mode": "often"}]},
            "config.notifications[0].mode",
            "mode",
        ),
        (
            {"ams_net_id": NET_ID, "notifications": ["a", {"tag": "b", "cycle_time": -1}]},
            "config.notifications[1].cycle_time",
            "cycle_time",
        ),
        (
            {"ams_net_id": NET_ID, "notifications": [{"tag": "a", "every": 1}]},
            "config.notifications[0].every",
            "unknown key",
        ),
        (
            {"ams_net_id": NET_ID, "notification_timeout": 0},
            "config.notification_timeout",
            "greater than 0",
        ),
        (
            {
                "ams_net_id": NET_ID,
                "notification_timeout": 2,
                "notifications": [{"tag": "a", "mode": "cycle", "cycle_time": 1.5, "max_delay": 1}],
            },
            "config.notifications[0]",
            r"\(2\.5 s\) must be below notification_timeout \(2 s\)",
        ),
    ],
)
def test_bad_config(config: dict[str, Any], path: str, match: str) -> None:
    """Test that a bad ads config is a ConfigError naming the key and the reason."""
    with pytest.raises(ConfigError, match=match) as info:
        AdsConnection("plc", config)
    assert info.value.path == path


def test_host_defaults_to_the_net_id_address() -> None:
    """Test that without host the PLC's address is the first four numbers of its net id."""
    conn = AdsConnection("plc", {"ams_net_id": "192.168.2.162.1.1"})
    assert conn.host == "192.168.2.162" and conn.ams_port == 851


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_wrong_length_answer_is_a_protocol_error(plc: AdsPeer) -> None:
    """Test that an answer of the wrong length is a ProtocolError that drops the link."""
    # A PLC answering two bytes' symbol with one: what a broken gateway in between might do.
    plc.handler.add_variable(PLCVariable("MAIN.iBroken", b"\x01", constants.ADST_INT16, "INT"))
    conn = driver()
    lost: list[BaseException | None] = []
    conn.connection_lost = lost.append  # type: ignore[method-assign, assignment]
    await run(conn.connect)
    try:
        with pytest.raises(ProtocolError, match="bad answer"):
            await run(conn.read, "MAIN.iBroken")
        assert not conn.is_connected()
        assert len(lost) == 1 and isinstance(lost[0], ProtocolError)
        with pytest.raises(ConnectError, match="not connected"):
            await run(conn.read, "MAIN.iCount")
        await run(conn.connect)
        assert await run(conn.read, "MAIN.iCount") == 5
    finally:
        await run(conn.disconnect)


async def test_garbage_on_the_wire_rebuilds_the_link(
    make_manager: Make, clock: ManualClock
) -> None:
    """Test that corrupted ADS frames (FaultProxy) drop the link and a fresh TCP link is dialled."""
    if port_in_use():
        pytest.skip("127.0.0.1:48898 is in use: the ADS tests need that fixed port")
    async with AdsPeer(port=0) as plc:
        plc.add_symbol("MAIN.iCount", "INT", 5)
        async with FaultProxy("127.0.0.1", plc.bound_port, port=48898) as proxy:
            m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60)
            m.add_connection(
                "plc",
                "ads",
                {"ams_net_id": NET_ID, "host": "127.0.0.1", "timeout": 0.2},
                poll=[{"tags": ["MAIN.iCount"], "interval": 1.0}],
            )
            got: list[tuple[Any, str]] = []
            m.on_data(lambda cid, tag, value, quality, ts: got.append((value, quality)))
            async with m:
                await m.wait_for_state("plc", "connected", timeout=5)
                await wait_until(lambda: len(got) == 1)
                dialled = proxy.accepted
                proxy.mode = FaultMode.CORRUPT
                await clock.advance(1.0)
                await m.wait_for_state("plc", "reconnecting", timeout=3)
                proxy.mode = FaultMode.PASS
                await clock.advance(await clock.wait_for_timer(lambda d: d < 1))
                await m.wait_for_state("plc", "connected", timeout=3)
                await wait_until(lambda: got[-1] == (5, "good") and len(got) >= 2)
                # The probe plus adslib's own fresh TCP link.
                assert proxy.accepted >= dialled + 2
                assert m.get_status("plc")["stats"]["reconnects"] == 1
    assert RUNTIME.routes() == {}


async def test_no_fds_or_threads_leak_over_restarts(plc: AdsPeer) -> None:
    """Test that 10 cycles of PLC restart and reconnect leave no sockets or threads behind."""
    conn = driver()
    await run(conn.connect)
    await run(conn.disconnect)
    await wait_until(lambda: len(plc_clients(plc)) == 0, timeout=2)
    fds, threads = len(os.listdir("/proc/self/fd")), own_threads()
    for _ in range(10):
        await run(conn.connect)
        assert await run(conn.read, "MAIN.iCount") == 5
        await plc.restart()
        with pytest.raises(ConnectError):
            await run(conn.read, "MAIN.iCount")
        assert not conn.is_connected()
        await run(conn.disconnect)
    # The test server's client threads notice a closed link within 50 ms.
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: own_threads() <= threads, timeout=2)
    assert own_threads() <= threads, [(type(t).__name__, t.name) for t in threading.enumerate()]
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds, timeout=2)
    # <=: a socket the test server was still closing may have counted before.
    assert len(os.listdir("/proc/self/fd")) <= fds, fd_targets()
    assert RUNTIME.routes() == {}


def plc_clients(plc: AdsPeer) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.is_alive() and type(t).__name__ == "_Client"]


def own_threads() -> int:
    """Threads other than the default executor's workers (a pool that grows as it likes)."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def fd_targets() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.append(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
    return out


async def test_a_notified_value_that_cannot_be_decoded_is_bad_once(
    make_manager: Make, plc: AdsPeer
) -> None:
    """Test that a notified STRING outside Windows-1252 is reported bad once with why, then good."""
    m = make_manager(health_check_interval=60)
    m.add_connection("plc", "ads", ads_config(notifications=["MAIN.sName"]))
    got: list[tuple[str, Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, value, quality)))
    async with m:
        await m.wait_for_state("plc", "connected", timeout=5)
        await wait_until(lambda: ("MAIN.sName", "boiler", "good") in got)
        undecodable = b"boi\x81ler" + b"\x00" * 14  # 0x81 has no Windows-1252 character
        plc.set_raw("MAIN.sName", undecodable)
        await wait_until(lambda: ("MAIN.sName", None, "bad") in got)
        plc.set_raw("MAIN.sName", b"boi\x8dler" + b"\x00" * 14)  # still undecodable
        plc.set_value("MAIN.iCount", 9)
        plc.set_value("MAIN.sName", "kessel")
        await wait_until(lambda: ("MAIN.sName", "kessel", "good") in got)
        assert got.count(("MAIN.sName", None, "bad")) == 1
        assert m.get_state("plc") == "connected"
        history = m.router.data.history("plc.MAIN.sName")
        bad = [dp for dp in history if dp.quality == "bad"]
        assert len(bad) == 1 and "cannot decode" in bad[0].as_dict()["reason"]
