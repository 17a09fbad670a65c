"""The mqtt driver's connection: the MQTT session, the health round trip and the data plane.

`MqttConnection` opens the link (`open_socket`, `start_tls`, a `PahoClient`
driven by the loop, see `edgelink.drivers.mqtt._io`), turns CONNACK and
DISCONNECT reasons into edgelink errors, publishes, and reports received
messages as datapoints. paho never reconnects on its own: a lost link is
reported to the supervisor, which reconnects with its backoff; the
subscriptions come back from the ledger (`edgelink.drivers.mqtt._subscriptions`).

The health check is a real round trip through the broker: a probe published
to a private topic the client subscribes to must come back (``echo``), or,
for brokers whose ACL forbids that, an UNSUBSCRIBE must be answered
(``ping``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgelink.drivers._futures import fail_all
from edgelink.drivers._socket import tune_tcp_socket
from edgelink.drivers.configs import MqttConfig, MqttWill
from edgelink.drivers.mqtt._codec import decode_payload, encode_payload, publish_size, topic_error
from edgelink.drivers.mqtt._io import SUCCESS, PahoClient, open_socket, start_tls
from edgelink.drivers.mqtt._subscriptions import MqttSubscriptions
from edgelink.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    DeviceError,
    PermanentError,
    ProtocolError,
)

__all__ = ["HealthMode", "MqttConnection"]

logger = logging.getLogger(__name__)

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


class MqttConnection(MqttSubscriptions):
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
    endpoint_fields = frozenset(
        {
            "host",
            "port",
            "tls",
            "verify",
            "ca_file",
            "client_cert",
            "client_key",
            "tls_server_name",
            "username",
            "password",
        }
    )
    # The failback probe is a plain session: no subscriptions, no will, its own id.
    probe_overrides: ClassVar[Mapping[str, Any]] = {
        "subscribe": [],
        "will": None,
        "client_id": None,
        "clean_session": True,
    }

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
        error = topic_error(health_topic)
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
        self._setup_subscriptions(cfg)
        self._connack: asyncio.Future[None] | None = None
        self._probe: tuple[bytes, asyncio.Future[None]] | None = None
        self._probe_seq = 0
        self._nonce = secrets.token_hex(4)
        # QoS>0 publishes and ping UNSUBSCRIBEs waiting for the broker, by packet id.
        self._waiters: dict[int, asyncio.Future[None]] = {}
        #: ``ack_listener(mid, error)`` hears of every message queued with `send`
        #: (see there); one callback for all of them, no future per message.
        self.ack_listener: Callable[[int, BaseException | None], None] | None = None
        #: Counts the links this driver opened (a packet id names a message on one link only).
        self.link_id = 0
        #: topic -> last value received, least recently received first (at most ``last_values``).
        self._last: OrderedDict[str, Any] = OrderedDict()
        self.last_values = cfg.last_values
        #: Topics forgotten to keep ``last_values``.
        self.last_values_evicted = 0
        #: Loop time of the last health check, and the link's bytes sent by then.
        self._last_check = 0.0
        self._sent_at_check = 0
        #: Messages queued with `send` on this link (whether the listener hears of a loss).
        self._tracked = 0
        self._raw_publish = self._on_raw_publish

    def endpoint_changed(self) -> None:
        """Take the broker, TLS and credentials of the endpoint failover chose."""
        cfg = self.cfg
        self.host = cfg.host
        self.tls = cfg.tls
        self.port = cfg.port if cfg.port is not None else (8883 if cfg.tls else 1883)
        self.verify = cfg.verify
        self.ca_file = cfg.ca_file
        self.client_cert = cfg.client_cert
        self.client_key = cfg.client_key
        self.tls_server_name = cfg.tls_server_name
        self.username = cfg.username
        self._password = cfg.password

    def _parse_will(self, will: MqttWill | None) -> tuple[str, bytes, int, bool] | None:
        if will is None:
            return None
        cid = self.connection_id
        error = topic_error(will.topic)
        if error is not None:
            raise ConfigError(f"topic {error}", path="config.will.topic", connection_id=cid)
        try:
            payload = encode_payload(will.payload)
        except DeviceError as exc:
            raise ConfigError(exc.message, path="config.will.payload", connection_id=cid) from exc
        return will.topic, payload, will.qos, will.retain

    def is_connected(self) -> bool:
        """Return True while the broker accepted the session and the socket is open."""
        client = self._client
        return client is not None and self._connected and client.socket() is not None

    def last_value(self, topic: str, default: Any = None) -> Any:
        """Return the last value received on ``topic`` (no I/O), or ``default``."""
        return self._last.get(topic, default)

    async def connect(self) -> None:
        """Open the TCP connection, start the MQTT session and subscribe from the ledger.

        Raises:
            ConnectError: if the broker cannot be reached or closes the link.
            AuthError: if the broker refuses the credentials.
            PermanentError: if the broker refuses the client otherwise.
        """
        await self.disconnect()
        loop = asyncio.get_running_loop()
        sock: socket.socket = await open_socket(
            loop, self.host, self.port, connection_id=self.connection_id
        )
        tune_tcp_socket(
            sock,
            keepalive_idle=self.keepalive_idle,
            keepalive_interval=self.keepalive_interval,
            keepalive_count=self.keepalive_count,
            user_timeout=self.tcp_user_timeout,
        )
        if self.tls:
            try:
                sock = await start_tls(
                    loop,
                    sock,
                    host=self.host,
                    port=self.port,
                    server_name=self.tls_server_name,
                    files=(self.ca_file, self.verify, self.client_cert, self.client_key),
                    connection_id=self.connection_id,
                )
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
            if rc != SUCCESS:
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
        self.link_id += 1
        self._last_check, self._sent_at_check = 0.0, 0
        self._misc_task = loop.create_task(
            self._run_misc(client), name=f"edgelink[{self.connection_id}].mqtt"
        )
        if self.health_mode == "echo":
            rc, mid = client.subscribe(self.health_topic, 0)
            self._health_sub_mid = mid
        self._ledger.link_up()

    def _make_client(self) -> PahoClient:
        v5 = self.protocol == "5"
        client = PahoClient(
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

    async def health_check(self) -> bool:
        """One round trip through the broker (`round_trip`), unless the link proves busy.

        A busy link is not probed: bytes from the broker since the previous
        check count as the answer, as long as our own writes are not stuck
        (nothing waits to be written, or some bytes went out since then). A
        probe would queue behind the backlog of both directions and could
        time out on a link doing fine (a million-topic burst reconnected
        that way). A dead or stalled broker sends nothing: the next check
        probes, so it is found within two intervals.

        Raises:
            ConnectError: if the link is down or goes down before the answer.
        """
        client = self._live_client()
        since, self._last_check = self._last_check, asyncio.get_running_loop().time()
        sent = client.edgelink_sent
        writes_move = sent != self._sent_at_check or not client.want_write()
        self._sent_at_check = sent
        if self._last_rx > since > 0 and writes_move:
            return True
        await self.round_trip()
        return True

    async def round_trip(self) -> None:
        """Send a probe through the broker and wait for its answer.

        The echo of a probe published to `health_topic`, or with ``health_check:
        ping`` the UNSUBACK of an UNSUBSCRIBE. Everything sent before it was
        handled by the broker when it returns.

        Raises:
            ConnectError: if the link is down or goes down before the answer.
        """
        client = self._live_client()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self.health_mode == "ping":
            # The broker must answer an UNSUBSCRIBE even for a filter it never
            # had, and needs no ACL permission for it.
            rc, mid = client.unsubscribe(self.health_topic)
            self._check_rc(rc, "health check")
            assert mid is not None
            self._waiters[mid] = fut
            await fut
            self._last_check = loop.time()  # the answer is no traffic of the next interval
            return
        self._probe_seq += 1
        token = f"{self._nonce}:{self._probe_seq}".encode()
        self._probe = (token, fut)
        try:
            info = client.publish(self.health_topic, token, 0, False)
            self._check_rc(info.rc, "health check")
            await fut
            self._last_check = loop.time()  # the echo is no traffic of the next interval
        finally:
            if self._probe is not None and self._probe[1] is fut:
                self._probe = None

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
        data = encode_payload(payload)
        q = self.qos if qos is None else qos
        if q == 0:
            raw = self._queue0(topic, data, self.retain if retain is None else retain)
            tx = self._pending_tx
            tx[0] += 1
            tx[1] += publish_size(len(raw), len(data), 0)
            return None
        client, info = self._queue(topic, data, q, self.retain if retain is None else retain)
        tlen = len(topic) if topic.isascii() else len(topic.encode())
        tx = self._pending_tx
        tx[0] += 1
        tx[1] += publish_size(tlen, len(data), q)
        if client.on_publish is None:
            client.on_publish = self._on_publish
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiters[info.mid] = fut
        return fut

    def send(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Queue one message (bytes, QoS 1 or 2) whose outcome goes to `ack_listener`.

        The MQTT bridge's hot path: no future per message. The listener is
        called ``(mid, None)`` when the broker acknowledged the message,
        ``(mid, DeviceError)`` when it refused it (MQTT 5), and once ``(0,
        ConnectError)`` when the link ends with messages unanswered (packet id
        0 is never a message's: every message sent on that link is then
        unanswered or answered before).

        Returns:
            The message's packet id on this link (`link_id`).

        Raises:
            ConnectError: if the link is down.
            DeviceError: for an invalid topic, or a full paho queue (back-pressure).
        """
        client, info = self._queue(topic, payload, qos, retain)
        tx = self._pending_tx
        tx[0] += 1
        tx[1] += publish_size(
            len(topic) if topic.isascii() else len(topic.encode()), len(payload), qos
        )
        if client.on_publish is None:
            client.on_publish = self._on_publish
        self._tracked += 1
        return int(info.mid)

    def _queue0(self, topic: str, data: bytes, retain: bool) -> bytes:
        """Hand one QoS 0 message to paho (no message info); return the topic's bytes.

        Raises:
            ConnectError: if the link is down.
            DeviceError: for an invalid topic.
        """
        client = self._client
        if client is None or not self._connected:
            raise ConnectError(
                "not connected", connection_id=self.connection_id, cause=self._lost_error
            )
        error = topic_error(topic)
        if error is None and len(topic) > 16383 and len(topic.encode()) > 65535:
            error = "is longer than 65535 bytes"
        if error is not None:
            raise DeviceError(
                f"cannot publish to {topic!r}: the topic {error}", connection_id=self.connection_id
            )
        raw = topic.encode()
        if not client.edgelink_publish0(raw, data, retain):
            raise ConnectError(
                "not connected", connection_id=self.connection_id, cause=self._lost_error
            )
        return raw

    def _queue(
        self, topic: str, data: bytes, qos: int, retain: bool
    ) -> tuple[PahoClient, paho.MQTTMessageInfo]:
        """Hand one message to paho (`publish` and `send`); the link must be up.

        Raises:
            ConnectError: if the link is down.
            DeviceError: for an invalid topic, QoS or payload, or a full paho queue.
        """
        client = self._client
        if client is None or not self._connected:
            raise ConnectError(
                "not connected", connection_id=self.connection_id, cause=self._lost_error
            )
        try:
            info = client.publish(topic, data, qos, retain)
        except (ValueError, TypeError) as exc:
            raise DeviceError(
                f"cannot publish to {topic!r}: {exc}", connection_id=self.connection_id
            ) from exc
        if info.rc != SUCCESS:
            self._check_rc(info.rc, f"publish to {topic!r}")
        return client, info

    def backlog(self) -> int:
        """Return the packets paho holds that are not written to the socket yet."""
        client = self._client
        if client is None:
            return 0
        return len(client._out_packet)  # paho has no public size of it

    async def write(self, tag: str, value: Any) -> None:
        """Publish ``value`` to topic ``tag`` with the configured QoS and retain flag.

        For QoS 1 and 2 it returns once the broker acknowledged the message.

        Raises:
            ConnectError: if the link is down or goes down before the acknowledgement.
            DeviceError: for an invalid topic or a value that cannot be encoded,
                or a publish the broker refused (MQTT 5).
        """
        fut = self.write_nowait(tag, value)
        if fut is not None:
            await fut

    def write_nowait(self, tag: str, value: Any) -> asyncio.Future[None] | None:
        """`write` without awaiting: queue the publish (the router's batched write path).

        Returns:
            None for QoS 0; for QoS 1 and 2 the future of the acknowledgement (see `publish`).

        Raises:
            ConnectError: if the link is down.
            DeviceError: for an invalid topic or a value that cannot be encoded.
        """
        error = topic_error(tag)
        if error is not None:
            raise DeviceError(f"topic {tag!r} {error}", connection_id=self.connection_id)
        return self.publish(tag, value)

    async def read(self, tag: str) -> Any:
        """Return the last value received on topic ``tag`` (no request goes to the broker).

        Raises:
            DeviceError: if nothing arrived on that topic yet, or no subscription matches it.
        """
        if tag in self._last:
            return self._last[tag]
        error = topic_error(tag)
        if error is not None:
            raise DeviceError(f"topic {tag!r} {error}", connection_id=self.connection_id)
        if not self._is_subscribed(tag):
            raise DeviceError(
                f"no subscription matches {tag!r}: add a filter to config.subscribe",
                connection_id=self.connection_id,
            )
        raise DeviceError(f"no message on {tag!r} yet", connection_id=self.connection_id)

    def _live_client(self) -> PahoClient:
        client = self._client
        if client is None or not self._connected or client.socket() is None:
            raise ConnectError(
                "not connected", connection_id=self.connection_id, cause=self._lost_error
            )
        return client

    def _check_rc(self, rc: MQTTErrorCode | int, what: str) -> None:
        if rc == SUCCESS:
            return
        if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise DeviceError(f"{what}: paho's queue is full", connection_id=self.connection_id)
        raise ConnectError(
            f"{what}: {paho.error_string(rc)}",
            connection_id=self.connection_id,
            cause=self._lost_error,
        )

    def _fail_waiters(self, error: BaseException) -> None:
        waiters, self._waiters = self._waiters, {}
        probe, self._probe = self._probe, None
        futures = list(waiters.values())
        listener, tracked, self._tracked = self.ack_listener, self._tracked, 0
        if listener is not None and tracked:
            listener(0, error)
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
        try:
            topic = message.topic
        except UnicodeDecodeError as exc:
            # Raised through paho's loop_read into _on_readable, which drops the link.
            raise ProtocolError(
                "the broker sent a topic that is not UTF-8", connection_id=self.connection_id
            ) from exc
        payload = message.payload
        tlen = len(topic) if topic.isascii() else len(topic.encode())
        self._received(topic, payload, publish_size(tlen, len(payload), message.qos))

    def _on_raw_publish(self, raw_topic: bytes, payload: bytes, retain: int) -> None:
        """A QoS 0 PUBLISH taken from the read buffer (`PahoClient.take_publishes`)."""
        try:
            topic = raw_topic.decode()
        except UnicodeDecodeError as exc:
            # Raised into _on_readable, which drops the link.
            raise ProtocolError(
                "the broker sent a topic that is not UTF-8", connection_id=self.connection_id
            ) from exc
        self._received(topic, payload, publish_size(len(raw_topic), len(payload), 0))

    def _received(self, topic: str, payload: bytes | bytearray, size: int) -> None:
        """One message from the broker: the health probe's echo, or a datapoint."""
        self._rx_messages += 1
        if topic == self.health_topic:
            probe = self._probe
            if probe is not None and payload == probe[0] and not probe[1].done():
                probe[1].set_result(None)
            return
        rx = self._pending_rx
        rx[0] += 1
        rx[1] += size
        value = decode_payload(payload)
        last = self._last
        if topic in last:
            last[topic] = value
            last.move_to_end(topic)
        else:
            last[topic] = value
            if len(last) > self.last_values:
                last.popitem(last=False)
                self.last_values_evicted += 1
        if self._ledger.awaiting_data:
            self._data_arrived(topic)
        self.report_data(topic, value)

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
        if fut is None:
            listener = self.ack_listener
            if listener is not None and self._tracked:
                listener(
                    mid,
                    DeviceError(
                        f"the broker refused the publish: {reason.getName()}",
                        code=int(reason.value),
                        connection_id=self.connection_id,
                    )
                    if reason.is_failure
                    else None,
                )
            return
        if fut.done():
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
