"""The serial driver against a simulated device on a real socat pty pair."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Recorder
from edgelink import ConfigError, ConnectError, ConnectionManager, DeviceError, ProtocolError
from edgelink.drivers.framing import Framing
from edgelink.drivers.serial import SerialConnection
from edgelink.testing import ManualClock
from edgelink.testing.serial_peer import SerialPeer

NO_WATCHDOG = 1e9
Make = Callable[..., ConnectionManager]


def backoff_timer(delay: float) -> bool:
    return delay < 1.0


class Owner:
    """Stands in for the supervisor: records what the driver reports."""

    state = last_error = connected_at = None
    reconnect_attempts = 0

    def __init__(self) -> None:
        self.data: list[tuple[str, Any]] = []
        self.reasons: list[str | None] = []
        self.lost: list[BaseException | None] = []

    def on_data(
        self, tag: str, value: Any, quality: str, ts: float | None, reason: str | None = None
    ) -> None:
        self.data.append((tag, value))
        self.reasons.append(reason)

    def on_tx_drop(self) -> None: ...

    def on_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)

    def on_activity(self) -> None: ...

    def status_dict(self) -> dict[str, Any]:
        return {}


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[SerialPeer]:
    """A line-protocol device behind a fresh socat pty pair."""
    async with SerialPeer(tmp_path / "ttyS0", values={"temperature": "21.5"}) as p:
        yield p


def driver(peer: SerialPeer, **extra: Any) -> SerialConnection:
    return SerialConnection("rs", {"port": str(peer.path), "baudrate": 115200, **extra})


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_request_read_write_and_stats(peer: SerialPeer) -> None:
    """Test that requests get their answers over the pty and traffic is counted."""
    conn = driver(peer)
    await conn.connect()
    try:
        assert conn.is_connected()
        assert await conn.health_check() is True
        assert await conn.read("temperature") == "21.5"
        await conn.write("mode", "eco")
        assert peer.values["mode"] == "eco"
        assert await conn.request(b"PING") == b"PONG"
        stats = conn.stats.as_dict()
        assert stats["packets_sent"] == 4 and stats["packets_received"] == 4
        assert stats["bytes_sent"] == len(b"PING\ntemperature?\nmode=eco\nPING\n")
        assert peer.requests == 4
    finally:
        await conn.disconnect()
        await conn.disconnect()  # idempotent
    assert not conn.is_connected()


@pytest.mark.parametrize(
    "config",
    [
        {"framing": "line", "delimiter": "\r\n"},
        {"framing": "line", "delimiter": ";"},
        {"framing": "length"},
        {"framing": "length", "length_prefix": "u8"},
        {"framing": "length", "length_prefix": "u32le"},
    ],
    ids=["crlf", "semicolon", "u16be", "u8", "u32le"],
)
async def test_framings_round_trip(tmp_path: Path, config: dict[str, Any]) -> None:
    """Test that every framing carries requests and answers both ways."""
    framing = Framing.from_config(config)
    async with SerialPeer(tmp_path / "tty", framing=framing, values={"v": "7"}) as peer:
        conn = driver(peer, **config)
        await conn.connect()
        try:
            assert await conn.health_check()
            assert await conn.read("v") == "7"
            await conn.write("v", 8)
            assert peer.values["v"] == "8"
            sent = conn.stats.as_dict()["bytes_sent"]
            assert sent == sum(len(framing.encode(p)) for p in (b"PING", b"v?", b"v=8"))
        finally:
            await conn.disconnect()


async def test_length_frame_on_the_wire(tmp_path: Path) -> None:
    """Test that a length frame is the documented prefix plus payload, byte for byte."""
    framing = Framing.from_config({"framing": "length", "length_prefix": "u16le"})
    assert framing.encode(b"PING") == b"\x04\x00PING"
    async with SerialPeer(tmp_path / "tty", framing=framing) as peer:
        conn = driver(peer, framing="length", length_prefix="u16le")
        await conn.connect()
        try:
            await conn.send_data(b"\x04\x00PI")  # a frame split across two writes
            await conn.send_data(b"NG")
            assert await asyncio.wait_for(conn.receive_data(), 2) == b"PONG"
        finally:
            await conn.disconnect()


async def test_device_says_no_is_a_device_error(peer: SerialPeer) -> None:
    """Test that an ERR answer is a DeviceError and the link stays up."""
    conn = driver(peer)
    await conn.connect()
    try:
        with pytest.raises(DeviceError, match="unknown"):
            await conn.read("nothing")
        assert conn.is_connected()
        assert await conn.read("temperature") == "21.5"
    finally:
        await conn.disconnect()


async def test_unsolicited_messages_are_reported_or_queued(peer: SerialPeer) -> None:
    """Test that pushed tag=value messages become data and other messages wait for receive_data."""
    conn = driver(peer)
    owner = Owner()
    conn.attach(owner)  # type: ignore[arg-type]
    await conn.connect()
    try:
        peer.send_frame(b"power=230.5")
        peer.send_frame(b"hello device")
        assert await asyncio.wait_for(conn.receive_data(), 2) == b"hello device"
        assert owner.data == [("power", "230.5")]
        assert conn.stats.as_dict()["packets_received"] == 2
    finally:
        await conn.disconnect()


async def test_unsolicited_value_that_cannot_be_decoded_is_reported_bad(tmp_path: Path) -> None:
    """Test that a pushed tag=value frame whose value is not valid text is reported bad, with why."""
    config = {"framing": "length", "length_prefix": "u16be"}
    async with SerialPeer(tmp_path / "tty", framing=Framing.from_config(config)) as peer:
        conn = driver(peer, **config)
        owner = Owner()
        conn.attach(owner)  # type: ignore[arg-type]
        await conn.connect()
        try:
            peer.send_frame(b"power=\xff\xfe1")
            peer.send_frame(b"\xffx=1")  # no legible tag: not a datapoint, no address invented
            peer.send_frame(b"power=230.5")
            await wait_until(lambda: len(owner.data) == 2)
            assert owner.data == [("power", None), ("power", "230.5")]
            assert owner.reasons[0] is not None and "undecodable" in owner.reasons[0]
            assert await asyncio.wait_for(conn.receive_data(), 2) == b"\xffx=1"
            assert not owner.lost
        finally:
            await conn.disconnect()


@pytest.mark.parametrize(
    ("config", "garbage", "match"),
    [
        ({}, b"\xff\xfe\xfd\n", "undecodable"),
        ({"max_frame": 64}, b"x" * 200, "max_frame"),
        ({"framing": "length"}, b"\xff\xff", "announces"),
        ({"frame_timeout": 0.1}, b"PON", "partial message"),
        ({"framing": "length", "frame_timeout": 0.1}, b"\x00\x09PON", "partial message"),
    ],
    ids=["undecodable", "overlong", "bad-length", "cut-line", "cut-frame"],
)
async def test_garbage_is_a_protocol_error(
    tmp_path: Path, config: dict[str, Any], garbage: bytes, match: str
) -> None:
    """Test that garbage and cut-off messages fail the request with ProtocolError and drop the link."""
    framing = Framing.from_config(config)
    async with SerialPeer(tmp_path / "tty", framing=framing) as peer:
        peer.respond = False
        conn = driver(peer, **config)
        owner = Owner()
        conn.attach(owner)  # type: ignore[arg-type]
        await conn.connect()
        try:
            check = asyncio.ensure_future(conn.health_check())
            await wait_until(lambda: peer.requests == 1)
            peer.send_raw(garbage)
            with pytest.raises(ProtocolError, match=match):
                await asyncio.wait_for(check, 3)
            assert not conn.is_connected()
            assert len(owner.lost) == 1 and isinstance(owner.lost[0], ProtocolError)
            # The link is rebuilt with the input flushed: the next request works.
            peer.respond = True
            await conn.connect()
            assert await conn.health_check()
        finally:
            await conn.disconnect()


async def test_unplug_is_connect_error_and_replug_reopens(peer: SerialPeer) -> None:
    """Test that a vanished port is a ConnectError and the same path opens again once re-plugged."""
    conn = driver(peer)
    owner = Owner()
    conn.attach(owner)  # type: ignore[arg-type]
    await conn.connect()
    try:
        pending = asyncio.ensure_future(conn.request(b"PING"))
        peer.respond = False
        await peer.unplug()
        await wait_until(lambda: bool(owner.lost))
        assert isinstance(owner.lost[0], ConnectError)
        assert not isinstance(owner.lost[0], ProtocolError)
        assert "went away" in str(owner.lost[0])
        assert not conn.is_connected()
        with pytest.raises(ConnectError):
            await pending
        with pytest.raises(ConnectError, match="cannot open") as info:
            await conn.connect()
        assert info.value.cause is not None
        peer.respond = True
        await peer.plug()
        await conn.connect()
        assert await conn.read("temperature") == "21.5"
    finally:
        await conn.disconnect()


async def test_port_is_locked_while_open(peer: SerialPeer) -> None:
    """Test that a second driver cannot open a port in use and can once it is released."""
    first, second = driver(peer), driver(peer)
    await first.connect()
    try:
        with pytest.raises(ConnectError, match="cannot open"):
            await second.connect()
        await first.disconnect()
        await second.connect()
        assert await second.health_check()
    finally:
        await first.disconnect()
        await second.disconnect()


async def test_bad_tags_and_values_say_why(peer: SerialPeer) -> None:
    """Test that a tag or value the line protocol cannot carry is refused before sending."""
    conn = driver(peer)
    await conn.connect()
    try:
        with pytest.raises(ConfigError, match="not valid"):
            await conn.read("two words")
        with pytest.raises(ValueError, match="delimiter"):
            await conn.write("note", "line one\nline two")
        assert peer.requests == 0
        assert conn.is_connected()
    finally:
        await conn.disconnect()


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({}, "config.port"),
        ({"port": ""}, "config.port"),
        ({"port": "/dev/x", "baudrate": 0}, "config.baudrate"),
        ({"port": "/dev/x", "baudrate": "fast"}, "config.baudrate"),
        ({"port": "/dev/x", "bytesize": 9}, "config.bytesize"),
        ({"port": "/dev/x", "parity": "X"}, "config.parity"),
        ({"port": "/dev/x", "stopbits": 3}, "config.stopbits"),
        ({"port": "/dev/x", "rtscts": "yes"}, "config.rtscts"),
        ({"port": "/dev/x", "framing": "xml"}, "config.framing"),
        ({"port": "/dev/x", "delimiter": ""}, "config.delimiter"),
        ({"port": "/dev/x", "framing": "length", "length_prefix": "u24"}, "config.length_prefix"),
        (
            {"port": "/dev/x", "framing": "length", "length_prefix": "u8", "max_frame": 300},
            "config.max_frame",
        ),
        ({"port": "/dev/x", "max_frame": 0}, "config.max_frame"),
        ({"port": "/dev/x", "frame_timeout": -1}, "config.frame_timeout"),
        ({"port": "/dev/x", "encoding": "klingon"}, "config.encoding"),
        ({"port": "/dev/x", "health_request": "PI\nNG"}, "config.health_request"),
        ({"port": "/dev/x", "health_request": 5}, "config.health_request"),
    ],
)
def test_bad_config(config: dict[str, Any], path: str) -> None:
    """Test that a bad serial config is a ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        SerialConnection("rs", config)
    assert info.value.path == path
    assert info.value.connection_id == "rs"


async def test_unplug_reconnects_and_polling_resumes_once(
    make_manager: Make, peer: SerialPeer, clock: ManualClock
) -> None:
    """Test that unplug -> reconnecting, re-plug -> connected, and one poller reads again."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60)
    m.add_connection(
        "rs",
        "serial",
        {"port": str(peer.path), "baudrate": 115200},
        poll=[{"tags": ["temperature"], "interval": 1.0}],
    )
    got: list[tuple[str, Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, value, quality)))
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("rs", "connected", timeout=5)
        await wait_until(lambda: len(got) == 1)
        await peer.unplug()
        # The transport sees the port vanish: no health interval has to pass.
        await m.wait_for_state("rs", "reconnecting", timeout=2)
        assert await clock.wait_for_timer(backoff_timer) == 0.1
        await clock.advance(0.1)  # the port is still gone: this attempt fails
        await rec.wait_for("reconnect_failed")
        await peer.plug()
        peer.values["temperature"] = "22.0"
        await clock.advance(await clock.wait_for_timer(backoff_timer))
        await m.wait_for_state("rs", "connected", timeout=2)
        await wait_until(lambda: len(got) == 2)
        await clock.advance(1.0)
        await wait_until(lambda: len(got) == 3)
        assert got == [
            ("temperature", "21.5", "good"),
            ("temperature", "22.0", "good"),
            ("temperature", "22.0", "good"),
        ]
        pollers = [t for t in asyncio.all_tasks() if t.get_name() == "edgelink[rs].poll0"]
        assert len(pollers) == 1
        st = m.get_status("rs")
        assert st["stats"]["reconnects"] == 1
        lost = (await rec.of("disconnected"))[0]
        assert lost.data["reason"] == "connection_lost"


async def test_garbage_drops_and_rebuilds_the_link(
    make_manager: Make, peer: SerialPeer, clock: ManualClock
) -> None:
    """Test that line noise while connected is a protocol error: link dropped, then rebuilt."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=60)
    m.add_connection("rs", "serial", {"port": str(peer.path), "baudrate": 115200})
    rec = Recorder(m)
    async with m:
        await m.wait_for_state("rs", "connected", timeout=5)
        peer.send_raw(b"\x00\xff\xfe\x80\n")
        await m.wait_for_state("rs", "reconnecting", timeout=2)
        assert m.get_status("rs")["reason"] == "protocol_error"
        await clock.advance(await clock.wait_for_timer(backoff_timer))
        await m.wait_for_state("rs", "connected", timeout=2)
        assert await m.execute_with_retry("rs", lambda c: c.read("temperature")) == "21.5"
        lost = (await rec.of("disconnected"))[0]
        assert lost.data["reason"] == "protocol_error"
        assert "undecodable" in (lost.data["error"] or "")


async def test_device_error_in_a_poll_keeps_the_link(make_manager: Make, peer: SerialPeer) -> None:
    """Test that a polled tag the device refuses is reported bad while the link and other tags stay."""
    m = make_manager(health_check_interval=60)
    m.add_connection(
        "rs",
        "serial",
        {"port": str(peer.path), "baudrate": 115200},
        poll=[{"tags": ["nothing", "temperature"], "interval": 0.05}],
    )
    got: list[tuple[str, Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: got.append((tag, value, quality)))
    async with m:
        await m.wait_for_state("rs", "connected", timeout=5)
        await wait_until(lambda: got.count(("temperature", "21.5", "good")) >= 4)
        # Bad once per good->bad transition, not on every poll.
        assert got[:2] == [("nothing", None, "bad"), ("temperature", "21.5", "good")]
        assert got.count(("nothing", None, "bad")) == 1
        dp = m.router.data.get("rs.nothing")
        assert dp is not None and dp.as_dict()["reason"]
        assert m.get_status("rs")["stats"]["reconnects"] == 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_fds_leak_over_unplug_cycles(peer: SerialPeer) -> None:
    """Test that connecting through 20 unplug/re-plug cycles leaves no file descriptor open."""
    conn = driver(peer)
    owner = Owner()
    conn.attach(owner)  # type: ignore[arg-type]
    await conn.connect()
    await conn.disconnect()
    before = open_fds()
    for _ in range(20):
        await conn.connect()
        assert await conn.health_check()
        await peer.unplug()
        await wait_until(lambda: not conn.is_connected())
        await conn.disconnect()
        await peer.plug()
    assert len(owner.lost) == 20
    assert open_fds() == before
