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
subscription ledger (`edgelink.subscriptions`), whose entries must be
confirmed (SUBACK, or the first message for ``expect_data`` subscriptions)
within ``subscribe_timeout`` or the health turns ``degraded`` and the
subscriptions are replayed again.

The health check is a real round trip through the broker: a probe published
to a private topic the client subscribes to must come back (``echo``), or,
for brokers whose ACL forbids that, an UNSUBSCRIBE must be answered
(``ping``).

The package's parts: ``_codec`` (payloads and topics, pure), ``_io`` (paho on
the loop: sockets, TLS, flushes, keepalive), ``_subscriptions`` (the ledger
and its SUBACKs) and ``_connection`` (`MqttConnection`: session, health,
data plane).
"""

from __future__ import annotations

try:
    import paho.mqtt.client  # noqa: F401 - the extra's check, before the parts import it
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"the mqtt driver needs paho-mqtt: pip install 'edgelink[mqtt]' ({exc})"
    ) from exc

from edgelink.drivers.mqtt._codec import decode_payload, encode_payload
from edgelink.drivers.mqtt._connection import HealthMode, MqttConnection
from edgelink.drivers.mqtt._io import MISC_INTERVAL, READ_BATCH, TLS_ERRORS
from edgelink.drivers.mqtt._subscriptions import SUBSCRIBE_BATCH

#: The former name (before 0.2), kept for one release.
MQTTConnection = MqttConnection

__all__ = [
    "MISC_INTERVAL",
    "READ_BATCH",
    "SUBSCRIBE_BATCH",
    "TLS_ERRORS",
    "HealthMode",
    "MqttConnection",
    "decode_payload",
    "encode_payload",
]
