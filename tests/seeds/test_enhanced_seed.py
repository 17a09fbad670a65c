"""The enhanced connection manager seed's code, run on edgelink with only its imports changed.

The document's examples live in ``enhanced_examples.py``; each runs here from
plain threads (the document's manager is thread-based) against the PING/PONG
device on loopback (`edgelink.testing.PingPongPeer`): the no-argument manager
against one listening on the CAT emulator's port 4532, the others on free
ports. The power readings of ``read_power_from_hardware`` come from the
device's ``power`` value or from a list of readings. Backoff runs on a
`ManualClock` that the test moves.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import enhanced_examples as seed
import pytest

from edgelink.compat import enhanced
from edgelink.compat.enhanced import ConnectionManager, ConnectionState, LogEvent, PowerMonitor
from edgelink.errors import ConfigError
from edgelink.testing import ManualClock, PingPongPeer

QUIET = {"health_check_interval": 3600.0}


def wait_until(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``check`` from this (plain) thread until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{getattr(check, '__name__', check)} did not hold in {timeout} s")
        time.sleep(0.01)


def threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


class Recorder:
    """An event handler in the document's shape that keeps what it hears."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, event_type: str, event_data: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((event_type, event_data))

    def types(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.events]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def peer() -> AsyncIterator[PingPongPeer]:
    async with PingPongPeer(values={"power": "230.5"}) as device:
        yield device


@pytest.fixture
async def cat_port_peer() -> AsyncIterator[PingPongPeer]:
    """The PING/PONG device on the no-argument manager's link, 127.0.0.1:4532."""
    try:
        device = PingPongPeer(port=4532, values={"power": "230.5"})
        await device.start()
    except OSError:
        pytest.skip("127.0.0.1:4532 is taken: the no-argument manager's link needs it")
    try:
        yield device
    finally:
        await device.stop()


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    before = threads()
    yield
    # The test's own worker (asyncio.to_thread) is the loop's, not the manager's.
    try:
        wait_until(lambda: not {t for t in threads() - before if not t.startswith("asyncio_")}, 10)
    except TimeoutError:
        raise AssertionError(f"threads left: {sorted(threads() - before)}") from None


def test_public_names_and_the_documents_definitions() -> None:
    """Test the states, events and constants against the document's own definitions."""
    assert {s.name: s.value for s in ConnectionState} == {
        s.name: s.value for s in seed.DOC_ConnectionState
    }
    doc_events = {k: v for k, v in vars(seed.DOC_LogEvent).items() if k.isupper()}
    assert {k: v for k, v in vars(LogEvent).items() if k.isupper()} == doc_events
    for name in (
        "MAX_RETRIES",
        "INITIAL_BACKOFF_MS",
        "MAX_BACKOFF_MS",
        "CONNECTION_TIMEOUT",
        "FAST_PATH_TIMEOUT",
        "POWER_POLL_INTERVAL",
        "ZERO_POWER_THRESHOLD",
    ):
        assert getattr(enhanced, name) == getattr(seed, f"DOC_{name}"), name
    assert enhanced.JITTER == 0.1
    for name in (
        "start_monitoring",
        "start_power_polling",
        "update_last_data_time",
        "get_connection_status",
        "mark_tx_drop",
        "safe_reconnect",
        "stop_monitoring",
        "add_event_handler",
    ):
        assert callable(getattr(ConnectionManager, name)), name


async def test_the_constants_are_the_links_supervision() -> None:
    """Test that the document's numbers are what the engine runs the link with."""
    manager = await asyncio.to_thread(ConnectionManager)
    try:
        spec = await asyncio.to_thread(manager.engine.get_spec, "link")
        s = spec.settings
        assert (s.connect_timeout, s.fast_path_timeout) == (3.0, 0.5)
        assert (s.reconnect_initial_delay, s.reconnect_max_delay) == (0.1, 10.0)
        assert (s.reconnect_max_attempts, s.reconnect_jitter) == (10, 0.1)
        assert str(s.reconnect_jitter_mode) == "proportional"  # ±10 %
        assert spec.config["port"] == 4532
    finally:
        await asyncio.to_thread(manager.stop_monitoring)


async def test_basic_usage_main_application_and_shutdown(
    cat_port_peer: PingPongPeer, no_leaked_threads: None
) -> None:
    """Test the no-argument manager as the document uses it, power polling, and its shutdown."""

    def run() -> None:
        conn_mgr, status = seed.basic_usage()
        try:
            assert status["monitoring"] is True
            wait_until(lambda: conn_mgr.get_connection_status()["state"] == "connected")
            conn_mgr.update_last_data_time()
            status = conn_mgr.get_connection_status()
            assert status["last_data_time"] == pytest.approx(time.time(), abs=5)
            # The polling thread reads the device's power once a second.
            wait_until(lambda: conn_mgr.get_connection_status()["power_watts"] == 230.5, 5)
            assert "edgelink-power-poll" in threads()
        finally:
            seed.graceful_shutdown(conn_mgr)
        assert conn_mgr.get_connection_status()["power_polling"] is False

        class Ui:  # the document's ui (not the document's)
            def __init__(self) -> None:
                self.shown: list[dict[str, Any]] = []

            def update_status(self, status: dict[str, Any]) -> None:
                self.shown.append(status)

        ui = Ui()
        conn_manager = seed.main_application(ui)
        conn_manager.stop_monitoring()
        assert ui.shown[0]["state"] in ("connecting", "connected", "disconnected")

    await asyncio.to_thread(run)


async def test_tx_drop_takes_the_fast_path(peer: PingPongPeer) -> None:
    """Test mark_tx_drop and safe_reconnect(fast_path=True): back with no backoff delay at all."""
    clock = ManualClock()
    config = {"host": "127.0.0.1", "port": peer.port}

    def run() -> None:
        conn_mgr = ConnectionManager(config=config, settings=QUIET, clock=clock)
        heard = Recorder()
        conn_mgr.add_event_handler(heard)
        conn_mgr.start_monitoring()
        try:
            wait_until(lambda: conn_mgr.state is ConnectionState.CONNECTED)
            sup = conn_mgr.engine.manager.get_supervisor("link")
            links = sup.link_generation
            seed.cat_emulator(conn_mgr)  # update_last_data_time, then mark_tx_drop
            wait_until(lambda: LogEvent.RECONNECT_OK in heard.types())
            assert conn_mgr.state is ConnectionState.CONNECTED
            types = heard.types()
            assert types.index(LogEvent.TX_DROP_DETECTED) < types.index(LogEvent.RECONNECT_OK)
            assert LogEvent.FAST_PATH_ACTIVE in types
            seed.handling_tx_drops(conn_mgr)  # and the manual trigger, blocking
            assert conn_mgr.state is ConnectionState.CONNECTED
            assert conn_mgr.safe_reconnect(fast_path=True) is True
            assert clock.monotonic() == 0.0  # no backoff delay was waited
            assert sup.link_generation == links + 3  # three new links: three reconnects
            _, data = next(e for e in heard.events if e[0] == LogEvent.TX_DROP_DETECTED)
            assert {"event", "timestamp", "state", "reconnect_count"} <= set(data)
            assert data["event"] == LogEvent.TX_DROP_DETECTED
        finally:
            conn_mgr.stop_monitoring()

    await asyncio.to_thread(run)


async def test_backoff_and_max_retries_end_in_failed() -> None:
    """Test 100 ms doubling to 10 s with ±10 % jitter, and FAILED after MAX_RETRIES attempts."""
    clock = ManualClock()
    config = {"host": "127.0.0.1", "port": free_port()}  # nobody listens: refused

    def run() -> None:
        conn_mgr = ConnectionManager(config=config, settings=QUIET, clock=clock)
        heard = Recorder()
        conn_mgr.add_event_handler(heard)
        alerts: list[str] = []
        restarts: list[bool] = []
        conn_mgr.add_event_handler(
            seed.event_monitoring(alerts.append, lambda: restarts.append(True))
        )
        conn_mgr.start_monitoring()
        loop = conn_mgr.engine.loop
        try:
            while conn_mgr.state is not ConnectionState.FAILED:
                asyncio.run_coroutine_threadsafe(clock.wait_for_sleepers(), loop).result(10)
                asyncio.run_coroutine_threadsafe(clock.advance_to_next(), loop).result(10)
            wait_until(lambda: restarts == [True])  # the document's handler: MAX_RETRIES_EXCEEDED
            assert LogEvent.RECONNECT_FAILED in heard.types()
            assert conn_mgr.get_connection_status()["state"] == "failed"
            assert conn_mgr.get_connection_status()["reconnect_count"] == 10
        finally:
            conn_mgr.stop_monitoring()
        delays = [data["delay"] for t, data in heard.events if t == LogEvent.RECONNECT_START]
        assert len(delays) == 10  # the waits before the 10 retries (MAX_RETRIES)
        for n, delay in enumerate(delays):
            nominal = min(0.1 * 2**n, 10.0)
            assert nominal * 0.9 <= delay <= nominal * 1.1, (n, delay)
        assert max(delays) > 10.0 * 0.9  # the cap was reached

    await asyncio.to_thread(run)


def test_power_monitor_warns_then_goes_critical() -> None:
    """Test 0 W: warning on the first reading, critical on the third, history of ten."""
    monitor = PowerMonitor()
    readings = [230.0, 0.0, 0.05, 0.0, 0.0, 5.0, 0.0]
    got = [monitor.update_power(w) for w in readings]
    assert got == [
        None,
        LogEvent.POWER_WARNING,
        None,
        LogEvent.POWER_CRITICAL,
        LogEvent.POWER_CRITICAL,
        None,
        LogEvent.POWER_WARNING,
    ]
    for w in range(20):
        monitor.update_power(float(w))
    assert monitor.get_history() == [float(w) for w in range(10, 20)]
    with pytest.raises(ValueError, match="watts must be a number, got 'x'"):
        monitor.update_power("x")  # type: ignore[arg-type]


async def test_power_interface_and_event_monitoring(peer: PingPongPeer) -> None:
    """Test the document's power loop on simulated hardware and its critical-power handler."""
    readings = iter([230.0, 0.0, 0.0, 0.0])

    def read_power_from_hardware() -> float:  # the simulated hardware (not the document's)
        return next(readings, 0.0)

    hardware = seed.power_interface(read_power_from_hardware)
    config = {"host": "127.0.0.1", "port": peer.port}

    def run() -> None:
        conn_mgr = hardware(config=config, settings=QUIET, power_poll_interval=0.01)
        heard = Recorder()
        alerts: list[str] = []
        conn_mgr.add_event_handler(heard)
        conn_mgr.add_event_handler(seed.event_monitoring(alerts.append, lambda: None))
        conn_mgr.start_monitoring()
        try:
            conn_mgr.start_power_polling()
            wait_until(lambda: alerts)
            assert alerts[0] == "Power critical: 0.0W"
            types = heard.types()
            assert types.index(LogEvent.POWER_WARNING) < types.index(LogEvent.POWER_CRITICAL)
            _, data = next(e for e in heard.events if e[0] == LogEvent.POWER_CRITICAL)
            assert data["consecutive_zero"] == 3 and data["power_watts"] == 0.0
            assert seed.power_monitoring(conn_mgr, 0.0) == LogEvent.POWER_CRITICAL
            assert seed.power_monitoring(conn_mgr, 240.0) is None
        finally:
            conn_mgr.stop_monitoring()

    await asyncio.to_thread(run)


def test_bad_input_says_what() -> None:
    """Test a link type that does not exist and a manager used after its shutdown."""
    with pytest.raises(ConfigError, match="nope"):
        ConnectionManager(type="nope")
    manager = ConnectionManager(config={"host": "127.0.0.1", "port": free_port()})
    manager.stop_monitoring()
    manager.stop_monitoring()  # idempotent
    with pytest.raises(RuntimeError, match="stopped: make a new one"):
        manager.start_monitoring()
