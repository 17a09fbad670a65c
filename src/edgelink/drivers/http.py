"""``http``: a device with a JSON-over-HTTP API (inverters, meters, wallboxes, gateways).

Tags name a request: ``[METHOD ]path[?query][#json-pointer]``:

- ``read("/status")`` GETs ``<base_url>/status`` and returns the JSON value
  (or the text, for a body that is not JSON);
- ``read("/status#/power/ac")`` returns the member the RFC 6901 JSON pointer
  ``/power/ac`` selects (``~1`` is ``/`` and ``~0`` is ``~`` inside a name;
  array elements by index: ``#/phases/0/voltage``);
- ``read("POST /rpc/Shelly.GetStatus")`` sends a POST without a body (RPC-style
  devices); reads allow GET and POST;
- ``write("/settings/mode", "eco")`` PUTs the JSON body ``"eco"`` (the
  ``write_method`` config key; or ``write("POST /api/cmd", {...})``); writes
  allow PUT, POST and PATCH, and have no pointer.

Answers: 2xx is success; 401/403 is an `AuthError` (bad or missing
api_key: state ``error``, reason ``auth``, no retries); other 4xx is a `DeviceError` (the
device said no: the link stays); 5xx and transport errors are a `ConnectError`
(transient: reconnect and retry), a timeout a `ConnectTimeout`; a body that
claims to be JSON but is not (or a pointer into a body that is not JSON) is a
`ProtocolError`. The api_key is sent as a header and never logged.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from edgelink.connection import Connection
from edgelink.drivers._socket import tcp_socket_options
from edgelink.drivers.configs import HttpConfig
from edgelink.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    DeviceError,
    EdgelinkError,
    ExceptionMap,
    PermanentError,
    ProtocolError,
    map_exceptions,
)

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"the http driver needs httpx: pip install 'edgelink[http]' ({exc})") from exc

__all__ = ["HttpConnection", "Request", "parse_tag", "resolve_pointer"]

logger = logging.getLogger(__name__)

READ_METHODS: Final = frozenset({"GET", "POST"})
WRITE_METHODS: Final = frozenset({"PUT", "POST", "PATCH"})
_ALL_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

# TLS contexts by CA source (True = the default bundle), shared by every
# connection: building one loads the CA bundle (35-70 ms here), which must
# neither block the loop nor happen per connect.
_ssl_contexts: dict[bool | str, ssl.SSLContext] = {}
_ssl_lock = threading.Lock()


def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    with _ssl_lock:
        ctx = _ssl_contexts.get(verify)
        if ctx is None:
            if isinstance(verify, str):
                is_dir = os.path.isdir(verify)
                ctx = ssl.create_default_context(
                    cafile=None if is_dir else verify, capath=verify if is_dir else None
                )
            else:
                ctx = httpx.create_ssl_context(verify=verify)
            _ssl_contexts[verify] = ctx
        return ctx


class Request(NamedTuple):
    """A parsed tag: the method, the path (with query) and the JSON pointer's tokens."""

    method: str
    path: str
    pointer: tuple[str, ...] | None


@functools.lru_cache(maxsize=4096)
def parse_tag(tag: str, default_method: str = "GET") -> Request:
    """Split a tag ``[METHOD ]path[?query][#pointer]`` into a `Request`.

    Parsed once per distinct tag (cached): polling the same tags costs no parsing.

    Raises:
        ValueError: naming what is wrong with the tag.
    """
    if not isinstance(tag, str) or not tag.strip():
        raise ValueError("a tag is '[METHOD ]path[#pointer]', got an empty one")
    method, sep, rest = tag.strip().partition(" ")
    if sep and method.upper() in _ALL_METHODS:
        method, target = method.upper(), rest.strip()
    else:
        method, target = default_method, tag.strip()
    path, hash_, fragment = target.partition("#")
    if not path:
        raise ValueError(f"tag {tag!r} has no path")
    if "://" in path or path.startswith("//"):
        raise ValueError(f"tag {tag!r} must be a path relative to base_url, not a URL")
    if any(ch.isspace() for ch in path):
        raise ValueError(f"tag {tag!r}: the path must not contain spaces (use %20)")
    pointer: tuple[str, ...] | None = None
    if hash_:
        text = urllib.parse.unquote(fragment)
        if text and not text.startswith("/"):
            raise ValueError(
                f"tag {tag!r}: a JSON pointer starts with '/' (e.g. '#/power/ac'), got {text!r}"
            )
        pointer = tuple(t.replace("~1", "/").replace("~0", "~") for t in text.split("/")[1:])
    return Request(method, path, pointer)


def resolve_pointer(document: Any, tokens: tuple[str, ...], where: str = "") -> Any:
    """Return the part of ``document`` the JSON pointer ``tokens`` selects (RFC 6901).

    Raises:
        DeviceError: if the document has nothing there, naming the pointer so far.
    """
    current = document
    for depth, name in enumerate(tokens):
        at = "/" + "/".join(tokens[:depth]) if depth else "the document root"
        if isinstance(current, Mapping):
            if name not in current:
                raise DeviceError(f"{where}: no member {name!r} at {at}")
            current = current[name]
        elif isinstance(current, list):
            if not name.isdigit() or (name != "0" and name.startswith("0")):
                raise DeviceError(f"{where}: {name!r} is not an array index at {at}")
            index = int(name)
            if index >= len(current):
                raise DeviceError(
                    f"{where}: index {index} is past the end of the array at {at} "
                    f"(length {len(current)})"
                )
            current = current[index]
        else:
            raise DeviceError(
                f"{where}: {at} is a {type(current).__name__}, not an object or array"
            )
    return current


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare for devices, and only a hint


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a connect error, if that is what it is."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _chain_socket_error(exc: BaseException) -> None:
    """Make the socket error behind a connect error its ``__cause__`` again.

    httpcore wraps the socket's `OSError` as the argument of its own
    ``ConnectError`` but raises it without ``from``: the error is only the
    implicit context, and the cause chain that `edgelink.errors.classify`
    and failover read (``refused`` is a hard failure) would end there.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        context = cur.__context__
        if cur.__cause__ is None and isinstance(context, OSError) and context in cur.args:
            cur.__cause__ = context
        cur = cur.__cause__


def _refused_certificate(exc: Exception, *, where: str, **_: Any) -> EdgelinkError | None:
    """A connect error that is a refused certificate: permanent; None for any other."""
    bad_cert = _cert_error(exc)
    if bad_cert is None:
        _chain_socket_error(exc)
        return None
    return PermanentError(
        f"{where}: TLS: the device's certificate was refused: {bad_cert.verify_message or bad_cert}"
    )


#: httpx's exceptions as edgelink's, first match wins (subclasses first).
HTTPX_ERRORS: Final[ExceptionMap] = {
    httpx.TimeoutException: (
        ConnectTimeout,
        "{where}: no answer within {timeout:g} s ({error_type})",
    ),
    httpx.ConnectError: _refused_certificate,  # any other connect error: a TransportError
    httpx.RemoteProtocolError: (
        ProtocolError,
        "{where}: the device broke the HTTP protocol: {error}",
    ),
    httpx.TransportError: (ConnectError, "{where}: {text}"),
    httpx.InvalidURL: (DeviceError, "{where}: not a valid URL path: {error}"),
}


def _is_json(response: httpx.Response) -> bool:
    media = str(response.headers.get("content-type", "")).split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json") or media == "text/json"


class HttpConnection(Connection):
    """A device behind an HTTP JSON API.

    Example:
        manager.add_connection("inverter", "http", {
            "base_url": "http://192.168.1.60/api", "api_key": "...", "health_path": "/health"},
            poll=[{"tags": ["/status#/power/ac", "/status#/energy/today_kwh"], "interval": 5}])
    """

    type_name = "http"
    config_model = HttpConfig
    cfg: HttpConfig
    endpoint_fields = frozenset({"base_url", "headers", "api_key", "verify"})

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        cfg, cid = self.cfg, connection_id

        def fail(key: str, message: str) -> ConfigError:
            return ConfigError(message, path=f"config.{key}", connection_id=cid)

        base_url = cfg.base_url
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise fail("base_url", f"base_url {base_url!r} is not a URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise fail(
                "base_url", f"base_url must be http:// or https:// with a host, got {base_url!r}"
            )
        if url.fragment:
            raise fail("base_url", "base_url must not have a #fragment")
        self.base_url: str = base_url
        self.headers: dict[str, str] = dict(cfg.headers)
        self._api_key: str | None = cfg.api_key
        self.api_key_header = cfg.api_key_header
        self.api_key_prefix = cfg.api_key_prefix
        health_path = cfg.health_path
        try:
            health = parse_tag(health_path)
        except ValueError as exc:
            raise fail("health_path", str(exc)) from exc
        if health.pointer is not None or health.method not in READ_METHODS:
            raise fail("health_path", f"health_path must be a path to GET, got {health_path!r}")
        self.health_path: str = health.path
        self._health_request = health
        self.timeout = cfg.timeout
        self.write_method: str = cfg.write_method
        self.verify: bool | str = cfg.verify
        self._https = url.scheme == "https"
        self.follow_redirects: bool = cfg.follow_redirects
        self.trust_env: bool = cfg.trust_env
        self._socket_options = tcp_socket_options(
            keepalive_idle=cfg.keepalive_idle,
            keepalive_interval=cfg.keepalive_interval,
            keepalive_count=cfg.keepalive_count,
            user_timeout=cfg.tcp_user_timeout,
        )
        self._client: httpx.AsyncClient | None = None

    def endpoint_changed(self) -> None:
        """Take the base URL, headers, key and TLS check of the endpoint failover chose.

        The URL was checked when the connection was added (each endpoint is
        built once as a driver of its own then).
        """
        cfg = self.cfg
        self.base_url = cfg.base_url
        self.headers = dict(cfg.headers)
        self._api_key = cfg.api_key
        self.verify = cfg.verify
        self._https = httpx.URL(cfg.base_url).scheme == "https"

    async def connect(self) -> None:
        """Set up the HTTP client (connections open with the first request: the health check)."""
        await self.disconnect()
        headers = dict(self.headers)
        if self._api_key is not None:
            headers[self.api_key_header] = self.api_key_prefix + self._api_key
        verify: ssl.SSLContext | bool = False
        if self._https and self.verify is not False:
            cached = _ssl_contexts.get(self.verify)
            if cached is None:
                try:
                    cached = await asyncio.to_thread(_ssl_context, self.verify)
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(
                        f"cannot load the CA bundle {self.verify!r}: {exc}",
                        path="config.verify",
                        connection_id=self.connection_id,
                    ) from exc
            verify = cached
        transport = httpx.AsyncHTTPTransport(
            verify=verify, socket_options=self._socket_options, retries=0
        )
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(self.timeout),
            transport=transport,
            follow_redirects=self.follow_redirects,
            trust_env=self.trust_env,
        )

    async def disconnect(self) -> None:
        """Close the client and its pooled connections; idempotent, never raises."""
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:  # closing must not raise; logged at DEBUG
                logger.debug(
                    "%s: closing the HTTP client failed", self.connection_id, exc_info=True
                )

    def is_connected(self) -> bool:
        """Return True while the client is open."""
        return self._client is not None and not self._client.is_closed

    async def health_check(self) -> bool:
        """GET ``health_path``; any 2xx answer is healthy.

        Raises:
            AuthError: on 401/403 (the api_key is wrong or missing).
            ConnectError: on 5xx, a transport error or a timeout.
            DeviceError: on another 4xx (a wrong health_path, say).
        """
        req = self._health_request
        await self._request(req.method, req.path)
        return True

    async def read(self, tag: str) -> Any:
        """Send the tag's request (GET by default) and return the JSON value, or the text.

        With a ``#pointer`` the body must be JSON and the selected part is returned.

        Raises:
            DeviceError: for a bad tag, a 4xx answer, or a pointer to nothing.
            AuthError: on 401/403.
            ProtocolError: for a body that is not the JSON it should be.
            ConnectError: on 5xx, transport errors and timeouts.
        """
        req = self._parse(tag, "GET", READ_METHODS)
        response = await self._request(req.method, req.path)
        where = f"{req.method} {req.path}"
        if req.pointer is None and not _is_json(response):
            return response.text if response.content else None
        if not response.content:
            if req.pointer is None:
                return None
            raise ProtocolError(
                f"{where}: empty answer, expected JSON for the pointer",
                connection_id=self.connection_id,
            )
        try:
            value = json.loads(response.content)
        except ValueError as exc:
            raise ProtocolError(
                f"{where}: the device sent invalid JSON ({exc})", connection_id=self.connection_id
            ) from exc
        if req.pointer is None:
            return value
        try:
            return resolve_pointer(value, req.pointer, where=tag)
        except DeviceError as exc:
            exc.connection_id = self.connection_id
            raise

    async def write(self, tag: str, value: Any) -> None:
        """Send ``value`` as the JSON body of the tag's request (``write_method`` by default).

        Raises:
            DeviceError: for a bad tag, a value JSON cannot encode, or a 4xx answer.
            AuthError: on 401/403.
            ConnectError: on 5xx, transport errors and timeouts.
        """
        req = self._parse(tag, self.write_method, WRITE_METHODS)
        if req.pointer is not None:
            raise DeviceError(
                f"tag {tag!r}: a write sends the whole value; a #pointer only selects from reads",
                connection_id=self.connection_id,
            )
        try:
            body = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise DeviceError(
                f"cannot encode {type(value).__name__} value as JSON: {exc}",
                connection_id=self.connection_id,
            ) from exc
        await self._request(
            req.method, req.path, content=body, headers={"Content-Type": "application/json"}
        )

    def _parse(self, tag: str, default: str, allowed: frozenset[str]) -> Request:
        try:
            req = parse_tag(tag, default)
        except (ValueError, TypeError) as exc:
            raise DeviceError(str(exc), connection_id=self.connection_id) from exc
        if req.method not in allowed:
            raise DeviceError(
                f"tag {tag!r}: {req.method} is not allowed here ({', '.join(sorted(allowed))})",
                connection_id=self.connection_id,
            )
        return req

    async def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        client = self._client
        if client is None or client.is_closed:
            raise ConnectError("not connected", connection_id=self.connection_id)
        where = f"{method} {path}"
        cid = self.connection_id
        with map_exceptions(HTTPX_ERRORS, connection_id=cid, where=where, timeout=self.timeout):
            response = await client.request(method, path, content=content, headers=headers)
        self.update_stats(
            packets_sent=1,
            bytes_sent=len(content or b""),
            packets_received=1,
            bytes_received=response.num_bytes_downloaded,
        )
        status = response.status_code
        if status < 300:
            return response
        text = f"{where} answered HTTP {status} {response.reason_phrase}".rstrip()
        detail = response.text[:200].strip() if response.content else ""
        if detail:
            text += f": {detail}"
        retry_after = _retry_after(response)
        if status in (401, 403):
            hint = "missing" if self._api_key is None else "refused"
            raise AuthError(f"authentication failed (api_key {hint}): {text}", connection_id=cid)
        if status < 400:
            location = response.headers.get("location", "?")
            raise DeviceError(
                f"{text} (redirect to {location}; set follow_redirects to follow it)",
                code=status,
                connection_id=cid,
            )
        if status < 500:
            raise DeviceError(text, code=status, connection_id=cid, retry_after=retry_after)
        raise ConnectError(text, connection_id=cid, retry_after=retry_after)


#: The former name (before 0.2), kept for one release.
HTTPConnection = HttpConnection
