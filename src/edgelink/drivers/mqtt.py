"""``mqtt``: an MQTT broker as a device endpoint, on paho-mqtt 2.x driven by the asyncio loop.

Subscribed messages become datapoints (the topic is the tag; a payload that
parses as JSON becomes that value, so ``21.5`` is the number 21.5, otherwise
the UTF-8 text, and bytes that are not UTF-8 stay bytes). ``write(topic, v)``
publishes, ``read(topic)`` returns the last value received on a topic.

How it runs: paho's client does the MQTT protocol; the asyncio loop does the
I/O through paho's external-loop hooks (``add_reader`` on its socket; what
paho queued is written in one flush per loop turn, with ``add_writer`` only
while the socket buffer is full; ``loop_misc`` once a second in the task
``edgelink[<id>].mqtt``), so no thread runs per client and a publish is a
plain function call that paho buffers. The TCP connect, name lookup and TLS
handshake are done here without blocking the loop (paho's own ``connect``
would block), the socket is tuned like every edgelink TCP link (TCP_NODELAY,
which paho leaves off, keepalive, TCP_USER_TIMEOUT) and handed to paho. paho
never reconnects on its own: a lost link is reported to the supervisor, which
reconnects with its backoff; every new link subscribes again from the
`edgelink.subscriptions` ledger, whose entries must be confirmed (SUBACK, or
the first message for ``expect_data`` subscriptions) within
``subscribe_timeout`` or the health turns ``degraded`` and the subscriptions
are replayed again.

The health check is a real round trip through the broker: a probe published
to a private topic the client subscribes to must come back (``echo``), or,
for brokers whose ACL forbids that, an UNSUBSCRIBE must be answered
(``ping``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import ssl
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from edgelink.connection import Connection, Stats
from edgelink.drivers._futures import fail_all
from edgelink.drivers._socket import tune_tcp_socket
from edgelink.drivers.configs import MqttConfig, MqttWill
from edgelink.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    DeviceError,
    EdgelinkError,
    ExceptionMap,
    PermanentError,
    ProtocolError,
    map_exceptions,
)
from edgelink.subscriptions import Subscription, SubscriptionLedger

try:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"the mqtt driver needs paho-mqtt: pip install 'edgelink[mqtt]' ({exc})"
    ) from exc

__all__ = ["MqttConnection", "decode_payload", "encode_payload"]

logger = logging.getLogger(__name__)

#: Topic filters per SUBSCRIBE packet when the ledger replays many.
SUBSCRIBE_BATCH: Final = 100
#: Packets handled per readable event before the loop gets a turn (fairness).
READ_BATCH: Final = 64
#: How often paho's keepalive bookkeeping runs (it sends PINGREQ when idle).
MISC_INTERVAL: Final = 1.0

_SUCCESS: Final = MQTTErrorCode.MQTT_ERR_SUCCESS
# CONNACK answers that retrying cannot fix (values as paho 2 maps them, v3.1.1 included).
_PERMANENT_CONNACK: Final = {
    129: "malformed packet",
    130: "protocol error",
    132: "unsupported protocol version",
    133: "client identifier not valid",
    134: "bad user name or password",
    135: "not authorized",
    138: "banned",
    140: "bad authentication method",
}
_AUTH_CONNACK: Final = frozenset({134, 135, 140})

HealthMode = Literal["echo", "ping"]

#: TLS contexts by (ca_file, verify, client_cert, client_key), shared by every
#: connection: loading a CA bundle takes tens of ms, which must neither block
#: the loop nor happen per connect.
_TlsKey = tuple[str | None, bool, str | None, str | None]
_tls_contexts: dict[_TlsKey, ssl.SSLContext] = {}
_tls_lock = threading.Lock()


def _tls_context(key: _TlsKey) -> ssl.SSLContext:
    with _tls_lock:
        ctx = _tls_contexts.get(key)
        if ctx is None:
            ca, verify, cert, private_key = key
            is_dir = ca is not None and os.path.isdir(ca)
            ctx = ssl.create_default_context(
                cafile=None if is_dir else ca, capath=ca if is_dir else None
            )
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if cert is not None:
                ctx.load_cert_chain(cert, private_key)
            _tls_contexts[key] = ctx
        return ctx


def encode_payload(value: Any) -> bytes:
    """Encode a value for publishing: bytes as they are, str as UTF-8, anything else as JSON.

    Raises:
        DeviceError: if the value has no JSON form (NaN, an object JSON cannot encode).
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise DeviceError(f"cannot encode {type(value).__name__} value as JSON: {exc}") from exc


def decode_payload(payload: bytes | bytearray) -> Any:
    """Decode a received payload: its JSON value if it parses, else the UTF-8 text, else bytes."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return payload
    try:
        return json.loads(text)
    except ValueError:
        return text


def _filter_error(topic: Any) -> str | None:
    """Why ``topic`` is not a valid MQTT topic filter, or None if it is."""
    if not isinstance(topic, str) or not topic:
        return "must be a non-empty string"
    if "\x00" in topic:
        return "must not contain NUL"
    if len(topic.encode()) > 65535:
        return "is longer than 65535 bytes"
    levels = topic.split("/")
    if topic.startswith("$share/"):
        if len(levels) < 3 or not levels[1] or "+" in levels[1] or "#" in levels[1]:
            return "a shared subscription is $share/<group>/<filter>"
        levels = levels[2:]
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def _topic_error(topic: Any) -> str | None:
    """Why ``topic`` is not a valid MQTT topic name (no wildcards), or None."""
    if not isinstance(topic, str) or not topic:
        return "must be a non-empty string"
    if "+" in topic or "#" in topic:
        return "must not contain the wildcards '+' or '#'"
    if "\x00" in topic:
        return "must not contain NUL"
    return None


def _match_filter(topic_filter: str) -> str:
    """The part of a filter that topics match (a shared subscription's filter)."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter


def _refused_certificate(exc: Exception, *, server_name: str, **_: Any) -> EdgelinkError | None:
    assert isinstance(exc, ssl.SSLCertVerificationError)
    return PermanentError(
        f"TLS: the broker's certificate for {server_name!r} was refused: "
        f"{exc.verify_message or exc}"
    )


#: What a failed TLS handshake becomes, first match wins (subclasses first).
TLS_ERRORS: Final[ExceptionMap] = {
    ssl.SSLCertVerificationError: _refused_certificate,
    OSError: (ConnectError, "TLS handshake with {where} failed: {error}"),  # ssl.SSLError too
}


def _publish_size(topic_len: int, payload_len: int, qos: int) -> int:
    """Wire size of a PUBLISH packet (MQTT 3.1.1; v5 adds its properties length)."""
    remaining = 2 + topic_len + payload_len + (2 if qos else 0)
    header = 2 if remaining < 128 else 3 if remaining < 16384 else 4 if remaining < 2097152 else 5
    return header + remaining


def _tls_pending(sock: Any) -> int:
    """Bytes a TLS socket has decrypted but not handed out yet (0 for plain sockets)."""
    pending = getattr(sock, "pending", None)
    return int(pending()) if pending is not None else 0


async def _fd_ready(loop: asyncio.AbstractEventLoop, sock: socket.socket, *, write: bool) -> None:
    """Wait until ``sock`` is readable (or writable)."""
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(sock, ready)
    else:
        loop.add_reader(sock, ready)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(sock)
        else:
            loop.remove_reader(sock)


class _PahoClient(paho.Client):
    """paho's client, connected over a socket edgelink opened without blocking the loop.

    paho's ``connect``/``reconnect`` would open the TCP connection with a
    blocking ``socket.create_connection``; this subclass hands it the socket
    edgelink connected with ``loop.sock_connect`` instead, and refuses to open
    one itself, so paho can never reconnect (or block) behind the supervisor.
    """

    edgelink_socket: socket.socket | None = None

    def _create_socket_connection(self) -> socket.socket:
        sock, self.edgelink_socket = self.edgelink_socket, None
        if sock is None:
            raise OSError("edgelink: reconnecting is the supervisor's job, not paho's")
        return sock


class MqttConnection(Connection):
    """An MQTT broker as a device: subscriptions in, publishes out.

    Example:
        manager.add_connection("broker", "mqtt", {
            "host": "127.0.0.1", "subscribe": ["plant/+/power", "plant/+/status"], "qos": 1})
        await manager.execute_with_retry("broker", lambda c: c.write("plant/1/setpoint", 21.5))

    Besides ``read``/``write``, `publish` queues a message without awaiting
    anything (the MQTT bridge's hot path), and `subscribe`/`unsubscribe` change
    the subscriptions at run time (they survive reconnects like configured ones).
    """

    type_name = "mqtt"
    config_model = MqttConfig
    cfg: MqttConfig

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        cfg, cid = self.cfg, connection_id
        self.host: str = cfg.host
        self.tls = cfg.tls
        self.port: int = cfg.port if cfg.port is not None else (8883 if cfg.tls else 1883)
        self.verify = cfg.verify
        self.ca_file = cfg.ca_file
        self.client_cert = cfg.client_cert
        self.client_key = cfg.client_key
        self.tls_server_name = cfg.tls_server_name
        self.username = cfg.username
        self._password = cfg.password
        self.qos: int = cfg.qos
        self.keepalive = cfg.keepalive
        self.max_inflight = cfg.max_inflight
        self.retain = cfg.retain
        self.protocol: str = cfg.protocol
        self.clean_session = cfg.clean_session
        # Unique per driver, stable across its reconnects: two gateways with
        # the same connection id must not take each other's session away.
        client_id = cfg.client_id
        if client_id is None:
            client_id = f"edgelink-{cid}-{secrets.token_hex(4)}"
        self.client_id: str = client_id
        self.session_expiry = cfg.session_expiry
        self.health_mode: HealthMode = cfg.health_check
        health_topic = (
            cfg.health_topic if cfg.health_topic is not None else f"edgelink/health/{client_id}"
        )
        error = _topic_error(health_topic)
        if error is not None:
            raise ConfigError(
                f"health_topic {error}", path="config.health_topic", connection_id=cid
            )
        self.health_topic: str = health_topic
        self.subscribe_timeout = cfg.subscribe_timeout
        self._will = self._parse_will(cfg.will)
        self.keepalive_idle = cfg.keepalive_idle
        self.keepalive_interval = cfg.keepalive_interval
        self.keepalive_count = cfg.keepalive_count
        self.tcp_user_timeout = cfg.tcp_user_timeout
        self._ledger = SubscriptionLedger(
            self._replay,
            confirm_within=self.subscribe_timeout,
            clock=lambda: self.clock,
            on_degraded=self.report_degraded,
            name=cid,
        )
        for i, item in enumerate(cfg.subscribe):
            path = f"config.subscribe[{i}]"
            error = _filter_error(item.topic)
            if error is not None:
                # A plain string is the subscription: the path names it, not its topic.
                raw = self.config["subscribe"][i]
                where = path if isinstance(raw, str) else f"{path}.topic"
                raise ConfigError(
                    f"topic filter {item.topic!r} {error}", path=where, connection_id=cid
                )
            qos = self.qos if item.qos is None else item.qos
            self._ledger.add(item.topic, qos=qos, expect_data=item.expect_data)

        self._client: _PahoClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: A flush of paho's queued packets is scheduled; the loop watches the
        #: socket for writability (only while its buffer is full).
        self._flush_pending = False
        self._writer_on = False
        self._misc_task: asyncio.Task[None] | None = None
        self._connack: asyncio.Future[None] | None = None
        self._connected = False
        self._closing = False
        self._lost_error: BaseException | None = None
        self._probe: tuple[bytes, asyncio.Future[None]] | None = None
        self._probe_seq = 0
        self._nonce = secrets.token_hex(4)
        # QoS>0 publishes and ping UNSUBSCRIBEs waiting for the broker, by packet id.
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._sub_mids: dict[int, list[str]] = {}
        self._health_sub_mid: int | None = None
        self._last: dict[str, Any] = {}
        self._rx_messages = 0
        #: Loop time of the last bytes from the broker, and of the last health check.
        self._last_rx = 0.0
        self._last_check = 0.0
        # Traffic counted on the hot paths as plain ints and added to the shared
        # Stats in bulk (update_stats per message would cost more than paho's
        # own work for a publish): whoever reads `stats` gets exact figures.
        self._pending_tx = [0, 0]
        self._pending_rx = [0, 0]

    def _parse_will(self, will: MqttWill | None) -> tuple[str, bytes, int, bool] | None:
        if will is None:
            return None
        cid = self.connection_id
        error = _topic_error(will.topic)
        if error is not None:
            raise ConfigError(f"topic {error}", path="config.will.topic", connection_id=cid)
        try:
            payload = encode_payload(will.payload)
        except DeviceError as exc:
            raise ConfigError(exc.message, path="config.will.payload", connection_id=cid) from exc
        return will.topic, payload, will.qos, will.retain

    # ------------------------------------------------------------------ views

    @property
    def subscriptions(self) -> SubscriptionLedger:
        """The subscription ledger: what is subscribed and whether the broker confirmed it."""
        return self._ledger

    @property
    def stats(self) -> Stats:
        """The traffic counters (PUBLISH packets and their wire bytes), up to date."""
        self._flush_stats()
        return self._stats

    def _flush_stats(self) -> None:
        tx, rx = self._pending_tx, self._pending_rx
        if tx[0] or rx[0]:
            self._pending_tx, self._pending_rx = [0, 0], [0, 0]
            self.update_stats(
                packets_sent=tx[0],
                bytes_sent=tx[1],
                packets_received=rx[0],
                bytes_received=rx[1],
            )

    def is_connected(self) -> bool:
        """Return True while the broker accepted the session and the socket is open."""
        client = self._client
        return client is not None and self._connected and client.socket() is not None

    def last_value(self, topic: str, default: Any = None) -> Any:
        """Return the last value received on ``topic`` (no I/O), or ``default``."""
        return self._last.get(topic, default)

    # ------------------------------------------------------------------ link

    async def connect(self) -> None:
        """Open the TCP connection, start the MQTT session and subscribe from the ledger.

        Raises:
            ConnectError: if the broker cannot be reached or closes the link.
            AuthError: if the broker refuses the credentials.
            PermanentError: if the broker refuses the client otherwise.
        """
        await self.disconnect()
        loop = asyncio.get_running_loop()
        sock: socket.socket = await self._open_socket(loop)
        tune_tcp_socket(
            sock,
            keepalive_idle=self.keepalive_idle,
            keepalive_interval=self.keepalive_interval,
            keepalive_count=self.keepalive_count,
            user_timeout=self.tcp_user_timeout,
        )
        if self.tls:
            try:
                sock = await self._start_tls(loop, sock)
            except BaseException:
                sock.close()
                raise
        client = self._make_client()
        client.edgelink_socket = sock
        self._client, self._loop = client, loop
        self._closing = False
        self._lost_error = None
        connack: asyncio.Future[None] = loop.create_future()
        self._connack = connack
        try:
            try:
                if self.protocol == "5":
                    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                    props.SessionExpiryInterval = 0 if self.clean_session else self.session_expiry
                    rc = client.connect(
                        self.host,
                        self.port,
                        self.keepalive,
                        clean_start=self.clean_session,
                        properties=props,
                    )
                else:
                    rc = client.connect(self.host, self.port, self.keepalive)
            except (OSError, ValueError) as exc:
                raise ConnectError(
                    f"MQTT connect to {self.host}:{self.port} failed: {exc}",
                    connection_id=self.connection_id,
                    cause=exc,
                ) from exc
            if rc != _SUCCESS:
                raise ConnectError(
                    f"MQTT connect to {self.host}:{self.port} failed: {paho.error_string(rc)}",
                    connection_id=self.connection_id,
                )
            await connack
        except BaseException:
            self._closing = True
            self._teardown()
            if sock.fileno() != -1:  # paho never took it
                sock.close()
            raise
        finally:
            self._connack = None
        self._connected = True
        self._misc_task = loop.create_task(
            self._run_misc(client), name=f"edgelink[{self.connection_id}].mqtt"
        )
        if self.health_mode == "echo":
            rc, mid = client.subscribe(self.health_topic, 0)
            self._health_sub_mid = mid
        self._ledger.link_up()

    async def _start_tls(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket
    ) -> ssl.SSLSocket:
        """Wrap the connected socket in TLS and run the handshake without blocking the loop.

        Raises:
            ConfigError: if the CA bundle or client certificate cannot be loaded.
            PermanentError: if the broker's certificate is refused (wrong CA or name).
            ConnectError: if the handshake fails otherwise.
        """
        key = (self.ca_file, self.verify, self.client_cert, self.client_key)
        ctx = _tls_contexts.get(key)
        if ctx is None:
            try:
                ctx = await asyncio.to_thread(_tls_context, key)
            except (OSError, ssl.SSLError) as exc:
                path = "config.client_cert" if self.client_cert else "config.ca_file"
                raise ConfigError(
                    f"cannot load the TLS files: {exc}", path=path, connection_id=self.connection_id
                ) from exc
        name = self.tls_server_name or self.host
        ssock = ctx.wrap_socket(sock, server_hostname=name, do_handshake_on_connect=False)
        where = f"{self.host}:{self.port}"
        try:
            with map_exceptions(
                TLS_ERRORS, connection_id=self.connection_id, where=where, server_name=name
            ):
                while True:
                    try:
                        ssock.do_handshake()
                        return ssock
                    except ssl.SSLWantReadError:
                        await _fd_ready(loop, ssock, write=False)
                    except ssl.SSLWantWriteError:
                        await _fd_ready(loop, ssock, write=True)
        except BaseException:
            ssock.close()
            raise

    async def _open_socket(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        where = f"{self.host}:{self.port}"
        try:
            infos = await loop.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except OSError as exc:
            raise ConnectError(
                f"cannot resolve {self.host!r}: {exc}", connection_id=self.connection_id, cause=exc
            ) from exc
        error: OSError | None = None
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise ConnectError(
            f"cannot connect to {where}: {error.strerror or error}"
            if error
            else f"no address for {where}",
            connection_id=self.connection_id,
            cause=error,
        ) from error

    def _make_client(self) -> _PahoClient:
        v5 = self.protocol == "5"
        client = _PahoClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else self.clean_session,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(self.max_inflight)
        if self.username is not None:
            client.username_pw_set(self.username, self._password)
        if self._will is not None:
            topic, payload, qos, retain = self._will
            client.will_set(topic, payload, qos, retain)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        # on_publish is set at the first QoS>0 publish: paho calls it for every
        # QoS 0 message too, building two objects each time.
        return client

    async def disconnect(self) -> None:
        """End the session (DISCONNECT if the link is up) and close the socket. Never raises."""
        self._closing = True
        client = self._client
        if client is not None and self._connected:
            try:
                client.disconnect()
                # Send the DISCONNECT now if the socket takes it; the socket
                # closes below either way, so this never waits.
                client.loop_write()
            except Exception:  # closing must not raise; logged at DEBUG
                logger.debug("%s: DISCONNECT not sent", self.connection_id, exc_info=True)
        self._connected = False
        self._ledger.link_down()
        self._fail_waiters(ConnectError("connection closed", connection_id=self.connection_id))
        self._teardown()
        self._flush_stats()
        task, self._misc_task = self._misc_task, None
        if task is not None and not task.done():
            task.cancel()
            # asyncio.wait does not raise the task's cancellation, and lets ours through.
            await asyncio.wait([task])

    def _teardown(self) -> None:
        """Detach from the paho client and close its socket (no I/O beyond close)."""
        client, self._client = self._client, None
        if client is None:
            return
        for hook in (
            "on_socket_open",
            "on_socket_close",
            "on_socket_register_write",
            "on_socket_unregister_write",
            "on_connect",
            "on_disconnect",
            "on_message",
            "on_subscribe",
            "on_unsubscribe",
            "on_publish",
        ):
            setattr(client, hook, None)
        self._flush_pending = self._writer_on = False
        sock = client.socket()
        loop = self._loop
        if sock is not None and sock.fileno() != -1:
            if loop is not None and not loop.is_closed():
                loop.remove_reader(sock)
                loop.remove_writer(sock)
            sock.close()
        self._sub_mids.clear()
        self._health_sub_mid = None

    async def health_check(self) -> bool:
        """One round trip through the broker: the echo of a probe, or an UNSUBACK (``ping``).

        While publishes wait for their acks, traffic from the broker since the
        previous check counts as the answer: a busy link is not probed (the
        probe would wait behind the backlog).

        Raises:
            ConnectError: if the link is down or goes down before the answer.
        """
        client = self._live_client()
        loop = asyncio.get_running_loop()
        since, self._last_check = self._last_check, loop.time()
        if self._waiters and self._last_rx > since > 0:
            # Publishes wait for their acks and the broker has answered since
            # the last check: it is alive and working. A probe would only
            # queue behind the backlog and could time out on a link doing fine.
            return True
        fut: asyncio.Future[None] = loop.create_future()
        if self.health_mode == "ping":
            # The broker must answer an UNSUBSCRIBE even for a filter it never
            # had, and needs no ACL permission for it.
            rc, mid = client.unsubscribe(self.health_topic)
            self._check_rc(rc, "health check")
            assert mid is not None
            self._waiters[mid] = fut
            await fut
            return True
        self._probe_seq += 1
        token = f"{self._nonce}:{self._probe_seq}".encode()
        self._probe = (token, fut)
        try:
            info = client.publish(self.health_topic, token, 0, False)
            self._check_rc(info.rc, "health check")
            await fut
        finally:
            if self._probe is not None and self._probe[1] is fut:
                self._probe = None
        return True

    # ------------------------------------------------------------ data plane

    def publish(
        self,
        topic: str,
        payload: Any,
        *,
        qos: int | None = None,
        retain: bool | None = None,
    ) -> asyncio.Future[None] | None:
        """Queue one message to the broker; nothing is awaited (paho buffers it).

        The payload is encoded by `encode_payload` (str as UTF-8, bytes as
        they are, other values as JSON).

        Returns:
            None for QoS 0; for QoS 1 and 2 a future that resolves when the broker
            acknowledged the message, or fails with `ConnectError` if the link
            went down first (nobody needs to await it).

        Raises:
            ConnectError: if the link is down.
            DeviceError: for an invalid topic, QoS or payload (the link stays).
        """
        client = self._client
        if client is None or not self._connected:
            raise ConnectError(
                "not connected", connection_id=self.connection_id, cause=self._lost_error
            )
        data = encode_payload(payload)
        q = self.qos if qos is None else qos
        try:
            info = client.publish(topic, data, q, self.retain if retain is None else retain)
        except (ValueError, TypeError) as exc:
            raise DeviceError(
                f"cannot publish to {topic!r}: {exc}", connection_id=self.connection_id
            ) from exc
        if info.rc != _SUCCESS:
            self._check_rc(info.rc, f"publish to {topic!r}")
        tlen = len(topic) if topic.isascii() else len(topic.encode())
        tx = self._pending_tx
        tx[0] += 1
        tx[1] += _publish_size(tlen, len(data), q)
        if q == 0:
            return None
        if client.on_publish is None:
            client.on_publish = self._on_publish
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiters[info.mid] = fut
        return fut

    async def write(self, tag: str, value: Any) -> None:
        """Publish ``value`` to topic ``tag`` with the configured QoS and retain flag.

        For QoS 1 and 2 it returns once the broker acknowledged the message.

        Raises:
            ConnectError: if the link is down or goes down before the acknowledgement.
            DeviceError: for an invalid topic or a value that cannot be encoded,
                or a publish the broker refused (MQTT 5).
        """
        error = _topic_error(tag)
        if error is not None:
            raise DeviceError(f"topic {tag!r} {error}", connection_id=self.connection_id)
        fut = self.publish(tag, value)
        if fut is not None:
            await fut

    async def read(self, tag: str) -> Any:
        """Return the last value received on topic ``tag`` (no request goes to the broker).

        Raises:
            DeviceError: if nothing arrived on that topic yet, or no subscription matches it.
        """
        if tag in self._last:
            return self._last[tag]
        error = _topic_error(tag)
        if error is not None:
            raise DeviceError(f"topic {tag!r} {error}", connection_id=self.connection_id)
        if not any(paho.topic_matches_sub(_match_filter(e.key), tag) for e in self._ledger):
            raise DeviceError(
                f"no subscription matches {tag!r}: add a filter to config.subscribe",
                connection_id=self.connection_id,
            )
        raise DeviceError(f"no message on {tag!r} yet", connection_id=self.connection_id)

    def subscribe(self, topic: str, qos: int | None = None, *, expect_data: bool = False) -> None:
        """Subscribe to a topic filter now (if connected) and after every reconnect.

        Raises:
            DeviceError: for an invalid filter or QoS.
        """
        error = _filter_error(topic)
        if error is not None:
            raise DeviceError(f"topic filter {topic!r} {error}", connection_id=self.connection_id)
        q = self.qos if qos is None else qos
        if q not in (0, 1, 2):
            raise DeviceError(f"qos must be 0, 1 or 2, got {q!r}", connection_id=self.connection_id)
        self._ledger.add(topic, qos=q, expect_data=expect_data)

    def unsubscribe(self, topic: str) -> None:
        """Forget a subscription: unsubscribed now (if connected) and not replayed again."""
        if self._ledger.remove(topic) is not None and self.is_connected():
            assert self._client is not None
            self._client.unsubscribe(topic)

    # --------------------------------------------------------------- helpers

    def _live_client(self) -> _PahoClient:
        client = self._client
        if client is None or not self._connected or client.socket() is None:
            raise ConnectError(
                "not connected", connection_id=self.connection_id, cause=self._lost_error
            )
        return client

    def _check_rc(self, rc: MQTTErrorCode | int, what: str) -> None:
        if rc == _SUCCESS:
            return
        if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise DeviceError(f"{what}: paho's queue is full", connection_id=self.connection_id)
        raise ConnectError(
            f"{what}: {paho.error_string(rc)}",
            connection_id=self.connection_id,
            cause=self._lost_error,
        )

    def _replay(self, entries: Sequence[Subscription]) -> None:
        """Subscribe ledger entries on the current link (the answers come as SUBACKs)."""
        client = self._client
        if client is None or not self._connected:
            return  # the next link replays them
        for start in range(0, len(entries), SUBSCRIBE_BATCH):
            chunk = entries[start : start + SUBSCRIBE_BATCH]
            rc, mid = client.subscribe(
                [(e.key, int(e.options.get("qos", self.qos))) for e in chunk]
            )
            if rc != _SUCCESS or mid is None:
                logger.debug("%s: SUBSCRIBE not sent: %s", self.connection_id, rc)
                return
            self._sub_mids[mid] = [e.key for e in chunk]

    def _fail_waiters(self, error: BaseException) -> None:
        waiters, self._waiters = self._waiters, {}
        probe, self._probe = self._probe, None
        futures = list(waiters.values())
        if probe is not None:
            futures.append(probe[1])
        connack = self._connack
        if connack is not None:
            futures.append(connack)
        # Nobody may wait for them (publishes nobody awaited).
        fail_all(futures, error)

    def _link_gone(self, error: BaseException) -> None:
        """The broker's link ended without us closing it."""
        if self._closing:
            return
        was_up = self._connected
        self._connected = False
        self._lost_error = error
        self._fail_waiters(error)
        if was_up:
            self._ledger.link_down()
            logger.debug("%s: link lost: %s", self.connection_id, error)
            self.connection_lost(error)

    def _fail(self, error: BaseException) -> None:
        """Close the link after an error of our own side (a frame paho could not parse)."""
        self._link_gone(error)
        self._closing = True
        self._teardown()
        task = self._misc_task
        if task is not None:
            task.cancel()

    async def _run_misc(self, client: _PahoClient) -> None:
        # paho keeps keepalive time with its own monotonic clock, so this runs
        # on real time, not the injectable clock.
        while client is self._client and client.socket() is not None:
            await asyncio.sleep(MISC_INTERVAL)
            if client is not self._client:
                return
            # Also feeds the data watchdog for a link that only publishes.
            self._flush_stats()
            try:
                rc = client.loop_misc()
            except Exception as exc:  # noqa: BLE001 - becomes a lost link
                self._fail(ConnectError(f"MQTT keepalive failed: {exc}", cause=exc))
                return
            if rc != _SUCCESS:
                return  # paho closed the link and said so through on_disconnect

    # ---------------------------------------------------- paho socket hooks

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock, self._on_readable)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._writer_on = False
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(sock)
            loop.remove_writer(sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho queued a packet. It goes out in one flush on the next loop turn,
        # with whatever else was queued meanwhile; the loop watches the socket
        # for writability only while it is full. A writer registered and
        # removed per publish costs two epoll_ctl calls and two selector
        # updates each time (bench/bridge.py: 8 % of the CPU at 5,000 msg/s).
        if self._writer_on or self._flush_pending:
            return
        assert self._loop is not None
        self._flush_pending = True
        self._loop.call_soon(self._flush_writes, client)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if not self._writer_on:
            return
        self._writer_on = False
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_writer(sock)

    def _flush_writes(self, client: paho.Client) -> None:
        if client is not self._client:
            return  # torn down since: the old socket is closed
        self._flush_pending = False
        self._on_writable()
        sock = client.socket()
        if (
            client is self._client
            and sock is not None
            and not self._writer_on
            and client.want_write()
        ):
            # The socket buffer is full: the rest goes when the loop says it drained.
            assert self._loop is not None
            self._writer_on = True
            self._loop.add_writer(sock, self._on_writable)

    def _on_readable(self) -> None:
        client = self._client
        if client is None:
            return
        if self._loop is not None:
            self._last_rx = self._loop.time()
        try:
            # paho reads one packet per call; a burst is handled in one turn
            # (bounded, so other connections get the loop too).
            for _ in range(READ_BATCH):
                before = self._rx_messages
                rc = client.loop_read()
                sock = client.socket()
                if rc != _SUCCESS or sock is None:
                    return
                if self._rx_messages == before and not _tls_pending(sock):
                    break
            else:
                # The batch is used up. Bytes TLS already decrypted wake no
                # selector: come back for them on the next loop turn.
                if _tls_pending(sock) and self._loop is not None:
                    self._loop.call_soon(self._on_readable)
            if client.want_write():
                # What the packets read released (QoS acks, messages waiting
                # for an inflight slot) goes out now, not one loop turn later.
                client.loop_write()
        except ProtocolError as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - a frame paho choked on is garbage
            self._fail(
                ProtocolError(
                    f"unreadable MQTT packet from the broker: {type(exc).__name__}: {exc}",
                    connection_id=self.connection_id,
                    cause=exc,
                )
            )

    def _on_writable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            client.loop_write()
        except Exception as exc:  # noqa: BLE001 - a failed write is a lost link
            self._fail(
                ConnectError(f"write failed: {exc}", connection_id=self.connection_id, cause=exc)
            )

    # ---------------------------------------------------- paho MQTT hooks

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        fut = self._connack
        if fut is None or fut.done():
            return
        if not reason.is_failure:
            fut.set_result(None)
            return
        code = int(reason.value)
        name = reason.getName()
        error: ConnectError | PermanentError
        if code in _AUTH_CONNACK:
            who = f"user {self.username!r}" if self.username else "anonymous client"
            error = AuthError(
                f"authentication failed: the broker refused {who} ({name})",
                connection_id=self.connection_id,
            )
        elif code in _PERMANENT_CONNACK:
            error = PermanentError(
                f"the broker refused the connection: {name}", connection_id=self.connection_id
            )
        else:
            error = ConnectError(
                f"the broker refused the connection: {name}", connection_id=self.connection_id
            )
        fut.set_exception(error)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        name = reason.getName()
        error: ConnectError | ProtocolError
        if name in ("Protocol error", "Malformed packet"):
            error = ProtocolError(
                f"MQTT protocol error on the link ({name})", connection_id=self.connection_id
            )
        elif getattr(flags, "is_disconnect_packet_from_server", False):
            error = ConnectError(
                f"the broker ended the session: {name}", connection_id=self.connection_id
            )
        elif name == "Keep alive timeout":
            error = ConnectError(
                "no answer from the broker within the MQTT keepalive",
                connection_id=self.connection_id,
            )
        else:
            error = ConnectError(
                "the broker closed the connection", connection_id=self.connection_id
            )
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_exception(
                ConnectError(
                    f"the broker closed the connection before accepting it ({name})",
                    connection_id=self.connection_id,
                )
            )
            return
        self._link_gone(error)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._rx_messages += 1
        try:
            topic = message.topic
        except UnicodeDecodeError as exc:
            # Raised through paho's loop_read into _on_readable, which drops the link.
            raise ProtocolError(
                "the broker sent a topic that is not UTF-8", connection_id=self.connection_id
            ) from exc
        payload = message.payload
        if topic == self.health_topic:
            probe = self._probe
            if probe is not None and payload == probe[0] and not probe[1].done():
                probe[1].set_result(None)
            return
        tlen = len(topic) if topic.isascii() else len(topic.encode())
        rx = self._pending_rx
        rx[0] += 1
        rx[1] += _publish_size(tlen, len(payload), message.qos)
        value = decode_payload(payload)
        self._last[topic] = value
        awaiting = self._ledger.awaiting_data
        if awaiting:
            for key in list(awaiting):
                if paho.topic_matches_sub(_match_filter(key), topic):
                    self._ledger.data_received(key)
        self.report_data(topic, value)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Any,
    ) -> None:
        if mid == self._health_sub_mid:
            self._health_sub_mid = None
            if reasons and reasons[0].is_failure:
                logger.warning(
                    "%s: the broker refused the health topic %r (%s): use health_check 'ping'",
                    self.connection_id,
                    self.health_topic,
                    reasons[0].getName(),
                )
            return
        keys = self._sub_mids.pop(mid, None)
        if keys is None:
            return
        for key, reason in zip(keys, reasons, strict=False):
            self._ledger.acknowledged(key, ok=not reason.is_failure, error=reason.getName())

    def _on_unsubscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: Any,
        properties: Any,
    ) -> None:
        fut = self._waiters.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        fut = self._waiters.pop(mid, None)
        if fut is None or fut.done():
            return
        if reason.is_failure:
            fut.set_exception(
                DeviceError(
                    f"the broker refused the publish: {reason.getName()}",
                    code=int(reason.value),
                    connection_id=self.connection_id,
                )
            )
            fut.exception()
        else:
            fut.set_result(None)


#: The former name (before 0.2), kept for one release.
MQTTConnection = MqttConnection
