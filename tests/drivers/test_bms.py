"""The ``bms`` connection type against simulated BMS on real socat pty pairs (`BmsPeer`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Recorder
from edgelink import ConfigError, ConnectionManager
from edgelink.drivers.bms import BmsConnection
from edgelink.sim.bms import BmsFault, BmsModel
from edgelink.testing import ManualClock
from edgelink.testing.bms_peer import BmsPeer

NO_WATCHDOG = 1e9
Make = Callable[..., ConnectionManager]
ID = "bt.bms_001"


def backoff_timer(delay: float) -> bool:
    return delay < 1.0


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def config(peer: BmsPeer, parser: str, **extra: Any) -> dict[str, Any]:
    return {"parser": parser, "port": str(peer.path), "response_timeout": 0.5, **extra}


def values(m: ConnectionManager) -> dict[str, Any]:
    prefix = ID + "."
    return {
        dp.address[len(prefix) :]: dp.value
        for dp in (m.router.data.get(a) for a in m.router.data.addresses())
        if dp is not None and dp.address.startswith(prefix)
    }


@pytest.mark.parametrize("kind", ["daly", "jbd", "victron"])
async def test_every_field_lands_as_a_routed_datapoint(
    make_manager: Make, clock: ManualClock, tmp_path: Path, kind: str
) -> None:
    """Test that each protocol's 32 cells, frost, negative current and alarms reach the data space."""
    model = BmsModel(
        cells=32,
        temperatures=(-8.0, 4.0),
        alarms={"short_circuit", "low_soc"},
        animate=False,
    )
    async with BmsPeer(tmp_path / "ttyBMS", kind, model, period=0.05) as peer:
        m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60)
        m.add_connection(ID, "bms", config(peer, kind))
        async with m:
            await m.wait_for_state(ID, "connected", timeout=5)
            want = "cycles" if kind != "daly" else "alarms.short_circuit"
            await wait_until(lambda: want in values(m) and "voltage" in values(m))
            got = values(m)
            assert got["voltage"] == pytest.approx(model.voltage(), abs=0.05)
            assert got["current"] == -12.5
            assert got["soc"] == pytest.approx(model.soc(), abs=0.5)
            assert got["temps.1"] == -8.0
            if kind == "victron":
                assert got["alarms.low_soc"] is True and got["cycles"] == 42
            else:
                await wait_until(lambda: "cells.32" in values(m))
                got = values(m)
                assert got["cells.32"] == model.cell_voltages()[31]
                assert got["temps.2"] == 4.0
                assert got["alarms.short_circuit"] is True
                assert got["mos.charge"] is True
            assert m.router.data.get(f"{ID}.voltage") is not None
            st = m.get_status(ID)
            assert st["stats"]["errors"] == 0 and st["health"] == "healthy"


async def test_polls_on_the_clock_and_values_change(
    make_manager: Make, clock: ManualClock, tmp_path: Path
) -> None:
    """Test that a poll runs every interval on the owner's clock and picks up new values."""
    model = BmsModel(cells=4, animate=False)
    async with BmsPeer(tmp_path / "ttyBMS", "jbd", model) as peer:
        m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60)
        m.add_connection(ID, "bms", config(peer, "jbd", interval=10))
        async with m:
            await m.wait_for_state(ID, "connected", timeout=5)
            await wait_until(lambda: values(m).get("current") == -12.5 and peer.requests == 2)
            model.base_current = 30.0
            await asyncio.sleep(0.1)
            assert peer.requests == 2  # nothing before the interval has passed
            await clock.advance(10)
            # The poll's two requests go one after the other: wait for both.
            await wait_until(lambda: values(m).get("current") == 30.0 and peer.requests >= 4)
            await asyncio.sleep(0.1)
            assert peer.requests == 4  # one poll, not more


async def test_garbage_is_counted_and_the_link_stays(
    make_manager: Make, clock: ManualClock, tmp_path: Path
) -> None:
    """Test that noise before every frame is counted in stats and bad_frames, values still right."""
    async with BmsPeer(tmp_path / "ttyBMS", "daly", BmsModel(animate=False)) as peer:
        peer.fault = BmsFault.GARBAGE
        m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60)
        m.add_connection(ID, "bms", config(peer, "daly"))
        async with m:
            await m.wait_for_state(ID, "connected", timeout=5)
            await wait_until(lambda: "alarms.short_circuit" in values(m))
            conn = m.get_connection(ID)
            assert isinstance(conn, BmsConnection)
            assert conn.bad_frames >= 9 and conn.good_frames >= 9
            assert "garbage before a Daly frame" in (conn.last_bad_frame or "")
            assert m.get_status(ID)["stats"]["errors"] == conn.bad_frames
            assert m.get_status(ID)["status"] == "connected"
            assert values(m)["voltage"] == pytest.approx(
                BmsModel(animate=False).voltage(), abs=0.05
            )


@pytest.mark.parametrize("fault", [BmsFault.CORRUPT, BmsFault.CUT])
async def test_a_streak_of_bad_frames_drops_the_link(
    make_manager: Make, clock: ManualClock, tmp_path: Path, fault: BmsFault
) -> None:
    """Test that error_streak bad frames in a row are a protocol error; the link is rebuilt."""
    async with BmsPeer(tmp_path / "ttyBMS", "daly", BmsModel(animate=False)) as peer:
        peer.fault = fault
        m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60)
        m.add_connection(ID, "bms", config(peer, "daly", response_timeout=0.05, interval=0.5))
        rec = Recorder(m)
        async with m:
            await m.wait_for_state(ID, "connected", timeout=5)
            # A cut frame shows when the next answer's header arrives inside
            # its 13 bytes: four requests of one poll are three bad frames.
            await m.wait_for_state(ID, "reconnecting", timeout=5)
            assert m.get_status(ID)["reason"] == "protocol_error"
            assert values(m).get("voltage") is None  # never a wrong number
            lost = (await rec.of("disconnected"))[0]
            assert "bad frames in a row" in (lost.data["error"] or "")
            peer.fault = None
            await clock.advance(await clock.wait_for_timer(backoff_timer))
            await m.wait_for_state(ID, "connected", timeout=5)
            await wait_until(lambda: "voltage" in values(m))


class ClockOwner:
    """Stands in for the supervisor: gives the driver a manual clock, records what it reports."""

    state = last_error = connected_at = None
    reconnect_attempts = 0

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.data: dict[str, Any] = {}
        self.lost: list[BaseException | None] = []

    def on_data(
        self, tag: str, value: Any, quality: str, ts: float | None, reason: Any = None
    ) -> None:
        self.data[tag] = value

    def on_tx_drop(self) -> None: ...

    def on_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)

    def on_activity(self) -> None: ...

    def status_dict(self) -> dict[str, Any]:
        return {}


async def test_silence_fails_health(clock: ManualClock, tmp_path: Path) -> None:
    """Test that a BMS that stops answering is unhealthy once stale_after has passed; link stays."""
    async with BmsPeer(tmp_path / "ttyBMS", "jbd", BmsModel(animate=False)) as peer:
        conn = BmsConnection(ID, config(peer, "jbd", interval=1, stale_after=5))
        owner = ClockOwner(clock)
        conn.attach(owner)  # type: ignore[arg-type]
        await conn.connect()
        try:
            await wait_until(lambda: conn.good_frames == 2)
            assert owner.data["cycles"] == 42 and await conn.read("cycles") == 42
            # Advance only once the poll loop sleeps its interval: the poll's serial
            # round trip runs in real time, and a busy machine may not have ended it yet.
            await clock.wait_for_timer(lambda delay: delay == 1.0)
            await clock.advance(4)
            await wait_until(lambda: conn.good_frames >= 4)  # the poll the advance woke
            assert await conn.health_check() is True
            peer.fault = BmsFault.SILENCE
            await clock.wait_for_timer(lambda delay: delay == 1.0)
            await clock.advance(1)
            await wait_until(lambda: conn.unanswered >= 2)  # that poll goes unanswered
            assert await conn.health_check() is True  # 1 s of silence is within stale_after
            await clock.advance(5)  # 6 s since the last valid frame
            assert await conn.health_check() is False
            assert conn.is_connected() and owner.lost == []  # silence is not garbage
        finally:
            await conn.disconnect()


async def test_unplug_reconnects_and_polling_resumes(
    make_manager: Make, clock: ManualClock, tmp_path: Path
) -> None:
    """Test that an unplugged adapter is a lost link, re-plugged it connects and polls again."""
    async with BmsPeer(tmp_path / "ttyBMS", "jbd", BmsModel(animate=False)) as peer:
        m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60)
        m.add_connection(ID, "bms", config(peer, "jbd", interval=1))
        async with m:
            await m.wait_for_state(ID, "connected", timeout=5)
            await wait_until(lambda: "voltage" in values(m))
            await peer.unplug()
            await m.wait_for_state(ID, "reconnecting", timeout=3)
            await peer.plug()
            peer.model.base_current = 5.0
            await clock.advance(await clock.wait_for_timer(backoff_timer))
            await m.wait_for_state(ID, "connected", timeout=5)
            await wait_until(lambda: values(m).get("current") == 5.0)
            pollers = [t for t in asyncio.all_tasks() if t.get_name() == f"edgelink[{ID}].bms_poll"]
            assert len(pollers) == 1


@pytest.mark.parametrize(
    ("cfg", "path", "why"),
    [
        ({"parser": "jbd", "transport": "ble", "port": "/dev/x", "address": "AA"}, "port", "ble"),
        ({"parser": "jbd"}, "port", 'needs "port"'),
        ({"parser": "ant", "port": "/dev/x"}, "parser", "BLE"),
        ({"parser": "daly", "port": "/dev/x", "address": "AA"}, "address", "ble"),
        ({"parser": "daly", "port": "/dev/x", "interval": "2"}, "interval", ""),
    ],
)
def test_bad_config_says_where_and_why(cfg: dict[str, Any], path: str, why: str) -> None:
    """Test that a bad bms config is a ConfigError naming the key and the reason."""
    with pytest.raises(ConfigError) as info:
        ConnectionManager().add_connection(ID, "bms", cfg)
    assert info.value.path == f"connections.{ID}.config.{path}"
    assert why in str(info.value)


async def test_sim_command_line(tmp_path: Path) -> None:
    """Test that ``python -m edgelink.sim bms`` serves a BMS the driver reads."""
    link = tmp_path / "ttySIM"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgelink.sim",
        "bms",
        "--type",
        "daly",
        "--link",
        str(link),
        "--cells",
        "20",
        "--temperature",
        "-15",
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            line = await proc.stdout.readline()
        assert line.decode().strip() == f"listening: daly BMS on {link}"
        conn = BmsConnection(ID, {"parser": "daly", "port": str(link)})
        await conn.connect()
        try:
            # Cells and temperatures come in different frames of one poll: wait for both.
            state = conn.parser.state
            await wait_until(lambda: len(state.cells) == 20 and 1 in state.temperatures)
            assert state.temperatures[1] in (-16, -15, -14)
        finally:
            await conn.disconnect()
    finally:
        proc.terminate()
        assert await proc.wait() == 0
