"""The ``ble`` driver and the BMS over BLE, against a simulated radio below bleak's public API.

There is no Bluetooth adapter here: `edgelink.testing.ble.FakeRadio` plugs
bleak backend classes in, so bleak's `BleakScanner` / `BleakClient` and
bleak-retry-connector run for real above a simulated air (see
docs/drivers/ble.md for what this proves and what it cannot).

BMS frames come from the same protocol simulator as the pty tests
(`edgelink.sim.bms.BmsResponder`), cut into 20-byte notifications as a
BLE module sends them. Protocol references: Daly "UART/485 communication
protocol" V1.2 (0xA5 frames, data ids 0x90-0x98); JBD / Xiaoxiang "BMS
communication protocol" (0xDD ... 0x77, registers 0x03 and 0x04) with the
BLE module's service FF00 (notify FF01, write FF02); ANT BMS BLE status
frames (7E A1 ... AA 55, CRC-16/MODBUS) on FFE0/FFE1; Victron "Extra
manufacturer data" (instant readout, AES-CTR) for the SmartShunt.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from conftest import Recorder
from edgelink import ConfigError, ConnectionManager
from edgelink.drivers.ble import BleConnection, decode_value, encode_value, get_scanner
from edgelink.drivers.bms import BmsConnection
from edgelink.drivers.configs import BleCharacteristic
from edgelink.sim.bms import BmsModel
from edgelink.testing import ManualClock
from edgelink.testing.ble import BmsPeripheral, FakePeripheral, FakeRadio, VictronAdvertiser

Make = Callable[..., ConnectionManager]
NO_WATCHDOG = 1e9
SENSOR = "C0:FF:EE:00:00:01"
TEMP_UUID = "00002a6e-0000-1000-8000-00805f9b34fb"
BATT_UUID = "00002a19-0000-1000-8000-00805f9b34fb"
LED_UUID = "0000ff02-0000-1000-8000-00805f9b34fb"
KEY = "0df4d0395b7d1a876c0c33ecb9e70dcd"


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def values(m: ConnectionManager, conn_id: str) -> dict[str, Any]:
    prefix = conn_id + "."
    return {
        dp.address[len(prefix) :]: dp.value
        for dp in (m.router.data.get(a) for a in m.router.data.addresses())
        if dp is not None and dp.address.startswith(prefix)
    }


def ble(m: ConnectionManager, conn_id: str) -> BleConnection:
    conn = m.get_connection(conn_id)
    assert isinstance(conn, BleConnection)
    return conn


def bms(m: ConnectionManager, conn_id: str) -> BmsConnection:
    conn = m.get_connection(conn_id)
    assert isinstance(conn, BmsConnection)
    return conn


@pytest.fixture
def radio() -> Iterator[FakeRadio]:
    radio = FakeRadio(advert_interval=0.02)
    with radio.installed():
        yield radio


@pytest.fixture
async def air(radio: FakeRadio) -> AsyncIterator[FakeRadio]:
    async with radio.running():
        yield radio


def sensor(radio: FakeRadio, **kw: Any) -> FakePeripheral:
    p = FakePeripheral(
        SENSOR,
        "Thermo",
        characteristics={
            TEMP_UUID: ["read", "notify"],
            BATT_UUID: ["read"],
            LED_UUID: ["write"],
        },
        **kw,
    )
    p.values[BATT_UUID] = bytes([87])
    p.values[TEMP_UUID] = (2150).to_bytes(2, "little", signed=True)
    return radio.add(p)  # type: ignore[no-any-return]


def sensor_config(**extra: Any) -> dict[str, Any]:
    return {
        "address": SENSOR,
        "notify": {"temperature": {"uuid": "2a6e", "format": "i16le", "scale": 0.01}},
        "read": {"battery": {"uuid": "2a19", "format": "u8"}},
        "write": {"led": {"uuid": "ff02", "format": "u8"}},
        "interval": 1.0,
        "scan_timeout": 0.4,
        "max_attempts": 1,
        "confirm_within": 1.0,
        **extra,
    }


async def test_notifications_reads_writes_and_rssi_are_data(
    make_manager: Make, air: FakeRadio
) -> None:
    """Test that notifications, polled reads and RSSI land as datapoints and a write reaches the device."""
    dev = sensor(air, rssi=-55)
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("bt.thermo", "ble", sensor_config())
    async with m:
        await m.wait_for_state("bt.thermo", "connected", timeout=5)
        await wait_until(lambda: TEMP_UUID in dev.subscribed)
        dev.notify(TEMP_UUID, (-1234).to_bytes(2, "little", signed=True))
        await wait_until(lambda: values(m, "bt.thermo").get("temperature") == pytest.approx(-12.34))
        await wait_until(lambda: values(m, "bt.thermo").get("battery") == 87)
        assert values(m, "bt.thermo")["rssi"] == -55
        await ble(m, "bt.thermo").write("led", 1)
        assert dev.writes[-1] == (LED_UUID, b"\x01")
        conn = ble(m, "bt.thermo")
        assert conn.ledger.is_confirmed()
        assert m.get_status("bt.thermo")["stats"]["packets_received"] >= 2


async def test_connections_share_one_scanner(make_manager: Make, air: FakeRadio) -> None:
    """Test that two ble connections and a browser run one scan, which stops when all are gone."""
    sensor(air)
    other = air.add(
        FakePeripheral("C0:FF:EE:00:00:02", "Other", characteristics={TEMP_UUID: ["notify"]})
    )
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("bt.a", "ble", sensor_config())
    m.add_connection("bt.b", "ble", {"address": other.name, "notify": {"t": {"uuid": "2a6e"}}})
    async with m:
        await m.wait_for_state("bt.a", "connected", timeout=5)
        await m.wait_for_state("bt.b", "connected", timeout=5)
        assert air.scans_started == 1 and len(air.scanners) == 1
        found = await get_scanner().browse(linger=0.1)
        assert {d["address"] for d in found} >= {SENSOR, other.address}
        await m.remove_connection("bt.a")
        await m.remove_connection("bt.b")
        await wait_until(lambda: not air.scanners)
        assert air.scans_started == 1


async def test_a_dropped_link_reconnects_and_replays_notifications(
    make_manager: Make, air: FakeRadio
) -> None:
    """Test that a device dropping the link is reconnected and its notifications are subscribed again."""
    dev = sensor(air)
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    rec = Recorder(m)
    m.add_connection("bt.thermo", "ble", sensor_config())
    async with m:
        await m.wait_for_state("bt.thermo", "connected", timeout=5)
        await wait_until(lambda: TEMP_UUID in dev.subscribed)
        dev.drop()
        assert not dev.subscribed
        await wait_until(lambda: dev.connects == 2 and TEMP_UUID in dev.subscribed)
        await m.wait_for_state("bt.thermo", "connected", timeout=5)
        dev.notify(TEMP_UUID, (500).to_bytes(2, "little"))
        await wait_until(lambda: values(m, "bt.thermo").get("temperature") == pytest.approx(5.0))
        assert "disconnected" in await rec.types()


async def test_out_of_range_fails_with_a_reason_and_connects_when_back(
    make_manager: Make, air: FakeRadio
) -> None:
    """Test that a device not advertising is a connect timeout saying so, and is found when back."""
    dev = sensor(air)
    dev.in_range = False
    m = make_manager(
        watchdog_interval=NO_WATCHDOG, reconnect_initial_delay=0.05, reconnect_max_delay=0.1
    )
    m.add_connection("bt.thermo", "ble", sensor_config(scan_timeout=0.3))
    async with m:
        await wait_until(lambda: "not seen" in (m.get_status("bt.thermo")["last_error"] or ""))
        dev.in_range = True
        await m.wait_for_state("bt.thermo", "connected", timeout=5)
        assert dev.connects == 1


async def test_refused_notification_is_degraded_then_retried(
    make_manager: Make, air: FakeRadio
) -> None:
    """Test that a refused subscription degrades the link with the reason and is replayed until it takes."""
    dev = sensor(air)
    dev.refuse_notify.add(TEMP_UUID)
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("bt.thermo", "ble", sensor_config())
    async with m:
        await m.wait_for_state("bt.thermo", "connected", timeout=5)
        conn = ble(m, "bt.thermo")
        await wait_until(lambda: conn.degraded_reason is not None)
        assert TEMP_UUID in (conn.degraded_reason or "")
        dev.refuse_notify.clear()
        # The ledger replays a failed entry after confirm_within * 2^n (1 s here).
        await wait_until(lambda: TEMP_UUID in dev.subscribed, timeout=6)
        await wait_until(lambda: conn.degraded_reason is None)


async def test_weak_rssi_degrades_and_recovers(make_manager: Make, air: FakeRadio) -> None:
    """Test that RSSI below rssi_warning is a degraded link with the figure, and clears above it."""
    dev = sensor(air, rssi=-60)
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("bt.thermo", "ble", sensor_config(interval=0.05, rssi_warning=-80))
    async with m:
        await m.wait_for_state("bt.thermo", "connected", timeout=5)
        conn = ble(m, "bt.thermo")
        dev.rssi = -93
        await wait_until(lambda: "RSSI -93 dBm" in (conn.degraded_reason or ""))
        assert values(m, "bt.thermo")["rssi"] == -93
        dev.rssi = -70
        await wait_until(lambda: conn.degraded_reason is None)


async def test_backoff_between_connects_is_the_supervisors(
    make_manager: Make, radio: FakeRadio, clock: ManualClock
) -> None:
    """Test that a device out of range is retried on the supervisor's clock (no sleeping here)."""
    dev = sensor(radio)
    dev.in_range = False
    m = make_manager(
        clock=clock,
        watchdog_interval=NO_WATCHDOG,
        reconnect_initial_delay=30.0,
        reconnect_max_delay=60.0,
    )
    rec = Recorder(m)
    m.add_connection("bt.thermo", "ble", sensor_config(scan_timeout=0.2))
    async with radio.running(), m:
        await rec.wait_for("reconnect_start")
        assert "not seen" in (m.get_status("bt.thermo")["last_error"] or "")
        await asyncio.sleep(0.5)
        assert len(await rec.of("reconnect_failed")) == 0  # the next try waits for the clock
        dev.in_range = True
        await clock.advance(120)
        await m.wait_for_state("bt.thermo", "connected", timeout=5)
        assert dev.connects == 1


async def test_refused_connect_carries_the_libraries_reason(
    make_manager: Make, air: FakeRadio
) -> None:
    """Test that a device refusing the link fails the attempt with bleak's reason in last_error."""
    dev = sensor(air)
    dev.accepts_connections = False
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("bt.thermo", "ble", sensor_config(), settings={"connect_timeout": 10.0})
    async with m:
        await wait_until(
            lambda: "le-connection-abort" in (m.get_status("bt.thermo")["last_error"] or ""),
            timeout=8,
        )
        assert dev.connects == 0


async def test_no_adapter_is_a_clear_error(make_manager: Make, air: FakeRadio) -> None:
    """Test that a missing adapter fails the connect with a reason, not a traceback."""
    air.adapter_present = False
    sensor(air)
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("bt.thermo", "ble", sensor_config())
    async with m:
        await wait_until(
            lambda: "scanner could not start" in (m.get_status("bt.thermo")["last_error"] or "")
        )


@pytest.mark.parametrize("kind", ["daly", "jbd", "ant"])
async def test_bms_over_ble_every_field_is_data(
    make_manager: Make, air: FakeRadio, kind: str
) -> None:
    """Test that a Daly, JBD or ANT BMS polled over its BLE module reports cells, SOC, temps, MOS."""
    model = BmsModel(cells=16, temperatures=(-5.0, 12.0), animate=False)
    bms = air.add(BmsPeripheral("C0:00:00:00:00:10", kind, model))
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection(
        "bt.bms_001",
        "bms",
        {
            "parser": kind,
            "transport": "ble",
            "address": bms.address,
            "interval": 0.2,
            "response_timeout": 0.5,
            "scan_timeout": 0.4,
            "max_attempts": 1,
        },
    )
    async with m:
        await m.wait_for_state("bt.bms_001", "connected", timeout=5)
        await wait_until(
            lambda: "cells.16" in values(m, "bt.bms_001") and "soc" in values(m, "bt.bms_001")
        )
        got = values(m, "bt.bms_001")
        assert got["voltage"] == pytest.approx(model.voltage(), abs=0.1)
        assert got["cells.1"] == pytest.approx(model.cell_voltages()[0], abs=0.002)
        assert got["soc"] == pytest.approx(model.soc(), abs=1.0)
        # RSSI comes from the scanner; it may not have been reported yet.
        assert got.get("rssi", -60) == -60
        assert m.get_status("bt.bms_001")["stats"]["errors"] == 0
        assert bms.responder.requests >= 1


async def test_bms_over_ble_garbage_is_counted_and_drop_reconnects(
    make_manager: Make, air: FakeRadio
) -> None:
    """Test that noise in notifications is counted, values stay right, and a dropped link comes back."""
    model = BmsModel(cells=4, animate=False)
    bms = air.add(BmsPeripheral("C0:00:00:00:00:11", "jbd", model))
    bms.garbage = b"\x00\x13\x37"
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection(
        "bt.bms_001",
        "bms",
        {
            "parser": "jbd",
            "transport": "ble",
            "address": bms.name,
            "interval": 0.2,
            "response_timeout": 0.5,
            "scan_timeout": 0.4,
            "max_attempts": 1,
            "error_streak": 100,
        },
    )
    async with m:
        await wait_until(lambda: "cells.4" in values(m, "bt.bms_001"))
        await wait_until(lambda: m.get_status("bt.bms_001")["stats"]["errors"] >= 1)
        assert values(m, "bt.bms_001")["voltage"] == pytest.approx(model.voltage(), abs=0.1)
        bms.drop()
        await wait_until(lambda: bms.connects == 2)
        await m.wait_for_state("bt.bms_001", "connected", timeout=5)


async def test_victron_is_read_from_its_advertisements(make_manager: Make, air: FakeRadio) -> None:
    """Test that a SmartShunt's encrypted instant readout becomes voltage, current and SOC, no GATT link."""
    model = BmsModel(cells=4, animate=False)
    shunt = air.add(VictronAdvertiser("C0:00:00:00:00:20", KEY, model))
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection(
        "bt.shunt",
        "bms",
        {
            "parser": "victron",
            "transport": "ble",
            "address": shunt.address,
            "encryption_key": KEY,
            "interval": 1.0,
            "scan_timeout": 0.4,
        },
    )
    async with m:
        await m.wait_for_state("bt.shunt", "connected", timeout=5)
        await wait_until(lambda: "soc" in values(m, "bt.shunt"))
        got = values(m, "bt.shunt")
        assert got["voltage"] == pytest.approx(model.voltage(), abs=0.01)
        assert got["current"] == pytest.approx(model.current(), abs=0.01)
        assert shunt.connects == 0  # advertisements only
        assert await bms(m, "bt.shunt").health_check()


async def test_victron_wrong_key_is_refused_not_a_wrong_number(
    make_manager: Make, air: FakeRadio
) -> None:
    """Test that a wrong key is counted as a bad frame and no value is reported."""
    shunt = air.add(VictronAdvertiser("C0:00:00:00:00:21", KEY))
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    wrong = "ff" + KEY[2:]
    m.add_connection(
        "bt.shunt",
        "bms",
        {
            "parser": "victron",
            "transport": "ble",
            "address": shunt.address,
            "encryption_key": wrong,
            "error_streak": 1000,
        },
    )
    async with m:
        await wait_until(lambda: m.get_status("bt.shunt")["stats"]["errors"] >= 3)
        assert "voltage" not in values(m, "bt.shunt")


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"parser": "daly", "transport": "ble"}, "address"),
        ({"parser": "victron", "transport": "ble", "address": "x"}, "encryption_key"),
        (
            {"parser": "victron", "transport": "ble", "address": "x", "encryption_key": "12"},
            "encryption_key",
        ),
        ({"parser": "ant", "port": "/dev/ttyUSB0"}, "parser"),
    ],
)
def test_bad_bms_ble_configs_name_the_field(config: dict[str, Any], field: str) -> None:
    """Test that a BLE BMS config missing what it needs is refused with the field named."""
    with pytest.raises(ConfigError) as err:
        ConnectionManager().add_connection("bt.x", "bms", config)
    assert field in str(err.value)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"address": "x", "notify": {"t": {"uuid": "zz"}}}, "not a GATT UUID"),
        ({"address": "x", "read": {"rssi": {"uuid": "2a19"}}}, "rssi"),
        ({"address": "x", "notify": {"a": {"uuid": "2a19"}, "b": {"uuid": "2a19"}}}, "once"),
        ({"address": "x", "read": {"t": {"uuid": "2a19", "format": "u64"}}}, "format"),
    ],
)
def test_bad_ble_configs_say_why(config: dict[str, Any], needle: str) -> None:
    """Test that bad characteristic configs are refused with the reason."""
    with pytest.raises(ConfigError) as err:
        ConnectionManager().add_connection("bt.x", "ble", config)
    assert needle in str(err.value)


def test_value_formats_round_trip() -> None:
    """Test that every numeric format decodes what it encodes, scaled, and refuses what does not fit."""
    for fmt, value in [
        ("u8", 200),
        ("i8", -5),
        ("u16le", 65000),
        ("i16be", -300),
        ("u32le", 7),
        ("i32le", -7),
    ]:
        spec = BleCharacteristic(uuid="2a19", format=fmt)
        assert decode_value(spec, encode_value(spec, value)) == value
    scaled = BleCharacteristic(uuid="2a6e", format="i16le", scale=0.01)
    assert encode_value(scaled, -12.34) == (-1234).to_bytes(2, "little", signed=True)
    assert decode_value(BleCharacteristic(uuid="2a00", format="utf8"), b"abc\x00") == "abc"
    assert decode_value(BleCharacteristic(uuid="2a00"), b"\x01\xff") == "01ff"
    with pytest.raises(ConfigError, match="does not fit"):
        encode_value(BleCharacteristic(uuid="2a19", format="u8"), 300)
    with pytest.raises(ConfigError, match="not a number"):
        encode_value(BleCharacteristic(uuid="2a19", format="u8"), "on")
