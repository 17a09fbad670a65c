"""The http driver against a real HTTP server: the simulated device served by uvicorn."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import trustme

from edgelink import (
    ConfigError,
    ConnectError,
    ConnectionManager,
    ConnectTimeout,
    DeviceError,
    PermanentError,
    ProtocolError,
)
from edgelink.drivers._socket import tcp_socket_options
from edgelink.drivers.http import HttpConnection, Request, parse_tag, resolve_pointer
from edgelink.errors import classify
from edgelink.registry import DriverRegistry
from edgelink.sim.http import HttpDevice, HttpSimulator
from edgelink.state import Reason
from edgelink.testing import ManualClock

Make = Callable[..., ConnectionManager]
NO_WATCHDOG = 1e9
KEY = "k-3f9a-secret"


@pytest.fixture(scope="module")
def server() -> Iterator[HttpSimulator]:
    """One uvicorn thread serving the simulated device for the tests that keep it running."""
    with HttpSimulator() as s:
        yield s


@pytest.fixture
def sim(server: HttpSimulator) -> HttpSimulator:
    """The shared server with a fresh simulated device (no api key)."""
    server.device = HttpDevice()
    return server


@pytest.fixture
def keyed_sim(server: HttpSimulator) -> HttpSimulator:
    """The shared server with a fresh device that wants an api key."""
    server.device = HttpDevice(api_key=KEY)
    return server


@pytest.fixture
async def own_sim() -> AsyncIterator[HttpSimulator]:
    """A simulated device of this test alone, to stop and start."""
    async with HttpSimulator() as s:
        yield s


@pytest.fixture
async def conns() -> AsyncIterator[list[HttpConnection]]:
    """Standalone drivers, disconnected at teardown."""
    made: list[HttpConnection] = []
    yield made
    for c in made:
        await c.disconnect()


async def connected(made: list[HttpConnection], sim: HttpSimulator, **extra: Any) -> HttpConnection:
    conn = HttpConnection("dev", {"base_url": sim.url, **extra})
    made.append(conn)
    await conn.connect()
    assert await conn.health_check()
    return conn


async def wait_until(pred: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


async def advance_until(clock: ManualClock, pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Advance the manual clock through short timers until ``pred()`` holds."""
    async with asyncio.timeout(timeout):
        while not pred():
            delays = [d for d in clock.pending() if d < 5]
            if delays:
                await clock.advance(delays[0])
            else:
                await asyncio.sleep(0.005)


# --------------------------------------------------------------- tag syntax


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("/status", Request("GET", "/status", None)),
        ("/status#/power/ac", Request("GET", "/status", ("power", "ac"))),
        ("/status#", Request("GET", "/status", ())),
        ("status?x=1#/a/0", Request("GET", "status?x=1", ("a", "0"))),
        ("/s#/a~1b/c~0d", Request("GET", "/s", ("a/b", "c~d"))),
        ("/s#/with%20space", Request("GET", "/s", ("with space",))),
        ("POST /rpc/Shelly.GetStatus", Request("POST", "/rpc/Shelly.GetStatus", None)),
        ("patch /settings", Request("PATCH", "/settings", None)),
    ],
)
def test_parse_tag(tag: str, expected: Request) -> None:
    """Test that tags split into method, path and JSON pointer tokens."""
    assert parse_tag(tag) == expected


@pytest.mark.parametrize(
    ("tag", "text"),
    [
        ("", "empty"),
        ("#/a", "no path"),
        ("http://evil/x", "relative to base_url"),
        ("//host/x", "relative to base_url"),
        ("/a b", "spaces"),
        ("/s#power", "starts with '/'"),
    ],
)
def test_parse_tag_refuses_bad_tags(tag: str, text: str) -> None:
    """Test that malformed tags are refused with the reason."""
    with pytest.raises(ValueError, match=text):
        parse_tag(tag)


DOC = {"power": {"ac": 1.5, "phases": [1, 2, 3]}, "a/b": {"c~d": "x"}, "": 0}


@pytest.mark.parametrize(
    ("tokens", "value"),
    [
        ((), DOC),
        (("power", "ac"), 1.5),
        (("power", "phases", "2"), 3),
        (("a/b", "c~d"), "x"),
        (("",), 0),
    ],
)
def test_resolve_pointer(tokens: tuple[str, ...], value: Any) -> None:
    """Test that RFC 6901 pointers select members, array elements and escaped names."""
    assert resolve_pointer(DOC, tokens) == value


@pytest.mark.parametrize(
    ("tokens", "text"),
    [
        (("nope",), "no member 'nope' at the document root"),
        (("power", "dc"), "no member 'dc' at /power"),
        (("power", "phases", "3"), "past the end of the array at /power/phases"),
        (("power", "phases", "01"), "not an array index"),
        (("power", "phases", "-"), "not an array index"),
        (("power", "ac", "x"), "/power/ac is a float"),
    ],
)
def test_resolve_pointer_errors_say_where(tokens: tuple[str, ...], text: str) -> None:
    """Test that a pointer to nothing is a DeviceError naming how far it got."""
    with pytest.raises(DeviceError, match=re.escape(text)):
        resolve_pointer(DOC, tokens, where="tag")


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("config", "path", "text"),
    [
        ({}, "config.base_url", "Field required"),
        ({"base_url": "http://h", "apikey": "x"}, "config.apikey", "did you mean 'api_key'"),
        ({"base_url": "ftp://x"}, "config.base_url", "http:// or https://"),
        ({"base_url": "http://"}, "config.base_url", "with a host"),
        ({"base_url": "http://h/#x"}, "config.base_url", "fragment"),
        ({"base_url": "http://h", "headers": {"A": 1}}, "config.headers.A", "valid string"),
        ({"base_url": "http://h", "api_key": ""}, "config.api_key", "at least 1 character"),
        ({"base_url": "http://h", "health_path": "/h#/x"}, "config.health_path", "to GET"),
        ({"base_url": "http://h", "health_path": "PUT /h"}, "config.health_path", "to GET"),
        ({"base_url": "http://h", "timeout": 0}, "config.timeout", "greater than 0"),
        ({"base_url": "http://h", "write_method": "GET"}, "config.write_method", "'PUT', 'POST'"),
        ({"base_url": "http://h", "verify": 1}, "config.verify", "CA bundle"),
        ({"base_url": "http://h", "keepalive_idle": -1}, "config.keepalive_idle", "equal to 1"),
    ],
)
def test_bad_config_names_the_key(config: dict[str, Any], path: str, text: str) -> None:
    """Test that each bad config key is a ConfigError naming its path and the reason."""
    with pytest.raises(ConfigError, match=text) as info:
        HttpConnection("dev", config)
    assert info.value.path == path


async def test_missing_ca_bundle_is_a_config_error() -> None:
    """Test that an unreadable CA bundle fails the connect as a ConfigError on config.verify."""
    conn = HttpConnection("dev", {"base_url": "https://127.0.0.1:1", "verify": "/nonexistent.pem"})
    with pytest.raises(ConfigError) as info:
        await conn.connect()
    assert info.value.path == "config.verify"


def test_registered_as_a_driver() -> None:
    """Test that 'http' is found by the driver registry."""
    assert DriverRegistry().get("http") is HttpConnection


def test_socket_options_match_the_tcp_tuning() -> None:
    """Test that the options given to httpx are keepalive, NODELAY and TCP_USER_TIMEOUT."""
    import socket

    opts = set(tcp_socket_options(keepalive_idle=11, user_timeout=7))
    assert (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) in opts
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in opts
    assert (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 11) in opts
    assert (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 7000) in opts


# -------------------------------------------------------------- data plane


async def test_read_with_and_without_pointer(
    conns: list[HttpConnection], sim: HttpSimulator
) -> None:
    """Test that reads return JSON values, the pointed-to part, or text, and count traffic."""
    conn = await connected(conns, sim)
    sim.device.set_status("power/ac", 2345.5)
    assert await conn.read("/status#/power/ac") == 2345.5
    assert await conn.read("/status#/power/phases/1") == 500.0
    assert await conn.read("/status#/device/serial") == "SIM-0001"
    doc = await conn.read("/status")
    assert doc["state"] == "running" and doc["power"]["ac"] == 2345.5
    assert await conn.read("/values/setpoint") == 21.5
    assert await conn.read("/text") == "edgelink simulated device SIM-0001\n"
    stats = conn.stats.as_dict()
    assert stats["packets_sent"] == stats["packets_received"] == 7  # 6 reads + the health check
    assert stats["bytes_received"] > len(str(doc))


async def test_write_sends_json_with_the_method(
    conns: list[HttpConnection], sim: HttpSimulator
) -> None:
    """Test that writes PUT by default, POST/PATCH when the tag says, always as JSON."""
    conn = await connected(conns, sim)
    await conn.write("/values/setpoint", 22.5)
    await conn.write("POST /values/mode", "eco")
    await conn.write("PATCH /settings", {"limit_w": 3000})
    assert sim.device.values == {"setpoint": 22.5, "mode": "eco"}
    assert sim.device.settings == {"mode": "auto", "limit_w": 3000}
    post = await connected(conns, sim, write_method="POST")
    await post.write("/settings", {"mode": "eco"})  # POST merges in the simulator
    assert sim.device.settings == {"mode": "eco", "limit_w": 3000}
    with pytest.raises(DeviceError, match="whole value"):
        await conn.write("/settings#/mode", "x")
    with pytest.raises(DeviceError, match="not allowed"):
        await conn.write("GET /settings", 1)
    with pytest.raises(DeviceError, match="JSON"):
        await conn.write("/values/x", float("nan"))
    assert conn.stats.as_dict()["bytes_sent"] == len(b'22.5"eco"{"limit_w":3000}')


@pytest.mark.parametrize(
    ("tag", "error", "text"),
    [
        ("/values/unknown", DeviceError, "HTTP 404"),
        ("PUT /values/x", DeviceError, "not allowed"),
        ("/status#/power/xx", DeviceError, "no member 'xx' at /power"),
        ("http://other/x", DeviceError, "relative to base_url"),
    ],
)
async def test_device_refusals_are_device_errors(
    conns: list[HttpConnection], sim: HttpSimulator, tag: str, error: type[Exception], text: str
) -> None:
    """Test that 4xx answers, bad tags and pointers to nothing are DeviceErrors."""
    conn = await connected(conns, sim)
    with pytest.raises(error, match=re.escape(text)) as info:
        await conn.read(tag)
    if "404" in text:
        assert isinstance(info.value, DeviceError) and info.value.code == 404
    assert conn.is_connected()


async def test_garbage_json_is_a_protocol_error(
    conns: list[HttpConnection], sim: HttpSimulator
) -> None:
    """Test that a body announced as JSON that does not parse is a ProtocolError."""
    conn = await connected(conns, sim)
    sim.device.garbage = True
    with pytest.raises(ProtocolError, match="invalid JSON"):
        await conn.read("/status")
    with pytest.raises(ProtocolError, match="invalid JSON"):
        await conn.read("/status#/power/ac")
    assert await conn.read("/text") == "edgelink simulated device SIM-0001\n"  # text is text


async def test_server_errors_and_timeouts_are_transient(
    conns: list[HttpConnection], own_sim: HttpSimulator
) -> None:
    """Test that 5xx is a ConnectError, a slow answer a ConnectTimeout, a dead port a ConnectError."""
    conn = await connected(conns, own_sim, timeout=0.1)
    own_sim.device.healthy = False
    with pytest.raises(ConnectError, match="HTTP 503"):
        await conn.health_check()
    own_sim.device.healthy = True
    own_sim.device.response_delay = 0.4
    with pytest.raises(ConnectTimeout, match=r"no answer within 0\.1 s"):
        await conn.read("/status")
    own_sim.device.response_delay = 0.0
    await asyncio.to_thread(own_sim.stop)
    with pytest.raises(ConnectError, match="GET /status"):
        await conn.read("/status")


async def test_api_key_is_sent_and_never_shown(
    conns: list[HttpConnection], keyed_sim: HttpSimulator
) -> None:
    """Test that the api key authenticates (header or Bearer) and appears in no repr or status."""
    conn = await connected(conns, keyed_sim, api_key=KEY)
    assert await conn.read("/values/mode") == "auto"
    bearer = await connected(
        conns, keyed_sim, api_key=KEY, api_key_header="Authorization", api_key_prefix="Bearer "
    )
    assert await bearer.read("/values/mode") == "auto"
    for c in (conn, bearer):
        assert KEY not in repr(c)
        assert KEY not in str(c.get_status())
    nokey = HttpConnection("dev", {"base_url": keyed_sim.url})
    conns.append(nokey)
    await nokey.connect()
    with pytest.raises(PermanentError, match=r"authentication failed \(api_key missing\)"):
        await nokey.read("/status")


# ------------------------------------------------------------ supervision


async def test_wrong_api_key_is_the_error_state(
    make_manager: Make, keyed_sim: HttpSimulator
) -> None:
    """Test that a 401 on the first health check ends in state error, reason auth, no retries."""
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("inv", "http", {"base_url": keyed_sim.url, "api_key": "wrong-key-77"})
    async with m:
        await m.wait_for_state("inv", "error", timeout=5)
        status = m.get_status("inv")
        assert status["reason"] == "auth"
        assert "HTTP 401" in status["last_error"]
        assert "wrong-key-77" not in str(status)
        assert status["reconnect_attempts"] == 0
        requests = keyed_sim.device.requests
        await asyncio.sleep(0.2)
        assert keyed_sim.device.requests == requests  # no retries


async def test_failing_health_endpoint_reconnects(
    make_manager: Make, sim: HttpSimulator, clock: ManualClock
) -> None:
    """Test that a failing /health drops the link, attempts fail while it fails, then it is back."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=5)
    m.add_connection("inv", "http", {"base_url": sim.url})
    async with m:
        await m.wait_for_state("inv", "connected", timeout=5)
        sim.device.healthy = False
        await clock.wait_for_timer(lambda d: d == 5)
        await clock.advance(5)
        await m.wait_for_state("inv", "reconnecting", timeout=5)
        status = m.get_status("inv")
        assert status["reason"] == "health_check_failed"
        assert "HTTP 503" in status["last_error"]
        for _ in range(2):  # attempts while /health still fails
            await clock.advance(await clock.wait_for_timer(lambda d: d < 5))
        await wait_until(lambda: m.get_status("inv")["reconnect_attempts"] >= 1)
        assert m.get_status("inv")["status"] == "reconnecting"
        sim.device.healthy = True
        await advance_until(clock, lambda: m.get_status("inv")["status"] == "connected")
        assert m.get_status("inv")["stats"]["reconnects"] == 1


async def test_device_restart_mid_poll_resumes_with_one_poller(
    make_manager: Make, own_sim: HttpSimulator, clock: ManualClock
) -> None:
    """Test that polling survives a device restart: reconnect, resume, no duplicate poller."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=None)
    values: list[tuple[str, Any, str]] = []
    m.on_data(lambda cid, tag, value, quality, ts: values.append((tag, value, quality)))
    m.add_connection(
        "inv",
        "http",
        {"base_url": own_sim.url},
        poll=[{"tags": ["/status#/power/ac", "/status#/temperature"], "interval": 1.0}],
    )
    async with m:
        await m.wait_for_state("inv", "connected", timeout=5)
        await wait_until(lambda: len(values) >= 2)
        assert values[:2] == [
            ("/status#/power/ac", 1500.0, "good"),
            ("/status#/temperature", 41.5, "good"),
        ]
        await asyncio.to_thread(own_sim.stop)
        await clock.advance(1.0)  # the next poll round meets the dead device
        await m.wait_for_state("inv", "reconnecting", timeout=5)
        # The device is gone, not wrong: its last values are kept and marked stale.
        last = m.router.data.get("inv./status#/power/ac")
        assert last is not None
        assert (last.value, last.quality) == (1500.0, "stale")
        await asyncio.to_thread(own_sim.start)  # same port
        own_sim.device.set_status("power/ac", 999.0)
        await advance_until(clock, lambda: m.get_status("inv")["status"] == "connected")
        await advance_until(clock, lambda: ("/status#/power/ac", 999.0, "good") in values)
        pollers = [t for t in asyncio.all_tasks() if t.get_name() == "edgelink[inv].poll0"]
        assert len(pollers) == 1


async def test_garbage_json_drops_and_rebuilds_the_link(
    make_manager: Make, sim: HttpSimulator, clock: ManualClock
) -> None:
    """Test that a ProtocolError while polling drops the link and it is rebuilt."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=None)
    m.add_connection(
        "inv", "http", {"base_url": sim.url}, poll=[{"tags": ["/status#/power/ac"], "interval": 1}]
    )
    async with m:
        await m.wait_for_state("inv", "connected", timeout=5)
        sim.device.garbage = True
        await clock.advance(1.0)
        await m.wait_for_state("inv", "reconnecting", timeout=5)
        assert m.get_status("inv")["reason"] == "protocol_error"
        sim.device.garbage = False
        await advance_until(clock, lambda: m.get_status("inv")["status"] == "connected")


async def test_device_error_keeps_the_link(make_manager: Make, sim: HttpSimulator) -> None:
    """Test that a 404 through execute_with_retry is raised as is and the link stays up."""
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("inv", "http", {"base_url": sim.url})
    async with m:
        await m.wait_for_state("inv", "connected", timeout=5)
        with pytest.raises(DeviceError, match="HTTP 404"):
            await m.execute_with_retry("inv", lambda c: c.read("/values/none"))
        await m.execute_with_retry("inv", lambda c: c.write("/values/none", 1))
        assert await m.execute_with_retry("inv", lambda c: c.read("/values/none")) == 1
        status = m.get_status("inv")
        assert (status["status"], status["stats"]["reconnects"]) == ("connected", 0)


# ------------------------------------------------------------- simulator


def test_simulator_answers_its_routes() -> None:
    """Test the simulated device's routes, methods and errors without a server."""
    dev = HttpDevice()
    assert dev.handle("GET", "/health", {}, b"")[0] == 200
    assert dev.handle("DELETE", "/health", {}, b"")[0] == 405
    assert dev.handle("GET", "/nothing", {}, b"")[0] == 404
    assert dev.handle("PUT", "/values/x", {}, b"not json")[0] == 400
    assert dev.handle("PUT", "/settings", {}, b"[1]")[0] == 422
    assert dev.handle("POST", "/sim/health", {}, b'{"ok": false}')[0] == 200
    assert dev.handle("GET", "/health", {}, b"")[0] == 503
    keyed = HttpDevice(api_key="x")
    assert keyed.handle("GET", "/status", {}, b"")[0] == 401
    assert keyed.handle("GET", "/status", {"authorization": "Bearer x"}, b"")[0] == 200
    animated = HttpDevice(animate=True)
    assert 1000.0 <= animated.status()["power"]["ac"] <= 2000.0


def test_cli_sim_http_serves_and_stops_on_sigterm() -> None:
    """Test that `edgelink sim http --port 0` serves the device and exits 0 on SIGTERM."""
    cmd = [sys.executable, "-m", "edgelink.cli", "sim", "http", "--port", "0", "--api-key", "k"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.fullmatch(r"listening: http device on (http://127\.0\.0\.1:\d+)\n", line)
            assert match, line + (proc.stderr.read() if proc.stderr else "")
            url = match.group(1)
            assert httpx.get(f"{url}/health", headers={"X-API-Key": "k"}).json() == {"status": "ok"}
            assert httpx.get(f"{url}/health").status_code == 401
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ------------------------------------------------------------------- HTTPS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throw-away CA and a device certificate for 127.0.0.1, as PEM files."""
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "dev.key"))
    with open(d / "dev.pem", "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return {"ca": str(d / "ca.pem"), "cert": str(d / "dev.pem"), "key": str(d / "dev.key")}


@pytest.fixture(scope="module")
def https_sim(tls_files: dict[str, str]) -> Iterator[HttpSimulator]:
    """The simulated device behind HTTPS."""
    with HttpSimulator(certfile=tls_files["cert"], keyfile=tls_files["key"]) as s:
        yield s


async def test_https_with_the_device_ca(
    conns: list[HttpConnection], https_sim: HttpSimulator, tls_files: dict[str, str]
) -> None:
    """Test that HTTPS works with the device's CA bundle, and with verify false."""
    assert https_sim.url.startswith("https://")
    conn = await connected(conns, https_sim, verify=tls_files["ca"])
    assert await conn.read("/status#/device/serial") == "SIM-0001"
    loose = await connected(conns, https_sim, verify=False)
    assert await loose.read("/values/mode") == "auto"


async def test_untrusted_certificate_is_the_error_state(
    make_manager: Make, https_sim: HttpSimulator
) -> None:
    """Test that a certificate the system CAs do not trust ends in state error, no retries."""
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("inv", "http", {"base_url": https_sim.url})
    async with m:
        await m.wait_for_state("inv", "error", timeout=5)
        status = m.get_status("inv")
        assert "certificate was refused" in status["last_error"]
        assert status["reconnect_attempts"] == 0


async def test_refused_connect_is_classified_refused(conns: list[HttpConnection]) -> None:
    """Test that a port nobody listens on is reason ``refused`` (a hard failure for failover)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conn = HttpConnection("dev", {"base_url": f"http://127.0.0.1:{port}"})
    conns.append(conn)
    await conn.connect()
    with pytest.raises(ConnectError) as info:
        await conn.health_check()
    assert classify(info.value).reason == Reason.REFUSED
