"""The config models of the built-in drivers: one pydantic model per connection type.

A driver names its model in ``config_model``; the base class
(`edgelink.connection.Connection`) validates the ``config`` mapping with it
once, before the driver's ``__init__`` reads anything, and hands the driver
the typed result as ``self.cfg``. Every model refuses unknown keys and takes
types strictly: ``"502"`` is not a port, ``"yes"`` not a boolean; an integer
is accepted where seconds are a float. A failure is a `ConfigError` naming
``config.<key>`` (the manager prefixes ``connections.<id>``) and the reason.

What repeats across drivers is shared: `HostPort`, `TcpKeepalive`,
`TlsOptions`, `FramingOptions`. This module imports no driver library, so
``edgelink schema`` describes every driver's config without the extras.

A custom driver gets the same with a model of its own::

    class PumpConfig(DriverConfig):
        host: Host
        port: Port = 4001

    class PumpConnection(Connection):
        type_name = "pump"
        config_model = PumpConfig
        cfg: PumpConfig
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    field_validator,
    model_validator,
)

from edgelink._validation import field_error
from edgelink.bms.victron_ble import parse_key
from edgelink.drivers.framing import LENGTH_PREFIXES

__all__ = [
    "BUILTIN_CONFIG_MODELS",
    "AdsConfig",
    "AdsNotification",
    "BmsConfig",
    "Bool",
    "DriverConfig",
    "FramingOptions",
    "HttpConfig",
    "Host",
    "HostPort",
    "Int",
    "MqttConfig",
    "ModbusConfig",
    "ModbusRtuConfig",
    "ModbusTcpConfig",
    "MqttSubscription",
    "MqttWill",
    "Port",
    "Seconds",
    "SerialConfig",
    "SerialLineOptions",
    "TcpConfig",
    "TcpKeepalive",
    "Text",
    "TlsOptions",
    "ZktecoConfig",
]

#: An integer, never a string or a float ("5", 5.0 and true are refused).
Int = Annotated[int, Strict()]
#: true or false, never "yes" or 1.
Bool = Annotated[bool, Strict()]
#: A string, never a number.
Text = Annotated[str, Strict()]
#: A non-empty string.
Host = Annotated[str, Strict(), Field(min_length=1)]
#: A TCP or UDP port.
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
#: A duration in seconds above zero (an integer is fine, a string is not).
Seconds = Annotated[float, Strict(), Field(gt=0)]


def _payload(value: Any) -> str | bytes:
    if not isinstance(value, str | bytes):
        raise ValueError("must be a string")
    return value


def _non_empty_payload(value: Any) -> str | bytes:
    if not _payload(value):
        raise ValueError("must be a non-empty string")
    return value  # type: ignore[no-any-return]


def _verify(value: Any) -> bool | str:
    if isinstance(value, bool) or (isinstance(value, str) and value):
        return value
    raise ValueError("must be true, false or the path of a CA bundle file")


#: Bytes on the wire, given as text (UTF-8) or bytes (from Python).
Payload = Annotated[str | bytes, PlainValidator(_payload, json_schema_input_type=str)]
#: Non-empty bytes on the wire, given as text (UTF-8) or bytes.
NonEmptyPayload = Annotated[
    str | bytes,
    PlainValidator(_non_empty_payload, json_schema_input_type=Annotated[str, Field(min_length=1)]),
]


def _wrap(key: str, what: str) -> Any:
    """Let a plain string stand for ``{key: string}`` (a topic, a symbol name)."""

    def wrap(value: Any) -> Any:
        if isinstance(value, str):
            return {key: value}
        if not isinstance(value, Mapping | BaseModel):
            raise ValueError(f"must be {what}")
        return value

    return wrap


def _stopbits(value: float) -> float:
    if value not in (1, 1.5, 2):
        raise ValueError("must be 1, 1.5 or 2")
    return value


#: An MQTT quality of service.
QoS = Annotated[Int, Field(ge=0, le=2)]


class DriverConfig(BaseModel):
    """The base of every driver config model: unknown keys refused, types strict, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class HostPort(DriverConfig):
    """A peer reached over TCP: ``host`` and ``port`` (both required unless a driver says)."""

    host: Host = Field(description="the peer's host name or IP address")
    port: Port = Field(description="the peer's TCP port")


class TcpKeepalive(DriverConfig):
    """How a TCP link notices a dead peer (keepalive probes and the user timeout)."""

    keepalive_idle: Annotated[Int, Field(ge=1, le=32767)] = Field(
        default=10, description="seconds of silence before the first probe"
    )
    keepalive_interval: Annotated[Int, Field(ge=1, le=32767)] = Field(
        default=5, description="seconds between probes"
    )
    keepalive_count: Annotated[Int, Field(ge=1, le=127)] = Field(
        default=3, description="unanswered probes before the link is dead"
    )
    tcp_user_timeout: Seconds = Field(
        default=15.0, description="seconds sent data may stay unacknowledged"
    )


class TlsOptions(DriverConfig):
    """TLS of a link: on or off, the CA, the client certificate and the server name.

    The other keys need ``tls: true``; ``client_key`` needs ``client_cert``.
    """

    tls: Bool = Field(default=False, description="use TLS")
    verify: Bool = Field(default=True, description="check the server's certificate")
    ca_file: Text | None = Field(default=None, description="CA bundle file")
    client_cert: Text | None = Field(default=None, description="client certificate file")
    client_key: Text | None = Field(default=None, description="client key file")
    tls_server_name: Text | None = Field(default=None, description="the name to check (SNI)")

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        if self.client_key is not None and self.client_cert is None:
            raise field_error("client_key", "client_key needs client_cert")
        if not self.tls:
            for key in ("ca_file", "client_cert", "client_key", "tls_server_name"):
                if getattr(self, key) is not None:
                    raise field_error(key, f'{key} is set but tls is not: add "tls": true')
        return self


class FramingOptions(DriverConfig):
    """How a byte stream is cut into messages (`edgelink.drivers.framing.Framing`)."""

    framing: Literal["line", "length"] = Field(default="line", description="line or length")
    delimiter: NonEmptyPayload = Field(default="\n", description="end of a line message")
    length_prefix: Literal[tuple(LENGTH_PREFIXES)] = Field(  # type: ignore[valid-type]
        default="u16be", description="the length prefix of a length message"
    )
    max_frame: Annotated[Int, Field(ge=1)] | None = Field(
        default=None, description="longest message in bytes (4096, or what the prefix holds)"
    )


class TcpConfig(HostPort, TcpKeepalive):
    """``tcp``: a line protocol over TCP (PING/PONG health)."""

    health_request: Payload = Field(default="PING\n", description="the health check's request")
    health_response: Text = Field(default="PONG", description="the expected answer")
    identity_request: Payload | None = Field(
        default=None, description="a request whose answer identifies the device's boot"
    )
    encoding: Text = Field(default="utf-8", description="text encoding of the lines")
    max_line: Annotated[Int, Field(ge=1)] = Field(default=65536, description="longest line")

    @model_validator(mode="after")
    def _check_encoding(self) -> Self:
        _check_encoding(self.encoding)
        return self


def _check_encoding(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise field_error("encoding", f"unknown encoding {encoding!r}") from None


_SERIAL_PARITIES: Final = ("N", "E", "O", "M", "S", "NONE", "EVEN", "ODD", "MARK", "SPACE")


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class SerialLineOptions(DriverConfig):
    """The line settings of a serial port, beyond its path and speed (8N1, no flow control)."""

    bytesize: Annotated[Int, Field(ge=5, le=8)] = Field(default=8, description="data bits")
    parity: Annotated[
        Literal[_SERIAL_PARITIES],  # type: ignore[valid-type]
        BeforeValidator(_upper, json_schema_input_type=str),
    ] = Field(default="N", description="N, E, O, M or S")
    stopbits: Annotated[float, Strict(), AfterValidator(_stopbits)] = Field(
        default=1, description="stop bits: 1, 1.5 or 2"
    )
    rtscts: Bool = Field(default=False, description="RTS/CTS flow control")
    xonxoff: Bool = Field(default=False, description="XON/XOFF flow control")
    exclusive: Bool = Field(default=True, description="lock the port")


class SerialConfig(FramingOptions, SerialLineOptions):
    """``serial``: request/response messages over a serial port."""

    port: Host = Field(description="the device path, e.g. /dev/ttyUSB0")
    baudrate: Annotated[Int, Field(gt=0)] = Field(default=9600, description="bits per second")
    frame_timeout: Seconds | None = Field(
        default=1.0, description="seconds the rest of a started message may take; null: forever"
    )
    encoding: Text = Field(default="utf-8", description="text encoding of messages")
    health_request: Payload = Field(default="PING", description="the health check's request")
    health_response: Text = Field(default="PONG", description="the expected answer")
    identity_request: Payload | None = Field(
        default=None, description="a request whose answer identifies the device's boot"
    )

    @model_validator(mode="after")
    def _check_encoding(self) -> Self:
        _check_encoding(self.encoding)
        return self


_MODBUS_PARITIES: Final = ("N", "E", "O", "M", "S", "NONE", "EVEN", "ODD", "MARK", "SPACE")


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class ModbusConfig(DriverConfig):
    """What ``modbus_tcp`` and ``modbus_rtu`` share: the device, its limits and its health."""

    #: Unit ids this transport allows.
    unit_range: ClassVar[tuple[int, int]] = (0, 255)

    unit_id: Annotated[Int, Field(ge=0, le=255)] = Field(default=1, description="unit id")
    timeout: Seconds = Field(default=1.0, description="seconds the device has to answer")
    max_registers: Annotated[Int, Field(ge=1, le=125)] = Field(
        default=125, description="registers per read request"
    )
    max_bits: Annotated[Int, Field(ge=1, le=2000)] = Field(
        default=2000, description="coils or inputs per read request"
    )
    max_gap: Annotated[Int, Field(ge=0, le=124)] = Field(
        default=0, description="unused registers a read may span to join two tags"
    )
    write_function: Annotated[
        Literal["auto", "multiple"], BeforeValidator(_lower, json_schema_input_type=str)
    ] = Field(default="auto", description="auto: FC 6 for one register; multiple: always FC 16")
    dead_after: Annotated[Int, Field(ge=1, le=1000)] = Field(
        default=3, description="unanswered requests in a row after which the device is dead"
    )
    probe_interval: Seconds = Field(default=5.0, description="seconds between probes of a dead one")
    health_tag: Host = Field(default="hr:0", description="the register the health check reads")

    @model_validator(mode="after")
    def _check_unit(self) -> Self:
        low, high = self.unit_range
        if not low <= self.unit_id <= high:
            raise field_error("unit_id", f"unit_id must be an integer {low}..{high}")
        return self


class ModbusTcpConfig(ModbusConfig, TcpKeepalive):
    """``modbus_tcp``: a unit on a Modbus TCP host; one link per host, port and ``bus``."""

    host: Host = Field(description="the device's host name or IP address")
    port: Port = Field(default=502, description="the Modbus TCP port")
    bus: Host | None = Field(
        default=None, description="a link name: connections with other names get their own link"
    )


class ModbusRtuConfig(ModbusConfig):
    """``modbus_rtu``: a unit on a serial line; the units on one port share it."""

    unit_range: ClassVar[tuple[int, int]] = (1, 247)

    port: Host = Field(description="the device path, e.g. /dev/ttyUSB0")
    baudrate: Annotated[Int, Field(ge=50, le=4_000_000)] = Field(
        default=19200, description="bits per second"
    )
    parity: Annotated[
        Literal[_MODBUS_PARITIES],  # type: ignore[valid-type]
        BeforeValidator(_upper, json_schema_input_type=str),
    ] = Field(default="N", description="N, E, O, M or S")
    stopbits: Annotated[Int, Field(ge=1, le=2)] = Field(default=1, description="stop bits")
    bytesize: Annotated[Int, Field(ge=5, le=8)] = Field(default=8, description="data bits")
    handle_local_echo: Bool = Field(
        default=False, description="drop the echo of our own request (RS485 adapters)"
    )


class HttpConfig(TcpKeepalive):
    """``http``: a device with a JSON-over-HTTP API."""

    base_url: Host = Field(description="http:// or https:// URL the tags are relative to")
    headers: dict[Text, Text] = Field(default_factory=dict, description="headers of every request")
    api_key: Host | None = Field(default=None, description="sent in api_key_header")
    api_key_header: Host = Field(default="X-API-Key", description="the header of the api_key")
    api_key_prefix: Text = Field(default="", description="put before the api_key, e.g. 'Bearer '")
    health_path: Text = Field(default="/health", description="the path the health check GETs")
    timeout: Seconds = Field(default=5.0, description="seconds one request may take")
    write_method: Annotated[
        Literal["PUT", "POST", "PATCH"], BeforeValidator(_upper, json_schema_input_type=str)
    ] = Field(default="PUT", description="the method of write()")
    verify: Annotated[bool | str, PlainValidator(_verify, json_schema_input_type=bool | str)] = (
        Field(
            default=True, description="check the server's certificate; or the path of a CA bundle"
        )
    )
    follow_redirects: Bool = Field(default=False, description="follow 3xx answers")
    trust_env: Bool = Field(default=False, description="use proxy settings of the environment")


def _protocol(value: Any) -> Any:
    # "5" is naturally written as a number in JSON; it has always been accepted.
    return "5" if type(value) is int and value == 5 else value


class MqttSubscription(DriverConfig):
    """One subscription with options; a plain string is a topic filter with the defaults."""

    topic: Text = Field(description="the topic filter")
    qos: QoS | None = Field(default=None, description="QoS (the connection's qos)")
    expect_data: Bool = Field(
        default=False, description="confirmed by its first message, not by the SUBACK"
    )


class MqttWill(DriverConfig):
    """The message the broker publishes when the link dies without a goodbye."""

    topic: Text = Field(description="the will topic")
    payload: Any = Field(default=b"", description="the payload (text, bytes or a JSON value)")
    qos: QoS = Field(default=0, description="QoS")
    retain: Bool = Field(default=False, description="retained by the broker")


class MqttConfig(TlsOptions, TcpKeepalive):
    """``mqtt``: an MQTT broker as a device endpoint."""

    host: Host = Field(description="the broker's host name or IP address")
    port: Port | None = Field(default=None, description="the broker's port (1883, 8883 with tls)")
    username: Text | None = Field(default=None, description="user name")
    password: Text | None = Field(default=None, description="password (needs a username)")
    client_id: Text | None = Field(default=None, description="client id (a unique one by default)")
    subscribe: list[
        Annotated[
            MqttSubscription,
            BeforeValidator(
                _wrap("topic", "a topic filter or an object with topic, qos, expect_data"),
                json_schema_input_type=str | MqttSubscription,
            ),
        ]
    ] = Field(
        default_factory=list, description="topic filters, or objects with topic, qos, expect_data"
    )
    qos: QoS = Field(default=0, description="default QoS")
    keepalive: Annotated[Int, Field(ge=0, le=65535)] = Field(
        default=60, description="MQTT keepalive seconds"
    )
    max_inflight: Annotated[Int, Field(ge=1, le=65535)] = Field(
        default=20, description="QoS>0 messages in flight"
    )
    retain: Bool = Field(default=False, description="publish retained")
    protocol: Annotated[
        Literal["3.1.1", "5"],
        BeforeValidator(_protocol, json_schema_input_type=Literal["3.1.1", "5", 5]),
    ] = Field(default="3.1.1", description="MQTT version")
    clean_session: Bool = Field(default=True, description="start with a clean session")
    session_expiry: Annotated[Int, Field(ge=0, le=0xFFFFFFFF)] = Field(
        default=3600, description="MQTT 5 session expiry seconds"
    )
    health_check: Literal["echo", "ping"] = Field(
        default="echo", description="echo: a probe round trip; ping: an UNSUBSCRIBE answered"
    )
    health_topic: Text | None = Field(default=None, description="topic of the echo probe")
    subscribe_timeout: Seconds = Field(
        default=10.0, description="seconds a subscription has to be confirmed"
    )
    will: MqttWill | None = Field(default=None, description="the last will")
    last_values: Annotated[Int, Field(ge=1)] = Field(
        default=10_000,
        description="topics whose last value read() answers from; the least recent go first",
    )

    @model_validator(mode="after")
    def _check_session(self) -> Self:
        if self.password is not None and self.username is None:
            raise field_error("password", "password needs a username")
        if self.client_id is None and not self.clean_session:
            raise field_error(
                "client_id",
                "clean_session false needs a fixed client_id (the broker keeps the session "
                "under it)",
            )
        if self.client_id is not None and not 0 < len(self.client_id.encode()) <= 65535:
            raise field_error("client_id", "client_id must be 1..65535 bytes")
        return self


#: The AMS/TCP port; pyads's adslib on Linux connects to it whatever one asks.
ADS_TCP_PORT: Final = 48898


def _net_id(value: Any) -> Any:
    """Normalize an AMS net id (``192.168.001.10.1.1`` -> ``192.168.1.10.1.1``)."""
    if not isinstance(value, str):
        return value
    parts = value.split(".")
    if len(parts) != 6 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise ValueError("must be an AMS net id of six numbers 0..255 like 192.168.1.10.1.1")
    return ".".join(str(int(p)) for p in parts)


NetId = Annotated[Text, BeforeValidator(_net_id)]


class AdsNotification(DriverConfig):
    """A symbol the PLC pushes (an ADS device notification)."""

    tag: Host = Field(description="the symbol name")
    mode: Literal["change", "cycle"] = Field(default="change", description="on change or cyclic")
    cycle_time: Annotated[float, Strict(), Field(ge=0)] = Field(
        default=0.1, description="seconds between checks (cycle) or minimum spacing"
    )
    max_delay: Annotated[float, Strict(), Field(ge=0)] = Field(
        default=0.0, description="seconds the PLC may hold a value back"
    )


class AdsConfig(DriverConfig):
    """``ads``: a Beckhoff TwinCAT PLC over ADS."""

    ams_net_id: NetId = Field(description="the PLC's AMS net id, a.b.c.d.e.f")
    ams_port: Port = Field(default=851, description="the PLC runtime's port (851: TwinCAT 3)")
    host: Host | None = Field(
        default=None, description="the PLC's IP address (the net id's first four numbers)"
    )
    port: Int = Field(default=ADS_TCP_PORT, description="the AMS/TCP port; adslib dials no other")
    local_ams_net_id: NetId | None = Field(default=None, description="this gateway's AMS net id")
    timeout: Seconds = Field(default=2.0, description="seconds one ADS request may take")
    require_run: Bool = Field(default=True, description="healthy only while the PLC is in RUN")
    notification_timeout: Seconds = Field(
        default=10.0, description="seconds a notification has to deliver its first value"
    )
    notifications: list[
        Annotated[
            AdsNotification,
            BeforeValidator(
                _wrap("tag", "a symbol name or an object with tag, mode, cycle_time, max_delay"),
                json_schema_input_type=str | AdsNotification,
            ),
        ]
    ] = Field(default_factory=list, description="symbol names or notification objects")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.port != ADS_TCP_PORT:
            hint = " (the PLC runtime's port is ams_port)" if self.port in (801, 851, 852) else ""
            raise field_error(
                "port",
                f"must be {ADS_TCP_PORT}, got {self.port!r}{hint}: pyads's adslib always "
                f"connects to the AMS/TCP port {ADS_TCP_PORT}",
            )
        for i, item in enumerate(self.notifications):
            why = notification_times_error(item, self.notification_timeout)
            if why is not None:
                raise field_error(("notifications", i), why)
        return self


def notification_times_error(item: AdsNotification, timeout: float) -> str | None:
    """Say why a notification's first value may not come within ``timeout``; None if it can."""
    total = item.cycle_time + item.max_delay
    if total < timeout:
        return None
    # The PLC may take that long for the first value: every replay would
    # time out and the link look degraded while it works.
    return (
        f"cycle_time + max_delay ({total:g} s) must be below notification_timeout "
        f"({timeout:g} s), which bounds the wait for a notification's first value"
    )


class ZktecoConfig(TcpKeepalive):
    """``zkteco``: a ZKTeco attendance terminal (the ZK protocol over TCP)."""

    host: Host = Field(description="the terminal's host name or IP address")
    port: Port = Field(default=4370, description="the ZK protocol port")
    password: Annotated[Int, Field(ge=0, le=0xFFFFFFFF)] = Field(
        default=0, description="the comm key (the device password, a number); 0: none"
    )
    timeout: Seconds = Field(default=5.0, description="seconds the device has to answer a packet")
    transport: Literal["tcp", "udp"] = Field(default="tcp", description="tcp or udp")
    realtime: Bool = Field(
        default=True, description="register for attendance events and report them as data"
    )
    max_chunk: Annotated[Int, Field(ge=64, le=0xFFC0)] = Field(
        default=0xFFC0, description="bytes per chunk when reading a table"
    )
    max_records: Annotated[Int, Field(ge=1)] = Field(
        default=200_000, description="rows a users or attendance list may hold"
    )
    encoding: Text = Field(default="utf-8", description="text encoding of names")

    @model_validator(mode="after")
    def _check_encoding(self) -> Self:
        _check_encoding(self.encoding)
        return self


#: How a ``ble`` characteristic's bytes become a value (and back, for writes).
BLE_FORMATS: Final = (
    "raw",
    "utf8",
    "u8",
    "i8",
    "u16le",
    "i16le",
    "u16be",
    "i16be",
    "u32le",
    "i32le",
    "f32le",
)

_BLE_BASE_UUID = "-0000-1000-8000-00805f9b34fb"


def normalize_ble_uuid(uuid: str) -> str:
    """Return a GATT UUID in its 128-bit lower-case form (``ff01`` -> ``0000ff01-0000-...``).

    Raises:
        ValueError: if it is neither a 16-bit, 32-bit nor 128-bit UUID.
    """
    text = uuid.strip().lower()
    if len(text) == 4 and all(c in "0123456789abcdef" for c in text):
        return f"0000{text}{_BLE_BASE_UUID}"
    if len(text) == 8 and all(c in "0123456789abcdef" for c in text):
        return f"{text}{_BLE_BASE_UUID}"
    parts = text.split("-")
    if [len(p) for p in parts] == [8, 4, 4, 4, 12] and all(
        c in "0123456789abcdef" for c in text.replace("-", "")
    ):
        return text
    raise ValueError(
        f"{uuid!r} is not a GATT UUID (16-bit like ff01, or 128-bit like "
        "0000ff01-0000-1000-8000-00805f9b34fb)"
    )


class BleCharacteristic(DriverConfig):
    """One GATT characteristic of a ``ble`` connection and how to read its bytes."""

    uuid: Host = Field(description="the characteristic's UUID (16-bit ff01 or 128-bit)")
    format: Literal[BLE_FORMATS] = Field(  # type: ignore[valid-type]
        default="raw", description="raw (hex), utf8, u8, i8, u16le, i16le, u16be, ..., f32le"
    )
    scale: float = Field(default=1.0, description="numbers are multiplied by this")

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return normalize_ble_uuid(value)


class BleConfig(DriverConfig):
    """``ble``: a Bluetooth LE device over GATT (bleak), found by the shared scanner."""

    address: Host = Field(description="the device's address (AA:BB:...) or advertised name")
    notify: dict[str, BleCharacteristic] = Field(
        default_factory=dict, description="tag -> characteristic whose notifications are data"
    )
    read: dict[str, BleCharacteristic] = Field(
        default_factory=dict, description="tag -> characteristic read every interval"
    )
    write: dict[str, BleCharacteristic] = Field(
        default_factory=dict, description="tag -> characteristic that write(tag, value) sets"
    )
    interval: Seconds = Field(default=5.0, description="seconds between reads and RSSI checks")
    scan_timeout: Seconds = Field(
        default=10.0,
        description="seconds to wait for the device's advertisement (the connection's "
        "settings.connect_timeout bounds the whole attempt: raise it for BLE)",
    )
    max_attempts: Annotated[Int, Field(ge=1, le=10)] = Field(
        default=3, description="connect attempts within one connect (bleak-retry-connector)"
    )
    pair: Bool = Field(default=False, description="pair before connecting (where supported)")
    rssi_warning: Annotated[Int, Field(le=0)] = Field(
        default=-90, description="dBm below which the link is reported degraded"
    )
    stale_after: Seconds | None = Field(
        default=None,
        description="health without read tags: seconds without a notification (3 * interval)",
    )
    confirm_within: Seconds = Field(
        default=10.0, description="seconds a notification subscription may take to be confirmed"
    )

    @model_validator(mode="after")
    def _check_tags(self) -> Self:
        seen: dict[str, str] = {}
        for section in ("notify", "read", "write"):
            for tag in getattr(self, section):
                if not tag or any(c in tag for c in " /#+*"):
                    raise field_error(section, f"tag {tag!r}: no spaces or / # + *, not empty")
                if tag == "rssi":
                    raise field_error(section, "tag 'rssi' is the driver's own (the signal)")
                if section != "write" and tag in seen:
                    raise field_error(section, f"tag {tag!r} is also in {seen[tag]}")
                if section != "write":
                    seen[tag] = section
        uuids = [c.uuid for c in self.notify.values()]
        if len(set(uuids)) != len(uuids):
            raise field_error("notify", "each characteristic may be subscribed once")
        return self


#: The BMS protocols `edgelink.bms` reads.
BMS_PARSERS: Final = ("ant", "daly", "jbd", "victron")


class BmsConfig(SerialLineOptions):
    """``bms``: a battery management system read with an `edgelink.bms` parser.

    ``transport: serial`` (a UART or RS485 adapter) needs ``port``;
    ``transport: ble`` needs ``address`` (and, for a Victron, its
    ``encryption_key``: it is read from its advertisements, not over GATT).
    """

    parser: Literal[BMS_PARSERS] = Field(  # type: ignore[valid-type]
        description="the protocol: ant, daly, jbd or victron"
    )
    transport: Literal["serial", "ble"] = Field(
        default="serial", description="serial (UART, RS485) or ble"
    )
    port: Host | None = Field(default=None, description="the serial device path (serial)")
    baudrate: Annotated[Int, Field(gt=0)] | None = Field(
        default=None, description="bits per second (default: the parser's, 9600 or 19200)"
    )
    address: Host | None = Field(default=None, description="the BLE address or name (ble)")
    encryption_key: Text | None = Field(
        default=None, description="a Victron's instant-readout key, 32 hex digits (ble)"
    )
    scan_timeout: Seconds = Field(
        default=10.0, description="seconds to wait for the BLE device's advertisement (ble)"
    )
    max_attempts: Annotated[Int, Field(ge=1, le=10)] = Field(
        default=3, description="BLE connect attempts within one connect (ble)"
    )
    rssi_warning: Annotated[Int, Field(le=0)] = Field(
        default=-90, description="dBm below which the BLE link is reported degraded (ble)"
    )
    interval: Seconds = Field(default=2.0, description="seconds between two polls")
    response_timeout: Seconds = Field(
        default=1.0, description="seconds the BMS may take to answer one request"
    )
    stale_after: Seconds | None = Field(
        default=None,
        description="health: seconds without a valid frame (3 * interval + response_timeout)",
    )
    error_streak: Annotated[Int, Field(ge=1)] = Field(
        default=3, description="bad frames in a row that drop the link"
    )
    max_buffer: Annotated[Int, Field(ge=64)] = Field(
        default=4096, description="bytes buffered while waiting for the rest of a frame"
    )

    @model_validator(mode="after")
    def _check_transport(self) -> Self:
        if self.transport == "ble":
            if self.address is None:
                raise field_error(
                    "address", 'transport "ble" needs "address" (AA:BB:... or the name)'
                )
            if self.port is not None:
                raise field_error("port", 'port is for transport "serial"; ble uses "address"')
            if self.parser == "victron":
                if self.encryption_key is None:
                    raise field_error(
                        "encryption_key",
                        "a Victron is read from its encrypted advertisements: give its "
                        "encryption_key (VictronConnect: Product info, Instant readout)",
                    )
                try:
                    parse_key(self.encryption_key)
                except ValueError as exc:
                    raise field_error("encryption_key", f"not a Victron key: {exc}") from None
            return self
        if self.parser == "ant":
            raise field_error("parser", 'the ANT BMS speaks over BLE: use "transport": "ble"')
        if self.port is None:
            raise field_error("port", 'transport "serial" needs "port", e.g. /dev/ttyUSB0')
        if self.address is not None:
            raise field_error("address", 'address is for transport "ble"; serial uses "port"')
        if self.encryption_key is not None:
            raise field_error("encryption_key", "encryption_key is for a Victron over ble")
        return self


#: The config model of each built-in connection type (for ``edgelink schema``).
BUILTIN_CONFIG_MODELS: Final[dict[str, type[DriverConfig]]] = {
    "tcp": TcpConfig,
    "serial": SerialConfig,
    "modbus_tcp": ModbusTcpConfig,
    "modbus_rtu": ModbusRtuConfig,
    "http": HttpConfig,
    "mqtt": MqttConfig,
    "ads": AdsConfig,
    "zkteco": ZktecoConfig,
    "bms": BmsConfig,
    "ble": BleConfig,
}

#: The former names (before 0.2), kept for one release.
TCPConfig = TcpConfig
HTTPConfig = HttpConfig
MQTTConfig = MqttConfig
