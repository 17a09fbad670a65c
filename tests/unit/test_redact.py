"""Tests of `edgelink.redact`: URL userinfo, secret query keys, remembered secrets, the log filter."""

from __future__ import annotations

import logging

import httpx
import pytest

from edgelink.errors import ConfigError, ConnectError
from edgelink.redact import (
    REDACTED,
    RedactingFilter,
    collect_secrets,
    is_secret_key,
    redact,
    redact_text,
    redact_url,
    remember_secrets,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://admin:pass@host/p", "http://***@host/p"),
        ("https://user@host:8443", "https://***@host:8443"),
        ("mqtt://u:p@ss@broker:1883/x", "mqtt://***@broker:1883/x"),
        ("got 'http://a:b@h' and 'ftp://c:d@h2'", "got 'http://***@h' and 'ftp://***@h2'"),
        ("http://host/p?token=abc&n=1", "http://host/p?token=***&n=1"),
        ("GET /status?api_key=k1&key=k2&monkey=3", "GET /status?api_key=***&key=***&monkey=3"),
        (
            "/x?access_token=a;password=b&Signature=c",
            "/x?access_token=***;password=***&Signature=***",
        ),
        ("http://host/p?n=1#frag", "http://host/p?n=1#frag"),
        ("state=connected attempt=0", "state=connected attempt=0"),
        ("no url here", "no url here"),
    ],
)
def test_redact_text_cuts_userinfo_and_secret_query_values(text: str, expected: str) -> None:
    """Test that URL userinfo and the values of secret-named query keys are replaced."""
    assert redact_text(text) == expected
    assert redact_url(text) == expected


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("api_key", True),
        ("Authorization", True),
        ("X-Api-Key", True),
        ("Cookie", True),
        ("key", True),
        ("access_key", True),
        ("token", True),
        ("keepalive_idle", False),
        ("base_url", False),
        ("api_key_header", True),
        ("monkey", False),
    ],
)
def test_secret_key_names(key: str, secret: bool) -> None:
    """Test the key-name rule shared by configs, headers and query strings."""
    assert is_secret_key(key) is secret


def test_redact_walks_configs_and_their_strings() -> None:
    """Test that redact hides secret-named values and cuts userinfo in every string."""
    config = {
        "base_url": "http://admin:pw@host",
        "headers": {"Cookie": "sid=1", "Accept": "text/plain"},
        "hooks": ["https://h/x?token=t"],
        "port": 80,
    }
    assert redact(config) == {
        "base_url": "http://***@host",
        "headers": {"Cookie": REDACTED, "Accept": "text/plain"},
        "hooks": ["https://h/x?token=***"],
        "port": 80,
    }


def test_collect_secrets_finds_values_userinfo_basic_auth_and_query_tokens() -> None:
    """Test that collect_secrets finds everything a request built from a config could reveal."""
    found = collect_secrets(
        {
            "base_url": "http://ad%40min:pa%3Ass@h/x?token=qqqqqq",
            "headers": {"Authorization": "Bearer abcdef", "Accept": "text/plain"},
            "api_key": "kkkkkk",
            "api_key_header": "X-API-Key",
            "auth_timeout": 30,
            "short": {"password": "pw"},
        }
    )
    assert {"pa%3Ass", "ad%40min:pa%3Ass", "Bearer abcdef", "abcdef", "kkkkkk"} <= found
    assert "YWRAbWluOnBhOnNz" in found  # base64("ad@min:pa:ss"), the Basic-auth header
    assert "qqqqqq" in found
    assert not {"text/plain", "pw", "pa:ss", "30", "X-API-Key"} & found


def test_remembered_secrets_are_replaced_anywhere() -> None:
    """Test that a remembered value is redacted in any text, the longest match first."""
    remember_secrets(["Zx-remembered-0001", "Zx-remembered-0001-longer", "admin"])
    assert redact_text("a Zx-remembered-0001-longer b") == "a *** b"
    assert redact_text("[Zx-remembered-0001]") == "[***]"
    assert redact_text("admin stays: too short") == "admin stays: too short"


def test_errors_redact_their_messages() -> None:
    """Test that an edgelink error never keeps a URL's credentials in its message."""
    err = ConnectError("GET http://u:secretpw@h/x?token=t1: refused", connection_id="c")
    assert "secretpw" not in str(err) and "t1" not in str(err)
    cfg = ConfigError("base_url 'ftp://u:secretpw@h' is wrong", path="config.base_url")
    assert "secretpw" not in str(cfg) and "secretpw" not in repr(cfg.errors)


def test_filter_redacts_message_args_and_exception_text() -> None:
    """Test that the log filter redacts arguments (an httpx.URL), the message and the traceback."""
    record = logging.LogRecord(
        "httpx", logging.INFO, __file__, 1, "HTTP Request: %s %s", ("GET", None), None
    )
    record.args = ("GET", httpx.URL("http://admin:Fp-secret-77@h/p?api_key=Fk-77"))
    try:
        raise OSError("cannot reach http://admin:Fp-secret-77@h")
    except OSError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record) is True
    text = logging.Formatter().format(record)
    assert "Fp-secret-77" not in text and "Fk-77" not in text
    assert "http://***@h/p?api_key=***" in text


def test_driver_config_errors_never_quote_a_password() -> None:
    """Test that a driver's config error (what check and reload report) redacts the URL it quotes."""
    from edgelink.drivers.http import HttpConnection

    with pytest.raises(ConfigError) as info:
        HttpConnection("m", {"base_url": "ftp://u:Cp-check-01@h/x"})
    assert "ftp://***@h/x" in str(info.value)
    assert "Cp-check-01" not in str(info.value)
