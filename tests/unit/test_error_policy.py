"""The one error policy: every exception class and its verdict, and the drivers' tables."""

from __future__ import annotations

import asyncio
import ssl
import struct

import pytest

from edgelink import errors as e
from edgelink.drivers._modbus_bus import PYMODBUS_ERRORS, ModbusTimeoutError
from edgelink.errors import Action, Verdict, classify, map_exceptions

A = Action


def _chained(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


def _cyclic() -> BaseException:
    exc = RuntimeError("loops")
    exc.__cause__ = exc
    return exc


#: (exception, action, reason): the whole policy as one table.
POLICY: list[tuple[BaseException, Action, str]] = [
    # edgelink's own tree
    (e.EdgelinkError("x"), A.FAIL, "error"),
    (e.ConfigError("x"), A.PERMANENT, "error"),
    (e.ConnectError("x"), A.RECONNECT, "connect_failed"),
    (e.ConnectTimeout("x"), A.TIMEOUT, "timeout"),
    (e.ConnectionLostError("x"), A.RECONNECT, "connect_failed"),
    (e.ReconnectionError("x"), A.FAIL, "error"),
    (e.ProtocolError("x"), A.RECONNECT, "protocol_error"),
    (e.DeviceError("x", code=2), A.REFUSED, "error"),
    (e.DeviceSleepError("x"), A.SLEEP, "device_sleep"),
    (e.DeviceResetError("x"), A.FAIL, "device_reset_failed"),
    (e.PermanentError("x"), A.PERMANENT, "permanent"),
    (e.AuthError("x"), A.PERMANENT, "auth"),
    (e.ConnectionHealthError("x"), A.RECONNECT, "error"),
    (e.ConnectionPoolExhaustedError("x"), A.FAIL, "error"),
    (e.RouteError("x"), A.FAIL, "error"),
    (ModbusTimeoutError("x"), A.TIMEOUT, "timeout"),
    # the class decides, never the message
    (e.PermanentError("authentication failed"), A.PERMANENT, "permanent"),
    (e.ConnectError("auth refused"), A.RECONNECT, "connect_failed"),
    # the reason comes from the cause chain, the action from the error itself
    (e.ConnectError("x", cause=ConnectionRefusedError()), A.RECONNECT, "refused"),
    (_chained(e.ConnectError("x"), ConnectionResetError()), A.RECONNECT, "connection_reset"),
    (e.ConnectError("x", cause=e.ProtocolError("y")), A.RECONNECT, "protocol_error"),
    (e.ConnectError("x", cause=e.AuthError("y")), A.RECONNECT, "auth"),
    (e.PermanentError("x", cause=TimeoutError()), A.PERMANENT, "permanent"),
    (_chained(ValueError("x"), TimeoutError()), A.POISON, "timeout"),
    (_cyclic(), A.POISON, "error"),
    # the OS and asyncio
    (OSError("x"), A.RECONNECT, "connect_failed"),
    (ConnectionRefusedError(), A.RECONNECT, "refused"),
    (ConnectionResetError(), A.RECONNECT, "connection_reset"),
    (ConnectionAbortedError(), A.RECONNECT, "connect_failed"),
    (BrokenPipeError(), A.RECONNECT, "connection_reset"),
    (ssl.SSLError("x"), A.RECONNECT, "connect_failed"),
    (TimeoutError(), A.TIMEOUT, "timeout"),
    (asyncio.TimeoutError(), A.TIMEOUT, "timeout"),  # noqa: UP041 - the alias, on purpose
    (EOFError(), A.RECONNECT, "connection_reset"),
    (asyncio.IncompleteReadError(b"", 4), A.RECONNECT, "connection_reset"),
    # never handled: re-raised wherever they arrive
    (asyncio.CancelledError(), A.PROPAGATE, "error"),
    (KeyboardInterrupt(), A.PROPAGATE, "error"),
    (SystemExit(1), A.PROPAGATE, "error"),
    (GeneratorExit(), A.PROPAGATE, "error"),
    # the device or driver cannot do this: the link stays
    (NotImplementedError(), A.REFUSED, "error"),
    # bugs in a driver or its decoding: a reconnect cannot fix them
    (KeyError("x"), A.POISON, "error"),
    (ValueError("x"), A.POISON, "error"),
    (TypeError("x"), A.POISON, "error"),
    (IndexError("x"), A.POISON, "error"),
    (ZeroDivisionError(), A.POISON, "error"),
    (struct.error("x"), A.POISON, "error"),
    (RuntimeError("x"), A.POISON, "error"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), A.POISON, "error"),
]


@pytest.mark.parametrize(
    ("exc", "action", "reason"),
    POLICY,
    ids=[f"{type(x).__name__}-{i}" for i, (x, _, _) in enumerate(POLICY)],
)
def test_classify(exc: BaseException, action: Action, reason: str) -> None:
    """Test that each exception gets its action and status reason."""
    assert classify(exc) == Verdict(action, reason)


def test_every_error_class_is_in_the_table() -> None:
    """Test that the table above covers every exception class edgelink exports."""
    exported = {
        obj
        for obj in (getattr(e, name) for name in e.__all__)
        if isinstance(obj, type) and issubclass(obj, BaseException)
    }
    assert exported <= {type(exc) for exc, _, _ in POLICY}


@pytest.mark.parametrize("action", list(Action))
def test_breaks_link(action: Action) -> None:
    """Test that only a reconnect or a timeout breaks the link (and is retried on a new one)."""
    assert Verdict(action, "x").breaks_link is (action in (A.RECONNECT, A.TIMEOUT))


def test_verdict_is_a_frozen_value() -> None:
    """Test that a verdict compares by value and cannot be changed."""
    verdict = classify(TimeoutError())
    assert verdict == Verdict(A.TIMEOUT, "timeout")
    with pytest.raises(AttributeError):
        verdict.reason = "other"  # type: ignore[misc]


def test_auth_error_is_permanent_and_public() -> None:
    """Test that AuthError is a PermanentError, exported from edgelink."""
    import edgelink

    assert issubclass(e.AuthError, e.PermanentError)
    assert edgelink.AuthError is e.AuthError


TABLE: e.ExceptionMap = {
    ConnectionRefusedError: (e.ConnectError, "{where}: refused ({error_type}: {text})"),
    KeyError: lambda exc, **_: None,  # passes on: the next entry decides
    LookupError: (e.ProtocolError, "{where}: {error.args[0]}"),
}


def test_map_exceptions_translates_by_the_table() -> None:
    """Test that the first matching entry builds the error, with fields, id and cause."""
    cause = ConnectionRefusedError(111, "nope")
    with pytest.raises(e.ConnectError) as info, map_exceptions(TABLE, connection_id="c", where="h"):
        raise cause
    err = info.value
    assert str(err) == "[c] h: refused (ConnectionRefusedError: [Errno 111] nope)"
    assert (err.connection_id, err.cause, err.__cause__) == ("c", cause, cause)
    assert classify(err).reason == "refused"


def test_map_exceptions_translator_may_pass_on() -> None:
    """Test that a translator returning None lets a later entry decide."""
    with pytest.raises(e.ProtocolError, match="h: k"), map_exceptions(TABLE, where="h"):
        raise KeyError("k")


@pytest.mark.parametrize(
    "exc",
    [e.DeviceError("mine"), ValueError("unnamed"), asyncio.CancelledError(), KeyboardInterrupt()],
)
def test_map_exceptions_passes_the_rest_through(exc: BaseException) -> None:
    """Test that edgelink errors, unnamed exceptions and cancellations pass untouched."""
    with pytest.raises(type(exc)) as info, map_exceptions(TABLE, where="h"):
        raise exc
    assert info.value is exc


def test_map_exceptions_fills_id_and_cause_of_a_translator() -> None:
    """Test that a translator's error gets the connection id and the cause if it left them out."""
    table: e.ExceptionMap = {ValueError: lambda exc, **f: e.DeviceError(f"{f['what']}: {exc}")}
    with pytest.raises(e.DeviceError) as info, map_exceptions(table, connection_id="c", what="w"):
        raise ValueError("v")
    assert (str(info.value), type(info.value.cause)) == ("[c] w: v", ValueError)


def test_map_exceptions_without_error() -> None:
    """Test that a block that does not raise is left alone."""
    with map_exceptions(TABLE):
        value = 1
    assert value == 1


def test_pymodbus_table() -> None:
    """Test that pymodbus's closed link is transient and its other errors are garbage."""
    from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

    m = map_exceptions(PYMODBUS_ERRORS, connection_id="c", what="read 1")
    closed = m.translate(ConnectionException("gone"))
    assert isinstance(closed, e.ConnectError) and "read 1: " in str(closed)
    for exc in (ModbusIOException("short frame"), ModbusException("odd")):
        error = m.translate(exc)
        assert isinstance(error, e.ProtocolError)
        assert classify(error).action is A.RECONNECT


def test_httpx_table() -> None:
    """Test that httpx's exceptions become timeouts, transport, protocol and device errors."""
    httpx = pytest.importorskip("httpx")
    from edgelink.drivers.http import HTTPX_ERRORS

    m = map_exceptions(HTTPX_ERRORS, connection_id="c", where="GET /x", timeout=2.0)
    cases = [
        (
            httpx.ConnectTimeout("t"),
            e.ConnectTimeout,
            "GET /x: no answer within 2 s (ConnectTimeout)",
        ),
        (httpx.ReadTimeout("t"), e.ConnectTimeout, "GET /x: no answer within 2 s (ReadTimeout)"),
        (httpx.ConnectError("refused"), e.ConnectError, "GET /x: refused"),
        (httpx.ReadError(""), e.ConnectError, "GET /x: ReadError"),
        (httpx.RemoteProtocolError("bad"), e.ProtocolError, "the device broke the HTTP protocol"),
        (httpx.InvalidURL("no"), e.DeviceError, "GET /x: not a valid URL path: no"),
    ]
    for exc, cls, text in cases:
        error = m.translate(exc)
        assert type(error) is cls and text in str(error), (exc, error)
    cert = ssl.SSLCertVerificationError("x")
    cert.verify_message = "unable to get local issuer certificate"
    refused = httpx.ConnectError("tls")
    refused.__cause__ = cert
    error = m.translate(refused)
    assert type(error) is e.PermanentError and "certificate was refused" in str(error)


def test_mqtt_tls_table() -> None:
    """Test that a refused broker certificate is permanent and other TLS failures transient."""
    pytest.importorskip("paho.mqtt")
    from edgelink.drivers.mqtt import TLS_ERRORS

    m = map_exceptions(TLS_ERRORS, connection_id="c", where="h:8883", server_name="broker")
    cert = ssl.SSLCertVerificationError("x")
    cert.verify_message = "hostname mismatch"
    refused = m.translate(cert)
    assert type(refused) is e.PermanentError and "'broker' was refused: hostname" in str(refused)
    failed = m.translate(ssl.SSLError("wrong version"))
    assert type(failed) is e.ConnectError and "TLS handshake with h:8883 failed" in str(failed)
