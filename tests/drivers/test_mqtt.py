"""The mqtt driver against a real mosquitto started by these tests on a free loopback port."""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import psutil
import pytest
import trustme
from paho.mqtt.enums import CallbackAPIVersion

from edgelink import ConfigError, ConnectError, ConnectionManager, DeviceError
from edgelink.drivers.mqtt import MqttConnection, decode_payload, encode_payload
from edgelink.registry import DriverRegistry
from edgelink.testing import FaultMode, FaultProxy, ManualClock
from edgelink.testing.fault_proxy import DEFAULT_GARBAGE
from edgelink.testing.mosquitto import MosquittoBroker

Make = Callable[..., ConnectionManager]
NO_WATCHDOG = 1e9
ACL = """\
user alice
topic readwrite plant/#
topic readwrite edgelink/health/#

user bob
topic readwrite plant/#
"""


@pytest.fixture(scope="module")
def broker() -> Iterator[MosquittoBroker]:
    """One private mosquitto for the tests that do not stop it."""
    with MosquittoBroker() as b:
        yield b


@pytest.fixture(scope="module")
def auth_broker() -> Iterator[MosquittoBroker]:
    """A mosquitto that wants a password and applies an ACL (bob may not use health topics)."""
    with MosquittoBroker(users={"alice": "secret", "bob": "hunter2"}, acl=ACL) as b:
        yield b


@pytest.fixture
def own_broker() -> Iterator[MosquittoBroker]:
    """A mosquitto of this test alone, to kill and restart."""
    with MosquittoBroker() as b:
        yield b


class Peer:
    """A plain paho client on its own network thread: the other side of the broker."""

    def __init__(self, broker: MosquittoBroker, **auth: str) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"peer-{secrets.token_hex(4)}"
        )
        if auth:
            self.client.username_pw_set(auth["username"], auth["password"])
        self.messages: list[tuple[str, bytes, bool]] = []
        self._subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, bytes(m.payload), bool(m.retain))
        )
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(5)

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, 1)
        assert self._subscribed.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peer_factory() -> Iterator[Callable[..., Peer]]:
    """Make peers; every one is closed at teardown."""
    made: list[Peer] = []

    def make(broker: MosquittoBroker, **auth: str) -> Peer:
        made.append(Peer(broker, **auth))
        return made[-1]

    yield make
    for p in made:
        p.close()


async def wait_until(pred: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


async def advance_until(clock: ManualClock, pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Advance the manual clock through short timers (backoff, polls) until ``pred()`` holds."""
    async with asyncio.timeout(timeout):
        while not pred():
            delays = [d for d in clock.pending() if d < 5]
            if delays:
                await clock.advance(delays[0])
            else:
                await asyncio.sleep(0.005)


def cfg(broker: MosquittoBroker, **extra: Any) -> dict[str, Any]:
    return {"host": broker.host, "port": broker.port, **extra}


class Data:
    """Collects a manager's datapoints."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.points: list[tuple[str, str, Any, str]] = []
        manager.on_data(
            lambda cid, tag, value, quality, ts: self.points.append((cid, tag, value, quality))
        )

    def values(self, tag: str) -> list[Any]:
        return [v for _, t, v, _ in self.points if t == tag]


@pytest.fixture
async def standalone() -> AsyncIterator[list[MqttConnection]]:
    """Drivers without a manager; every one is disconnected at teardown."""
    conns: list[MqttConnection] = []
    yield conns
    for c in conns:
        await c.disconnect()


# --------------------------------------------------------------- payloads


@pytest.mark.parametrize(
    ("payload", "value"),
    [
        (b"21.5", 21.5),
        (b"42", 42),
        (b"true", True),
        (b"null", None),
        (b'{"a": [1, 2]}', {"a": [1, 2]}),
        (b'"quoted"', "quoted"),
        (b"on", "on"),
        (b"21,5", "21,5"),
        (b"", ""),
        ("grüße".encode(), "grüße"),
        (b"\xff\xfe\x00", b"\xff\xfe\x00"),
    ],
)
def test_decode_payload(payload: bytes, value: object) -> None:
    """Test that JSON payloads become values, other text stays text and non-UTF-8 stays bytes."""
    assert decode_payload(payload) == value
    assert type(decode_payload(payload)) is type(value)


@pytest.mark.parametrize(
    ("value", "payload"),
    [
        ("on", b"on"),
        (b"\x01\x02", b"\x01\x02"),
        (21.5, b"21.5"),
        (True, b"true"),
        (None, b"null"),
        ({"a": [1, "x"]}, b'{"a":[1,"x"]}'),
    ],
)
def test_encode_payload(value: object, payload: bytes) -> None:
    """Test that str is sent as text, bytes as they are and other values as compact JSON."""
    assert encode_payload(value) == payload


@pytest.mark.parametrize("value", [float("nan"), object()])
def test_encode_payload_refuses_what_json_cannot_say(value: object) -> None:
    """Test that NaN and unencodable objects are a DeviceError naming the type."""
    with pytest.raises(DeviceError, match=type(value).__name__):
        encode_payload(value)


# ----------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("config", "path", "text"),
    [
        ({}, "config.host", "Field required"),
        ({"host": "h", "subcribe": ["a"]}, "config.subcribe", "did you mean 'subscribe'"),
        ({"host": "h", "port": 0}, "config.port", "greater than or equal to 1"),
        ({"host": "h", "qos": 3}, "config.qos", "less than or equal to 2"),
        ({"host": "h", "subscribe": "a/b"}, "config.subscribe", "array"),
        ({"host": "h", "subscribe": ["ok", "a/#/b"]}, "config.subscribe[1]", "'#'"),
        ({"host": "h", "subscribe": ["sp+rt"]}, "config.subscribe[0]", "whole level"),
        (
            {"host": "h", "subscribe": [{"topic": "a", "qos": 5}]},
            "config.subscribe[0].qos",
            "less than or equal to 2",
        ),
        ({"host": "h", "subscribe": [{"topic": "a", "x": 1}]}, "config.subscribe[0].x", "unknown"),
        ({"host": "h", "password": "pw"}, "config.password", "needs a username"),
        ({"host": "h", "clean_session": False}, "config.client_id", "fixed client_id"),
        ({"host": "h", "protocol": "3"}, "config.protocol", "'3.1.1' or '5'"),
        ({"host": "h", "health_check": "pong"}, "config.health_check", "'echo' or 'ping'"),
        ({"host": "h", "health_topic": "a/+"}, "config.health_topic", "wildcards"),
        ({"host": "h", "will": {"topic": "a/#"}}, "config.will.topic", "wildcards"),
        ({"host": "h", "subscribe_timeout": 0}, "config.subscribe_timeout", "greater than 0"),
        ({"host": "h", "ca_file": "ca.pem"}, "config.ca_file", "tls is not"),
        ({"host": "h", "tls": True, "client_key": "k"}, "config.client_key", "client_cert"),
        ({"host": "h", "tls": True, "verify": "no"}, "config.verify", "valid boolean"),
    ],
)
def test_bad_config_names_the_key(config: dict[str, Any], path: str, text: str) -> None:
    """Test that each bad config key is a ConfigError naming its path and the reason."""
    with pytest.raises(ConfigError, match=text) as info:
        MqttConnection("m", config)
    assert info.value.path == path


def test_password_stays_out_of_repr_and_status() -> None:
    """Test that the password appears in neither the repr nor the status."""
    conn = MqttConnection("m", {"host": "h", "username": "alice", "password": "s3cr3t-pw"})
    assert "s3cr3t-pw" not in repr(conn)
    assert "s3cr3t-pw" not in str(conn.get_status())
    assert "alice" in repr(conn)


def test_tls_defaults_to_port_8883() -> None:
    """Test that the default port follows tls (1883 plain, 8883 TLS) and an explicit one wins."""
    assert MqttConnection("m", {"host": "h"}).port == 1883
    assert MqttConnection("m", {"host": "h", "tls": True}).port == 8883
    assert MqttConnection("m", {"host": "h", "tls": True, "port": 9000}).port == 9000


def test_registered_as_a_driver() -> None:
    """Test that 'mqtt' is found by the driver registry."""
    assert DriverRegistry().get("mqtt") is MqttConnection


# ------------------------------------------------------------- data plane


async def test_subscribed_messages_become_datapoints(
    make_manager: Make, broker: MosquittoBroker, peer_factory: Callable[..., Peer]
) -> None:
    """Test that messages on subscribed filters are reported with the topic as tag."""
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    data = Data(m)
    m.add_connection("mq", "mqtt", cfg(broker, subscribe=["plant/+/power", {"topic": "misc/#"}]))
    peer = peer_factory(broker)
    async with m:
        await m.wait_for_state("mq", "connected", timeout=5)
        peer.publish("plant/1/power", b"21.5")
        peer.publish("plant/2/power", b"off")
        peer.publish("misc/a/b", b'{"v": 1}')
        peer.publish("other/x", b"1")  # not subscribed
        await wait_until(lambda: len(data.points) >= 3)
        await asyncio.sleep(0.05)  # "other/x" would have arrived by now
        assert [(t, v) for _, t, v, _ in data.points] == [
            ("plant/1/power", 21.5),
            ("plant/2/power", "off"),
            ("misc/a/b", {"v": 1}),
        ]
        conn = m.get_connection("mq")
        assert isinstance(conn, MqttConnection)
        assert await conn.read("plant/1/power") == 21.5
        stats = m.get_status("mq")["stats"]
        assert stats["packets_received"] == 3
        assert stats["bytes_received"] == sum(
            2 + 2 + len(t) + len(p)
            for t, p in [
                ("plant/1/power", b"21.5"),
                ("plant/2/power", b"off"),
                ("misc/a/b", b'{"v": 1}'),
            ]
        )
        assert m.get_status("mq")["health"] == "healthy"
        # Subscriptions added and removed at run time take effect at once.
        conn.subscribe("runtime/#", qos=1)
        await wait_until(lambda: conn.subscriptions.is_confirmed())
        peer.publish("runtime/a", b"1")
        await wait_until(lambda: data.values("runtime/a") == [1])
        conn.unsubscribe("runtime/#")
        # The echo comes back after the broker handled the UNSUBSCRIBE sent before it.
        await conn.round_trip()
        peer.publish("runtime/a", b"2")
        peer.publish("plant/3/power", b"3")  # a marker behind it
        await wait_until(lambda: data.values("plant/3/power"))
        assert data.values("runtime/a") == [1]
        assert "runtime/#" not in conn.subscriptions


async def test_write_publishes_with_qos_and_retain(
    make_manager: Make, broker: MosquittoBroker, peer_factory: Callable[..., Peer]
) -> None:
    """Test that write() publishes JSON or text, QoS 1 waits for the PUBACK, retain sticks."""
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("mq", "mqtt", cfg(broker, qos=1, retain=True))
    peer = peer_factory(broker)
    peer.subscribe("cmd/#")
    async with m:
        await m.wait_for_state("mq", "connected", timeout=5)
        await m.execute_with_retry("mq", lambda c: c.write("cmd/setpoint", 21.5))
        await m.execute_with_retry("mq", lambda c: c.write("cmd/mode", "eco"))
        await m.execute_with_retry("mq", lambda c: c.write("cmd/cfg", {"on": True}))
        await wait_until(lambda: len(peer.messages) >= 3)
        assert [(t, p) for t, p, _ in peer.messages] == [
            ("cmd/setpoint", b"21.5"),
            ("cmd/mode", b"eco"),
            ("cmd/cfg", b'{"on":true}'),
        ]
        late = peer_factory(broker)
        late.subscribe("cmd/mode")
        await wait_until(lambda: late.messages)
        assert late.messages == [("cmd/mode", b"eco", True)]  # retained
        conn = m.get_connection("mq")
        assert isinstance(conn, MqttConnection)
        assert conn.publish("cmd/fast", "x", qos=0, retain=False) is None
        fut = conn.publish("cmd/acked", "y", qos=2)
        assert fut is not None
        await asyncio.wait_for(fut, 5)
        with pytest.raises(DeviceError, match="wildcards"):
            await conn.write("cmd/+", 1)
        assert m.get_status("mq")["stats"]["packets_sent"] == 5
        peer.publish("cmd/mode", b"", retain=True)  # clear the retained message


async def test_a_publish_from_a_datapoint_callback_goes_out(
    make_manager: Make, broker: MosquittoBroker, peer_factory: Callable[..., Peer]
) -> None:
    """Test that publishing inside the data callback (paho's read on the stack) works."""
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("mq", "mqtt", cfg(broker, subscribe=["in/#"]))
    peer = peer_factory(broker)
    peer.subscribe("out/#")
    async with m:
        await m.wait_for_state("mq", "connected", timeout=5)
        conn = m.get_connection("mq")
        assert isinstance(conn, MqttConnection)
        await wait_until(lambda: conn.subscriptions.is_confirmed())
        # A QoS 1 publish first: paho then calls on_publish for every QoS 0
        # packet it writes, under the lock its read holds during on_message.
        fut = conn.publish("out/first", "1", qos=1)
        assert fut is not None
        await asyncio.wait_for(fut, 5)
        acks: list[asyncio.Future[None] | None] = []

        def relay(cid: str, tag: str, value: Any, quality: str, ts: float) -> None:
            conn.publish("out/" + tag[3:], value, qos=0)
            acks.append(conn.publish("out/" + tag[3:] + "/acked", value, qos=1))

        m.on_data(relay)
        peer.publish("in/a", b"2")
        peer.publish("in/b", b"3")
        await wait_until(lambda: len(peer.messages) >= 5)
        assert [(t, p) for t, p, _ in peer.messages] == [
            ("out/first", b"1"),
            ("out/a", b"2"),
            ("out/a/acked", b"2"),
            ("out/b", b"3"),
            ("out/b/acked", b"3"),
        ]
        await asyncio.wait_for(asyncio.gather(*[a for a in acks if a is not None]), 5)
        assert len(acks) == 2


async def test_a_burst_the_socket_cannot_take_goes_out_in_order(
    standalone: list[MqttConnection], broker: MosquittoBroker, peer_factory: Callable[..., Peer]
) -> None:
    """Test that publishes beyond the socket buffer wait for it to drain and arrive in order."""
    peer = peer_factory(broker)
    peer.subscribe("burst/#")
    count, payload = 400, b"x" * 32768  # 13 MB: far more than the socket buffers hold
    async with FaultProxy(broker.host, broker.port) as proxy:
        conn = MqttConnection("m", {"host": proxy.address[0], "port": proxy.port})
        standalone.append(conn)
        await conn.connect()
        proxy.mode = FaultMode.STALL
        for i in range(count):
            assert conn.publish(f"burst/{i}", payload) is None
        await asyncio.sleep(0.2)
        assert proxy.bytes_up < count * len(payload)
        proxy.mode = FaultMode.PASS
        await wait_until(lambda: len(peer.messages) >= count, timeout=15)
        assert [t for t, _, _ in peer.messages] == [f"burst/{i}" for i in range(count)]
        assert conn.is_connected()


async def test_read_errors_say_why(
    standalone: list[MqttConnection], broker: MosquittoBroker
) -> None:
    """Test that read() of an unsubscribed, wildcard or silent topic is a DeviceError saying so."""
    conn = MqttConnection("m", cfg(broker, subscribe=["a/+"]))
    standalone.append(conn)
    await conn.connect()
    with pytest.raises(DeviceError, match="no subscription matches"):
        await conn.read("b/1")
    with pytest.raises(DeviceError, match="wildcards"):
        await conn.read("a/#")
    with pytest.raises(DeviceError, match="no message on 'a/1' yet"):
        await conn.read("a/1")


async def test_write_when_down_is_a_connect_error() -> None:
    """Test that publishing without a link is a ConnectError (execute_with_retry waits then)."""
    conn = MqttConnection("m", {"host": "127.0.0.1"})
    with pytest.raises(ConnectError, match="not connected"):
        await conn.write("a", 1)
    with pytest.raises(ConnectError, match="not connected"):
        await conn.health_check()


async def test_socket_is_tuned(standalone: list[MqttConnection], broker: MosquittoBroker) -> None:
    """Test that TCP_NODELAY (which paho leaves off), keepalive and TCP_USER_TIMEOUT are set."""
    conn = MqttConnection("m", cfg(broker, keepalive_idle=11, tcp_user_timeout=7))
    standalone.append(conn)
    await conn.connect()
    assert conn._client is not None
    sock = conn._client.socket()
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 11
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 7000
    assert threading.active_count() == 1 or all(
        "paho" not in t.name.lower() for t in threading.enumerate()
    )  # no network thread per client


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_both_protocol_versions(
    standalone: list[MqttConnection], broker: MosquittoBroker, protocol: str
) -> None:
    """Test that MQTT 3.1.1 and 5 both connect, echo the health probe and carry messages."""
    got: list[tuple[str, Any]] = []
    conn = MqttConnection("m", cfg(broker, protocol=protocol, qos=1, subscribe=[f"v/{protocol}"]))
    conn.report_data = lambda tag, value, **kw: got.append((tag, value))  # type: ignore[method-assign]
    standalone.append(conn)
    await conn.connect()
    assert await asyncio.wait_for(conn.health_check(), 2)
    await conn.write(f"v/{protocol}", [1, 2])
    await wait_until(lambda: got)
    assert got == [(f"v/{protocol}", [1, 2])]


async def test_health_check_modes_with_an_acl(
    standalone: list[MqttConnection], auth_broker: MosquittoBroker
) -> None:
    """Test that 'echo' needs the health topic (bob may not use it) and 'ping' needs nothing."""
    alice = MqttConnection("a", cfg(auth_broker, username="alice", password="secret"))
    bob_echo = MqttConnection("b", cfg(auth_broker, username="bob", password="hunter2"))
    bob_ping = MqttConnection(
        "p", cfg(auth_broker, username="bob", password="hunter2", health_check="ping")
    )
    standalone.extend([alice, bob_echo, bob_ping])
    for conn in standalone:
        await conn.connect()
    assert await asyncio.wait_for(alice.health_check(), 2)
    assert await asyncio.wait_for(bob_ping.health_check(), 2)
    with pytest.raises(TimeoutError):  # the broker drops bob's probe: no echo
        await asyncio.wait_for(bob_echo.health_check(), 0.3)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_burst_of_mixed_messages_arrives_whole_and_in_order(
    standalone: list[MqttConnection], broker: MosquittoBroker, protocol: str
) -> None:
    """Test that QoS 0 and 1 messages of every size (one byte to beyond a read) keep their order.

    QoS 0 PUBLISH packets already read are parsed by the driver itself, the
    rest by paho: both must agree on where each packet ends.
    """
    got: list[tuple[str, Any]] = []
    conn = MqttConnection("m", cfg(broker, protocol=protocol, qos=1, subscribe=["burst/#"]))
    conn.report_data = lambda tag, value, **kw: got.append((tag, value))  # type: ignore[method-assign]
    standalone.append(conn)
    await conn.connect()
    await conn.round_trip()  # subscribed
    sender = MqttConnection("s", cfg(broker, protocol=protocol))
    standalone.append(sender)
    await sender.connect()
    sizes = [1, 120, 130, 20_000, 70_000, 200_000]
    sent: list[tuple[str, Any]] = []
    for i in range(600):
        qos = 1 if i % 5 == 0 else 0
        topic = f"burst/{qos}/{i}/" + "t" * (i % 3 * 100)
        value: Any = "x" * sizes[i % len(sizes)] if i % 7 == 0 else i
        sender.publish(topic, value, qos=qos)
        sent.append((topic, value))
    await wait_until(lambda: len(got) >= len(sent), timeout=10)
    for prefix in ("burst/0/", "burst/1/"):  # MQTT keeps the order of one QoS
        assert [m for m in got if m[0].startswith(prefix)] == [
            m for m in sent if m[0].startswith(prefix)
        ]
    assert conn.stats.packets_received == len(sent)


def test_the_route_path_runs_on_uvloop(broker: MosquittoBroker) -> None:
    """Test that the driver's loop-driven I/O and the router's direct writes work on uvloop too."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[tuple[str, Any]]:
        m = ConnectionManager(watchdog_interval=NO_WATCHDOG)
        m.add_connection("mq", "mqtt", cfg(broker, subscribe=["uv/in/+", "uv/out/+"]))
        m.router.load_routes(
            {"version": "1.0", "routes": [{"id": "r", "from": "mq.uv/in/+", "to": "mq.uv/out/{1}"}]}
        )
        data = Data(m)
        async with m:
            await m.wait_for_state("mq", "connected", timeout=5)
            conn = m.get_connection("mq")
            assert isinstance(conn, MqttConnection)
            await conn.round_trip()
            for i in range(50):
                conn.publish(f"uv/in/{i}", i)
            await wait_until(lambda: len(data.values("uv/out/49")) == 1)
            assert await conn.health_check()
        return [(t, v) for _, t, v, _ in data.points if t.startswith("uv/out/")]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        out = runner.run(main())
    assert out == [(f"uv/out/{i}", i) for i in range(50)]


def test_publishes_are_taken_from_the_buffer_up_to_a_packet_paho_must_read() -> None:
    """Test that whole QoS 0 PUBLISH packets are taken, a cut or QoS 1 one is left to paho."""

    def publish(command: int, topic: bytes, payload: bytes, mid: bytes = b"") -> bytes:
        body = len(topic).to_bytes(2, "big") + topic + mid + payload
        n, length = len(body), bytearray()
        while True:
            n, digit = n >> 7, n & 0x7F
            length.append(digit | 0x80 if n else digit)
            if not n:
                break
        return bytes([command]) + bytes(length) + body

    from edgelink.drivers.mqtt._io import PahoClient

    client = PahoClient(CallbackAPIVersion.VERSION2)
    big = b"p" * 300
    qos1 = publish(0x32, b"q", b"1", mid=b"\x00\x07")
    stream = (
        publish(0x30, b"a", b"1") + publish(0x31, b"b/c", big) + qos1 + publish(0x30, b"d", b"")
    )
    client._edgelink_rbuf = stream
    taken: list[tuple[bytes, bytes, int]] = []
    assert client.take_publishes(lambda *m: taken.append(m), 10) == 2
    assert taken == [(b"a", b"1", 0), (b"b/c", big, 1)]
    assert client.buffered() == len(qos1) + 5  # paho reads the QoS 1 one and what follows
    cut = publish(0x30, b"e", big)
    client._edgelink_rbuf, client._edgelink_rpos = cut[:-1], 0
    assert client.take_publishes(lambda *m: taken.append(m), 10) == 0
    assert client.buffered() == len(cut) - 1
    client._edgelink_rbuf = publish(0x30, b"f", b"1") * 3
    assert client.take_publishes(lambda *m: taken.append(m), 2) == 2  # the limit


async def test_traffic_since_the_last_check_answers_the_health_check(
    standalone: list[MqttConnection],
    auth_broker: MosquittoBroker,
    peer_factory: Callable[..., Peer],
) -> None:
    """Test that messages from the broker prove a busy link, and a quiet one is probed again.

    bob's echo probe never comes back (the ACL drops it): a check that probes times out.
    """
    bob = MqttConnection(
        "b", cfg(auth_broker, username="bob", password="hunter2", subscribe=["plant/#"])
    )
    standalone.append(bob)
    await bob.connect()
    with pytest.raises(TimeoutError):  # the first check of a link always probes
        await asyncio.wait_for(bob.health_check(), 0.3)
    peer = peer_factory(auth_broker, username="alice", password="secret")
    peer.publish("plant/1", b"1")
    await wait_until(lambda: bob.last_value("plant/1") == 1)
    assert await asyncio.wait_for(bob.health_check(), 0.3)
    with pytest.raises(TimeoutError):  # nothing since: probed, and no answer
        await asyncio.wait_for(bob.health_check(), 0.3)


# ------------------------------------------------------------ supervision


async def test_auth_failure_is_the_error_state(
    make_manager: Make, auth_broker: MosquittoBroker
) -> None:
    """Test that a refused password ends in state error (reason auth) without retries."""
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("bad", "mqtt", cfg(auth_broker, username="alice", password="wrong"))
    m.add_connection("anon", "mqtt", cfg(auth_broker))
    m.add_connection("good", "mqtt", cfg(auth_broker, username="alice", password="secret"))
    async with m:
        await m.wait_for_state("bad", "error", timeout=5)
        await m.wait_for_state("anon", "error", timeout=5)
        await m.wait_for_state("good", "connected", timeout=5)
        status = m.get_status("bad")
        assert status["reason"] == "auth"
        assert "authentication failed" in status["last_error"]
        assert "alice" in status["last_error"] and "wrong" not in str(status)
        assert status["reconnect_attempts"] == 0
        assert "anonymous" in m.get_status("anon")["last_error"]


async def test_broker_restart_reconnects_and_resubscribes(
    make_manager: Make,
    own_broker: MosquittoBroker,
    peer_factory: Callable[..., Peer],
    clock: ManualClock,
) -> None:
    """Test that a killed broker means reconnecting, and its return brings the subscriptions back."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, reconnect_max_attempts=None)
    data = Data(m)
    conn = m.add_connection(
        "mq",
        "mqtt",
        cfg(own_broker, subscribe=["plant/#"], qos=1),
        poll=[{"tags": ["plant/1/power"], "interval": 1.0}],
    )
    assert isinstance(conn, MqttConnection)
    conn.subscribe("late/topic")  # added at run time: replayed too
    async with m:
        await m.wait_for_state("mq", "connected", timeout=5)
        own_broker.kill()
        await m.wait_for_state("mq", "reconnecting", timeout=5)
        assert m.get_status("mq")["reason"] == "connection_lost"
        # Two attempts against the dead broker, on the manual clock.
        for _ in range(2):
            await clock.advance(await clock.wait_for_timer(lambda d: d < 5))
        await wait_until(lambda: m.get_status("mq")["reconnect_attempts"] >= 1)
        own_broker.start()
        await advance_until(clock, lambda: m.get_status("mq")["status"] == "connected")
        await wait_until(lambda: conn.subscriptions.is_confirmed())
        assert [e["replays"] for e in conn.subscriptions.as_list()] == [1, 1]
        peer = peer_factory(own_broker)
        peer.publish("plant/1/power", b"7")
        peer.publish("late/topic", b"8")
        await wait_until(lambda: data.values("late/topic") == [8])
        assert data.values("plant/1/power")[-1] == 7  # pushed by the broker
        # The poll (a read of the last value) resumed, with one poller only.
        await advance_until(clock, lambda: ("mq", "plant/1/power", 7, "good") in data.points[-1:])
        pollers = [t for t in asyncio.all_tasks() if t.get_name() == "edgelink[mq].poll0"]
        assert len(pollers) == 1
        assert m.get_status("mq")["stats"]["reconnects"] == 1
        assert m.get_status("mq")["health"] == "healthy"


async def test_expect_data_without_datum_degrades_until_data_flows(
    make_manager: Make,
    broker: MosquittoBroker,
    peer_factory: Callable[..., Peer],
    clock: ManualClock,
) -> None:
    """Test that an expect_data filter without data degrades health, replays, and heals on data."""
    m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG)
    topic = f"status/{secrets.token_hex(4)}"
    conn = m.add_connection(
        "mq",
        "mqtt",
        cfg(broker, subscribe=[{"topic": topic, "expect_data": True}], subscribe_timeout=10),
    )
    assert isinstance(conn, MqttConnection)
    async with m:
        await m.wait_for_state("mq", "connected", timeout=5)
        assert m.get_status("mq")["health"] == "healthy"
        await clock.wait_for_timer(lambda d: d == 10)
        await clock.advance(10)
        status = m.get_status("mq")
        assert (status["status"], status["health"]) == ("connected", "degraded")
        assert status["health_reason"] == (
            f"1 subscription unconfirmed: {topic!r} (no data within 10 s)"
        )
        assert conn.subscriptions.get(topic).replays == 2  # type: ignore[union-attr]
        # The device comes back and publishes its retained status.
        peer = peer_factory(broker)
        peer.publish(topic, b"online", retain=True)
        await wait_until(lambda: m.get_status("mq")["health"] == "healthy")
        assert m.get_status("mq")["health_reason"] is None
        peer.publish(topic, b"", retain=True)


async def test_persistent_session_keeps_messages_sent_while_away(
    make_manager: Make, broker: MosquittoBroker, peer_factory: Callable[..., Peer]
) -> None:
    """Test that with clean_session false, QoS 1 messages sent while stopped arrive after."""
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    data = Data(m)
    client_id = f"persist-{secrets.token_hex(4)}"
    m.add_connection(
        "mq",
        "mqtt",
        cfg(broker, subscribe=["queue/q"], qos=1, clean_session=False, client_id=client_id),
    )
    peer = peer_factory(broker)
    async with m:
        await m.wait_for_state("mq", "connected", timeout=5)
        await m.stop_connection("mq")
        peer.publish("queue/q", b"while-away", qos=1)
        await m.start_connection("mq")
        await m.wait_for_state("mq", "connected", timeout=5)
        await wait_until(lambda: data.values("queue/q"))
        assert data.values("queue/q") == ["while-away"]


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        # A whole frame of the reserved packet type 0: paho rejects it at once.
        (b"\x00\x00", "protocol_error"),
        # A header announcing 9 kB that never come: only the health check can tell.
        (DEFAULT_GARBAGE, "half_open"),
    ],
)
async def test_garbage_from_the_broker_drops_and_rebuilds_the_link(
    make_manager: Make,
    broker: MosquittoBroker,
    peer_factory: Callable[..., Peer],
    clock: ManualClock,
    garbage: bytes,
    reason: str,
) -> None:
    """Test that corrupted frames drop the link (protocol error or failed check) and it comes back."""
    async with FaultProxy(broker.host, broker.port, corrupt_with=garbage) as proxy:
        m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=5)
        data = Data(m)
        m.add_connection(
            "mq", "mqtt", {"host": proxy.address[0], "port": proxy.port, "subscribe": ["g/#"]}
        )
        peer = peer_factory(broker)
        async with m:
            await m.wait_for_state("mq", "connected", timeout=5)
            proxy.mode = FaultMode.CORRUPT
            peer.publish("g/1", b"x")
            if reason == "half_open":
                await clock.wait_for_timer(lambda d: d == 5)
                await clock.advance(5)
            await m.wait_for_state("mq", "reconnecting", timeout=5)
            status = m.get_status("mq")
            assert status["reason"] == reason
            if reason == "protocol_error":
                assert "ProtocolError" in status["last_error"]
            proxy.mode = FaultMode.PASS
            await clock.advance(await clock.wait_for_timer(lambda d: d < 1))
            await m.wait_for_state("mq", "connected", timeout=5)
            peer.publish("g/2", b"2")
            await wait_until(lambda: data.values("g/2"))
            assert data.values("g/1") == []


async def test_stalled_broker_fails_the_health_check(
    make_manager: Make, broker: MosquittoBroker, clock: ManualClock
) -> None:
    """Test that a broker that stops answering is found by the echo health check."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        m = make_manager(clock=clock, watchdog_interval=NO_WATCHDOG, health_check_interval=5)
        m.add_connection("mq", "mqtt", {"host": proxy.address[0], "port": proxy.port})
        async with m:
            await m.wait_for_state("mq", "connected", timeout=5)
            proxy.mode = FaultMode.STALL
            await clock.wait_for_timer(lambda d: d == 5)
            await clock.advance(5)
            await m.wait_for_state("mq", "reconnecting", timeout=5)
            assert m.get_status("mq")["reason"] == "half_open"


async def test_reconnect_cycles_leak_nothing(broker: MosquittoBroker) -> None:
    """Test that many connect/disconnect cycles leave no sockets, tasks or threads behind."""
    proc = psutil.Process(os.getpid())
    conn = MqttConnection("m", cfg(broker, subscribe=["leak/#"]))
    await conn.connect()
    await conn.disconnect()
    gc.collect()  # what earlier tests left for the collector is not ours
    fds, threads = proc.num_fds(), threading.active_count()
    tasks = len(asyncio.all_tasks())
    for _ in range(20):
        await conn.connect()
        assert await asyncio.wait_for(conn.health_check(), 2)
        await conn.disconnect()
    assert not conn.is_connected()
    gc.collect()
    assert proc.num_fds() <= fds
    assert (threading.active_count(), len(asyncio.all_tasks())) == (threads, tasks)


# -------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throw-away CA and a broker certificate for 127.0.0.1, as PEM files."""
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "broker.key"))
    with open(d / "broker.pem", "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return {"ca": str(d / "ca.pem"), "cert": str(d / "broker.pem"), "key": str(d / "broker.key")}


@pytest.fixture(scope="module")
def tls_broker(tls_files: dict[str, str]) -> Iterator[MosquittoBroker]:
    """A mosquitto whose listener speaks TLS only."""
    with MosquittoBroker(certfile=tls_files["cert"], keyfile=tls_files["key"]) as b:
        yield b


async def test_tls_connects_checks_and_carries_messages(
    standalone: list[MqttConnection], tls_broker: MosquittoBroker, tls_files: dict[str, str]
) -> None:
    """Test that a TLS link with the broker's CA connects, echoes and carries messages."""
    got: list[tuple[str, Any]] = []
    conn = MqttConnection(
        "m", cfg(tls_broker, tls=True, ca_file=tls_files["ca"], subscribe=["t/#"], qos=1)
    )
    conn.report_data = lambda tag, value, **kw: got.append((tag, value))  # type: ignore[method-assign]
    standalone.append(conn)
    await conn.connect()
    assert conn._client is not None
    sock = conn._client.socket()
    assert isinstance(sock, ssl.SSLSocket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert await asyncio.wait_for(conn.health_check(), 2)
    for i in range(200):  # a burst: TLS holds decrypted bytes the selector cannot see
        conn.publish(f"t/{i}", i)
    await wait_until(lambda: len(got) == 200)
    assert got[-1] == ("t/199", 199)
    await wait_until(lambda: conn.subscriptions.is_confirmed())


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        ({}, "certificate for '127.0.0.1' was refused"),  # the system CAs do not know ours
        ({"ca": True, "tls_server_name": "broker.example"}, "broker.example"),
    ],
)
async def test_tls_certificate_refusal_is_the_error_state(
    make_manager: Make,
    tls_broker: MosquittoBroker,
    tls_files: dict[str, str],
    extra: dict[str, Any],
    text: str,
) -> None:
    """Test that an untrusted certificate or a wrong name ends in state error, no retries."""
    config = cfg(tls_broker, tls=True)
    if extra.pop("ca", False):
        config["ca_file"] = tls_files["ca"]
    config.update(extra)
    m = make_manager(watchdog_interval=NO_WATCHDOG)
    m.add_connection("mq", "mqtt", config)
    async with m:
        await m.wait_for_state("mq", "error", timeout=5)
        status = m.get_status("mq")
        assert text in status["last_error"]
        assert status["reconnect_attempts"] == 0


async def test_tls_without_verification_and_bad_files(
    standalone: list[MqttConnection], tls_broker: MosquittoBroker
) -> None:
    """Test that verify false connects to any certificate and a missing CA file is a ConfigError."""
    conn = MqttConnection("m", cfg(tls_broker, tls=True, verify=False))
    standalone.append(conn)
    await conn.connect()
    assert await asyncio.wait_for(conn.health_check(), 2)
    bad = MqttConnection("b", cfg(tls_broker, tls=True, ca_file="/nonexistent/ca.pem"))
    with pytest.raises(ConfigError) as info:
        await bad.connect()
    assert info.value.path == "config.ca_file"
    plain = MqttConnection("p", cfg(tls_broker))  # plain MQTT to a TLS port
    standalone.append(plain)
    with pytest.raises(ConnectError):
        await asyncio.wait_for(plain.connect(), 2)
