"""Failover of serial, modbus_rtu, http and ads connections between two real peers.

Each driver gets a pair of real peers, the preferred one (0) and the
alternate (1), that can each be taken away and brought back:

- ``serial``: two `SerialPeer` devices behind two socat pty pairs (unplugged:
  socat killed, the port vanishes);
- ``modbus_rtu``: two socat pty pairs with a pymodbus RTU server on each;
- ``http``: two simulated devices served by uvicorn on two loopback ports;
- ``ads``: two ADS test PLCs on 127.0.0.1:48898 and 127.0.0.2:48898 (adslib
  dials no port but 48898, so the pair differs in address and AMS net id).

The same scenarios run for each: failover within the configured attempts and
a value per poll from the alternate, failback after the stable period, at
most one failback per hysteresis window, both down → backoff per round and
suspension over the set, and never two data links at once, counted as the
process's open pty handles (serial lines) or established TCP connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import Recorder
from edgelink import ConnectionManager, ConnectionState
from edgelink.sim.http import HttpSimulator
from edgelink.sim.modbus import ModbusDevice, ModbusServer
from edgelink.sim.serial import SerialLink
from edgelink.testing import ManualClock
from edgelink.testing.serial_peer import SerialPeer

S = ConnectionState
Make = Callable[..., ConnectionManager]
KINDS = ("serial", "modbus_rtu", "http", "ads")
#: Poll interval, probe interval and stable period; the clock is manual.
POLL = 1.0
SETTINGS: dict[str, Any] = {
    "failover_after": 2,
    "failback_after": 2.0,
    "failback_probe_interval": 1.0,
    "failback_holdoff": 60.0,
    "reconnect_initial_delay": 0.5,
    "health_check_interval": 1000.0,
    "fleet_recovery": False,
    "flap_dampening": False,
}
#: Real-time limits roomy enough for a loaded machine (uvicorn and pyads answer
#: from threads); the scenarios are timed on the manual clock, not by these.
TIMEOUTS: dict[str, Any] = {
    "connect_timeout": 2.0,
    "health_check_timeout": 2.0,
    "fast_path_timeout": 2.0,
    "request_timeout": 2.0,
    "watchdog_interval": 1e9,
}


async def until(pred: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait in real time (the clock stands still) until ``pred()``."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


def tcp_links(ip: str, port: int) -> int:
    """Count this process's established TCP connections to ``ip:port``."""
    return sum(
        1
        for c in psutil.Process(os.getpid()).net_connections(kind="tcp")
        if c.raddr
        and c.raddr.ip == ip
        and c.raddr.port == port
        and c.status == psutil.CONN_ESTABLISHED
    )


def pty_handles(device: str) -> int:
    """Count this process's open file handles on the pty ``device`` (``/dev/pts/N``)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")
            count += target == device
    return count


class Pair:
    """Two peers of one driver: 0 the preferred, 1 the alternate."""

    type: str
    config: dict[str, Any]
    endpoints: list[dict[str, Any]]
    tag: str
    #: The tag's value at each peer (tells which peer a datapoint came from).
    values: tuple[Any, Any]
    #: A failed connect to a peer that is away is a hard failure (refused).
    hard: bool

    async def down(self, i: int) -> None:
        """Take peer ``i`` away."""
        raise NotImplementedError

    async def up(self, i: int) -> None:
        """Bring peer ``i`` back."""
        raise NotImplementedError

    def links(self, i: int) -> int:
        """Count this process's live links to peer ``i``."""
        raise NotImplementedError


class PtyLinks(Pair):
    """Counts handles on the driver's end of two pty pairs (the pts changes at each plug)."""

    def __init__(self) -> None:
        self._pts = ["", ""]

    def note(self, i: int, path: Path) -> None:
        self._pts[i] = os.path.realpath(path)

    def links(self, i: int) -> int:
        return pty_handles(self._pts[i]) if self._pts[i] else 0


class SerialPair(PtyLinks):
    type = "serial"
    tag = "temperature"
    values = ("11.5", "22.5")
    hard = False

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.peers = [
            SerialPeer(folder / f"tty{i}", values={self.tag: v}) for i, v in enumerate(self.values)
        ]
        self.config = {"port": str(self.peers[0].path), "baudrate": 115200}
        self.endpoints = [{"name": "line A"}, {"port": str(self.peers[1].path), "name": "line B"}]

    async def up(self, i: int) -> None:
        await self.peers[i].plug()
        self.note(i, self.peers[i].path)

    async def down(self, i: int) -> None:
        await self.peers[i].unplug()


class ModbusRtuPair(PtyLinks):
    type = "modbus_rtu"
    tag = "hr:0"
    values = (111, 222)
    hard = False

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.lines = [SerialLink(folder / f"ttyRTU{i}") for i in range(2)]
        self.servers: list[ModbusServer] = []
        for line, value in zip(self.lines, self.values, strict=True):
            unit = ModbusDevice(1, registers=10)
            unit.hr[0] = value
            self.servers.append(ModbusServer([unit], serial_port=str(line.device_path)))
        self.config = {
            "port": str(self.lines[0].path),
            "unit_id": 1,
            "baudrate": 115200,
            "timeout": 1.0,
        }
        self.endpoints = [{}, {"port": str(self.lines[1].path)}]

    async def up(self, i: int) -> None:
        await self.lines[i].start()
        await self.servers[i].start()
        self.note(i, self.lines[i].path)

    async def down(self, i: int) -> None:
        await self.servers[i].stop()
        await self.lines[i].stop()


class HttpPair(Pair):
    type = "http"
    tag = "/values/setpoint"
    values = (20.5, 23.5)
    hard = True

    def __init__(self) -> None:
        self.sims = [HttpSimulator(), HttpSimulator()]
        for sim, value in zip(self.sims, self.values, strict=True):
            sim.device.set_value("setpoint", value)

    async def up(self, i: int) -> None:
        await asyncio.to_thread(self.sims[i].start)
        if i == 1:
            # The ports are known once both listen (0 asks for an ephemeral one).
            self.config = {"base_url": self.sims[0].url, "timeout": 2.0}
            self.endpoints = [{}, {"base_url": self.sims[1].url}]

    async def down(self, i: int) -> None:
        await asyncio.to_thread(self.sims[i].stop)

    def links(self, i: int) -> int:
        return tcp_links("127.0.0.1", self.sims[i].port)


class AdsPair(Pair):
    type = "ads"
    tag = "MAIN.iValue"
    values = (111, 222)
    hard = True
    hosts = ("127.0.0.1", "127.0.0.2")

    def __init__(self) -> None:
        from edgelink.testing.ads_peer import ADS_TCP_PORT, AdsPeer, port_in_use

        busy = [h for h in self.hosts if port_in_use(h)]
        if busy:
            pytest.skip(f"{', '.join(busy)}:{ADS_TCP_PORT} in use: the ADS pair needs that port")
        self.port = ADS_TCP_PORT
        self.plcs = [AdsPeer(host=h) for h in self.hosts]
        for plc, value in zip(self.plcs, self.values, strict=True):
            plc.add_symbol(self.tag, "INT", value)
        self.config = {"ams_net_id": "127.0.0.1.1.1", "host": "127.0.0.1", "timeout": 1.0}
        self.endpoints = [{}, {"ams_net_id": "127.0.0.2.1.1", "host": "127.0.0.2"}]

    async def up(self, i: int) -> None:
        await self.plcs[i].start()

    async def down(self, i: int) -> None:
        await self.plcs[i].stop()

    def links(self, i: int) -> int:
        return tcp_links(self.hosts[i], self.port)


@pytest.fixture(params=KINDS)
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    """Both peers of one driver, up; each taken down at teardown."""
    kind = request.param
    if kind == "ads":
        pytest.importorskip("pyads")
    factories: dict[str, Callable[[], Pair]] = {
        "serial": lambda: SerialPair(tmp_path),
        "modbus_rtu": lambda: ModbusRtuPair(tmp_path),
        "http": HttpPair,
        "ads": AdsPair,
    }
    made = factories[kind]()
    try:
        await made.up(0)
        await made.up(1)
        yield made
    finally:
        await made.down(0)
        await made.down(1)


class Sampler:
    """Counts both peers' links every few milliseconds while a test runs.

    ``probing`` marks the window in which a failback probe may hold its own
    short link to the preferred peer next to the data link.
    """

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.probing = False
        self.most = [0, 0]
        self.both = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            counts = [self.pair.links(0), self.pair.links(1)]
            self.most = [max(m, c) for m, c in zip(self.most, counts, strict=True)]
            if counts[0] and counts[1] and not self.probing:
                self.both += 1
            self.samples += 1
            await asyncio.sleep(0.005)

    async def __aenter__(self) -> Sampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def add(m: ConnectionManager, pair: Pair, **settings: Any) -> None:
    m.add_connection(
        "dev",
        pair.type,
        pair.config,
        settings={**SETTINGS, **settings},
        endpoints=pair.endpoints,
        poll=[{"tags": [pair.tag], "interval": POLL}],
    )


def active(m: ConnectionManager) -> int:
    return int(m.get_status("dev")["endpoints"]["active_index"])


def probes(m: ConnectionManager) -> int:
    return int(m.get_status("dev")["endpoints"]["probes"])


def connected_to(m: ConnectionManager, i: int) -> bool:
    return m.get_state("dev") is S.CONNECTED and active(m) == i


async def drive(clock: ManualClock, pred: Callable[[], bool], step: float = 0.5) -> None:
    """Advance the clock through short timers (backoff, polls) until ``pred()``."""
    async with asyncio.timeout(10):
        while not pred():
            delays = [d for d in clock.pending() if d < 5]
            if delays:
                await clock.advance(min(delays[0] + 1e-6, step))
            await asyncio.sleep(0.01)


async def poll_once(clock: ManualClock, seen: list[Any]) -> Any:
    """Advance one poll interval and return the value that poll delivered."""
    n = len(seen)
    await clock.advance(POLL)
    await until(lambda: len(seen) > n)
    return seen[-1]


async def fail_over(m: ConnectionManager, clock: ManualClock, pair: Pair) -> None:
    await pair.down(0)
    await drive(clock, lambda: connected_to(m, 1))


async def test_fails_over_and_back_without_losing_polls(
    make_manager: Make, clock: ManualClock, pair: Pair
) -> None:
    """Test that losing the preferred peer moves polling to the alternate and back, one link."""
    # The clock moves while calls wait for real answers: no stuck-call watchdog.
    m = make_manager(clock=clock, **TIMEOUTS)
    rec = Recorder(m)
    seen: list[Any] = []

    def on_data(cid: str, tag: str, value: Any, quality: str, ts: float) -> None:
        if quality == "good":
            seen.append(value)

    m.on_data(on_data)
    add(m, pair)
    async with Sampler(pair) as sampler:
        await m.start()
        await drive(clock, lambda: connected_to(m, 0))
        assert await poll_once(clock, seen) == pair.values[0]
        await until(lambda: pair.links(0) == 1)
        assert pair.links(1) == 0

        # The preferred peer goes away: the next attempts find nobody there.
        t_down = clock.monotonic()
        await fail_over(m, clock, pair)
        events = await rec.types()
        lost = events.index("disconnected")
        # The tries on the preferred peer: those before the failover (a slow
        # first connect to the alternate on a busy machine is not one of them).
        failed = events[lost : events.index("failover", lost)].count("reconnect_failed")
        [ev] = await rec.of("failover")
        # Refused is hard (the alternate at once); a vanished port gets its tries.
        assert ev.data["hard"] is pair.hard
        assert failed == (1 if pair.hard else SETTINGS["failover_after"])
        assert ev.data["from_index"] == 0 and ev.data["to_index"] == 1
        # Outage to alternate link: one poll to notice, then the tries on the preferred
        # peer with the initial backoff between them; nothing beyond that.
        backoffs = 0 if pair.hard else SETTINGS["failover_after"] - 1
        assert clock.monotonic() - t_down <= POLL + (backoffs + 1) * 0.5 + 1e-3
        assert pair.links(0) == 0 and pair.links(1) == 1
        # Every poll while on the alternate delivers its value.
        for _ in range(3):
            assert await poll_once(clock, seen) == pair.values[1]
        dp = m.router.data.get(f"dev.{pair.tag}")
        assert dp is not None and dp.metadata is not None
        assert dp.metadata["endpoint_index"] == 1

        # Back: probed every second, failback once it was healthy for failback_after.
        await pair.up(0)
        sampler.probing = True
        async with asyncio.timeout(15):
            while not connected_to(m, 0):
                n = probes(m)

                def probed(n: int = n) -> bool:
                    return probes(m) > n or active(m) == 0

                await clock.advance(1.0)
                await until(probed)
                # The probe that completes the stable period fails back at once, so
                # after a probe either its own link is gone (still on the alternate)
                # or the failback is under way: the loop condition then sees it.
                await until(lambda: active(m) == 0 or (pair.links(0) == 0 and pair.links(1) == 1))
                if active(m) == 0:
                    await until(lambda: connected_to(m, 0))
        sampler.probing = False
        # The failback came with the first probe after the good run was failback_after
        # long (probes run every failback_probe_interval; a probe that was still
        # waiting for a real answer when the clock moved counts at the next step).
        since = m.get_status("dev")["endpoints"]["healthy_since"]
        assert since is not None
        stable = clock.monotonic() - since
        after, step = SETTINGS["failback_after"], SETTINGS["failback_probe_interval"]
        assert after - 1e-6 <= stable <= after + step + 1e-6, stable
        [back] = await rec.of("failback")
        assert back.data["to_index"] == 0
        await until(lambda: pair.links(0) == 1)
        assert pair.links(1) == 0
        for _ in range(2):
            assert await poll_once(clock, seen) == pair.values[0]
    # Never more than one link to a peer, never a data link to both.
    assert sampler.samples > 3
    assert sampler.most == [1, 1] and sampler.both == 0


async def test_flapping_primary_fails_back_once_per_holdoff(
    make_manager: Make, clock: ManualClock, pair: Pair
) -> None:
    """Test that a preferred peer that keeps going away causes one failback per window."""
    m = make_manager(clock=clock, **TIMEOUTS)
    rec = Recorder(m)
    add(m, pair, failback_holdoff=30.0)
    await m.start()
    await drive(clock, lambda: connected_to(m, 0))

    async def bounce() -> None:
        await fail_over(m, clock, pair)
        await pair.up(0)

    await bounce()
    for _ in range(3):
        await clock.advance(1.0)
        await asyncio.sleep(0.02)
    await rec.wait_for("failback")
    await until(lambda: connected_to(m, 0))
    # It goes away again right after the failback, and comes back.
    await bounce()
    for _ in range(20):
        await clock.advance(1.0)
        await asyncio.sleep(0.02)
    await m.events.drain()
    assert len(await rec.of("failback")) == 1, "held by the hysteresis window"
    assert connected_to(m, 1) and pair.links(1) == 1
    await until(lambda: pair.links(0) == 0)
    # 30 s after the first failback the window is over: one more.
    for _ in range(12):
        await clock.advance(1.0)
        await asyncio.sleep(0.02)
    await rec.wait_for("failback", 2)
    await until(lambda: connected_to(m, 0))
    assert len(await rec.of("failback")) == 2


async def test_both_down_backs_off_per_round_and_suspends(
    make_manager: Make, clock: ManualClock, pair: Pair
) -> None:
    """Test that with both peers away the backoff grows per round and suspension follows."""
    m = make_manager(clock=clock, **TIMEOUTS)
    rec = Recorder(m)
    add(
        m,
        pair,
        reconnect_max_attempts=6,
        reconnect_initial_delay=1.0,
        suspend_cooldown=None,
        health_check_interval=1.0,
    )
    await m.start()
    await drive(clock, lambda: connected_to(m, 0))
    await pair.down(1)
    await pair.down(0)
    waits: list[float] = []
    async with asyncio.timeout(15):
        while m.get_state("dev") is not S.SUSPENDED:
            retry_at = m.get_status("dev")["next_retry_at"]
            if retry_at is not None:
                waits.append(round(retry_at - clock.time(), 3))
                await clock.advance(waits[-1] + 1e-6)
            elif m.get_state("dev") is S.CONNECTED:
                await clock.advance(1.0)  # the health check notices the loss
            await asyncio.sleep(0.01)
    switches = [(e.data["from_index"], e.data["to_index"]) for e in await rec.of("failover")]
    if pair.hard:
        # One refused attempt per endpoint, no wait between them; the backoff
        # before each round doubles: 1, 2, 4 (3 rounds = 6 attempts).
        assert waits == [1.0, 2.0, 4.0]
        assert switches == [(0, 1), (1, 0)] * 3
    else:
        # Two tries per endpoint (failover_after), the retry waiting the round's
        # backoff, the next endpoint at once: A A | B B, then the second round.
        assert waits == [1.0, 1.0, 1.0, 2.0, 2.0]
        assert switches == [(0, 1), (1, 0), (0, 1)]
    assert m.get_status("dev")["reconnect_attempts"] == 6
    assert len(await rec.of("max_retries_exceeded")) == 1
    assert pair.links(0) == 0 and pair.links(1) == 0
