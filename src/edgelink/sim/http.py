"""A simulated HTTP device: a small JSON API like an inverter's, served by uvicorn.

For the ``http`` driver's tests, ``edgelink sim http --port P`` and the demo.
`HttpDevice` is the device (an ASGI app with its state); `HttpSimulator` serves
one on a loopback port from a thread of its own, so a test's event loop and
the server never wait on each other.

==========================  ==================================================
request                     answer
==========================  ==================================================
``GET /health``             ``{"status": "ok"}``, or 503 while ``healthy`` is False
``GET /status``             the status document (device, power, energy, state)
``GET /values``             every value; ``GET /values/<name>`` one (404 if unknown)
``PUT|POST /values/<name>`` stores the JSON body as the value, answers it
``GET /settings``           the settings object; ``PUT`` replaces it,
                            ``PATCH``/``POST`` merge a JSON object into it
``GET /text``               a text/plain line
``POST /sim/health``        ``{"ok": false}`` makes /health fail (fault injection)
``POST /sim/garbage``       ``{"on": true}``: JSON answers become invalid JSON
==========================  ==================================================

With an ``api_key`` every request needs ``X-API-Key: <key>`` or
``Authorization: Bearer <key>``, else 401. Unknown paths answer 404, known
paths with another method 405, bodies that are not JSON 400.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Self

__all__ = ["HttpDevice", "HttpSimulator", "run_http_simulator"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: What a JSON answer becomes in garbage mode: cut off in the middle.
GARBAGE: Final = b'{"power": {"ac": 12'
MAX_BODY: Final = 1 << 20

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


class HttpDevice:
    """One simulated device: its state and its HTTP API (an ASGI application).

    Thread-safe: the server thread answers while a test changes the state.

    Attributes:
        healthy: False makes ``GET /health`` answer 503.
        garbage: True makes every JSON answer invalid JSON.
        response_delay: Seconds before each answer.
        api_key: The key requests must carry, or None for none.
        animate: Let the power figures drift with time (the demo); off for tests.
        requests: Requests answered so far.
    """

    def __init__(
        self, *, api_key: str | None = None, animate: bool = False, serial: str = "SIM-0001"
    ) -> None:
        self._lock = threading.Lock()
        self.api_key = api_key
        self.animate = animate
        self.healthy = True
        self.garbage = False
        self.response_delay = 0.0
        self.requests = 0
        self._started = time.monotonic()
        self._status: dict[str, Any] = {
            "device": {"model": "edgelink-sim-inverter", "serial": serial, "firmware": "1.4.2"},
            "state": "running",
            "power": {"ac": 1500.0, "dc": 1580.0, "phases": [500.0, 500.0, 500.0]},
            "energy": {"today_kwh": 5.2, "total_kwh": 12345.6},
            "temperature": 41.5,
        }
        self._values: dict[str, Any] = {"setpoint": 21.5, "mode": "auto"}
        self._settings: dict[str, Any] = {"mode": "auto", "limit_w": 5000}

    def status(self) -> dict[str, Any]:
        """Return a copy of the status document as it is answered now."""
        with self._lock:
            doc = copy.deepcopy(self._status)
        if self.animate:
            t = time.monotonic() - self._started
            ac = round(1500.0 + 500.0 * math.sin(2 * math.pi * t / 60.0), 1)
            doc["power"]["ac"] = ac
            doc["power"]["dc"] = round(ac * 1.05, 1)
            doc["power"]["phases"] = [round(ac / 3, 1)] * 3
            doc["energy"]["today_kwh"] = round(doc["energy"]["today_kwh"] + t * 0.0004, 3)
        return doc

    def set_status(self, path: str, value: Any) -> None:
        """Set one member of the status document, e.g. ``set_status("power/ac", 2000.0)``."""
        *parents, last = path.strip("/").split("/")
        with self._lock:
            node: Any = self._status
            for name in parents:
                node = node[int(name)] if isinstance(node, list) else node.setdefault(name, {})
            if isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value

    @property
    def values(self) -> dict[str, Any]:
        """A copy of the values."""
        with self._lock:
            return copy.deepcopy(self._values)

    def set_value(self, name: str, value: Any) -> None:
        """Set one value."""
        with self._lock:
            self._values[name] = value

    @property
    def settings(self) -> dict[str, Any]:
        """A copy of the settings."""
        with self._lock:
            return copy.deepcopy(self._settings)

    def _authorized(self, headers: dict[str, str]) -> bool:
        key = self.api_key
        if key is None:
            return True
        offered = headers.get("x-api-key")
        if offered is None:
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                offered = auth[7:].strip()
        return offered is not None and hmac.compare_digest(offered.encode(), key.encode())

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        """Answer one request: return the status, the content type and the body."""
        with self._lock:
            self.requests += 1
        if not self._authorized(headers):
            return _json(401, {"error": "unauthorized: send X-API-Key or a Bearer token"})
        parts = [p for p in path.split("/") if p]
        try:
            status, payload = self._route(method, parts, body)
        except _HttpError as exc:
            return _json(exc.status, {"error": exc.message})
        if isinstance(payload, str):
            return status, _TEXT, payload.encode()
        if self.garbage:
            return status, _JSON, GARBAGE
        return _json(status, payload)

    def _route(self, method: str, parts: list[str], body: bytes) -> tuple[int, Any]:
        head = parts[0] if parts else ""
        if parts == ["health"]:
            _allow(method, "GET")
            return (200, {"status": "ok"}) if self.healthy else (503, {"status": "failing"})
        if parts == ["status"]:
            _allow(method, "GET")
            return 200, self.status()
        if parts == ["text"]:
            _allow(method, "GET")
            serial = self._status["device"]["serial"]
            return 200, f"edgelink simulated device {serial}\n"
        if head == "values" and len(parts) <= 2:
            if len(parts) == 1:
                _allow(method, "GET")
                return 200, self.values
            name = parts[1]
            _allow(method, "GET", "PUT", "POST")
            if method == "GET":
                with self._lock:
                    if name not in self._values:
                        raise _HttpError(404, f"unknown value {name!r}")
                    return 200, self._values[name]
            value = _parse_body(body)
            self.set_value(name, value)
            return 200, value
        if parts == ["settings"]:
            _allow(method, "GET", "PUT", "PATCH", "POST")
            if method == "GET":
                return 200, self.settings
            update = _parse_body(body)
            if not isinstance(update, dict):
                raise _HttpError(422, "settings must be a JSON object")
            with self._lock:
                if method == "PUT":
                    self._settings = update
                else:
                    self._settings.update(update)
                return 200, copy.deepcopy(self._settings)
        if head == "sim" and len(parts) == 2 and parts[1] in ("health", "garbage"):
            _allow(method, "POST")
            update = _parse_body(body)
            if not isinstance(update, dict):
                raise _HttpError(422, "send a JSON object")
            if parts[1] == "health":
                self.healthy = bool(update.get("ok", True))
                return 200, {"healthy": self.healthy}
            self.garbage = bool(update.get("on", False))
            return 200, {"garbage": self.garbage}
        raise _HttpError(404, f"no such resource /{'/'.join(parts)}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI HTTP request."""
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await _send(send, *_json(413, {"error": "body too large"}))
                return
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status, ctype, payload = self.handle(scope["method"], scope["path"], headers, bytes(body))
        if self.response_delay > 0:
            await asyncio.sleep(self.response_delay)
        await _send(send, status, ctype, payload)


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise _HttpError(405, f"method {method} not allowed (use {', '.join(allowed)})")


def _parse_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise _HttpError(400, f"the body is not JSON: {exc}") from exc


def _json(status: int, payload: Any) -> tuple[int, str, bytes]:
    return status, _JSON, json.dumps(payload).encode()


async def _send(send: Send, status: int, ctype: str, payload: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype.encode()),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class HttpSimulator:
    """Serves an `HttpDevice` with uvicorn from its own thread, on a loopback port.

    `stop` and `start` again bring it back on the same port (a device reboot).
    ``device`` may be replaced while it runs: each request goes to the current one.

    With ``certfile`` and ``keyfile`` (PEM) it serves HTTPS.

    Example:
        with HttpSimulator() as sim:
            manager.add_connection("inv", "http", {"base_url": sim.url})
            sim.device.healthy = False      # its /health answers 503 now

    Raises:
        RuntimeError: at `start` if uvicorn is not installed (the message names
            the pip install) or the server does not come up.
        OSError: at `start` if the port cannot be bound.
    """

    def __init__(
        self,
        device: HttpDevice | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        if (certfile is None) != (keyfile is None):
            raise ValueError("certfile and keyfile go together")
        self.device = device if device is not None else HttpDevice()
        self.host = host
        self._port = port
        self.certfile = certfile
        self.keyfile = keyfile
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<HttpSimulator {self.host}:{self._port} {state}>"

    @property
    def port(self) -> int:
        """The port it listens on (chosen at the first start when 0 was asked)."""
        return self._port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8080`` (``https://`` with a certificate)."""
        scheme = "https" if self.certfile else "http"
        return f"{scheme}://{self.host}:{self._port}"

    @property
    def is_running(self) -> bool:
        """True while the server thread runs."""
        return self._thread is not None and self._thread.is_alive()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Looked up per request: a test may swap in a fresh device between tests.
        await self.device(scope, receive, send)

    def start(self, timeout: float = 10.0) -> None:
        """Bind the port and serve; return once the server accepts requests."""
        if self.is_running:
            return
        try:
            import uvicorn
        except ImportError as exc:
            raise RuntimeError(
                f"the HTTP simulator needs uvicorn: pip install 'edgelink[service]' ({exc})"
            ) from exc
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self._serve,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            interface="asgi3",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=1,
            ssl_certfile=self.certfile,
            ssl_keyfile=self.keyfile,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"edgelink-sim-http-{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"the HTTP simulator did not start on {self.url}")
            time.sleep(0.005)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the port (open client connections are closed). Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)


async def run_http_simulator(
    port: int, host: str = "127.0.0.1", *, api_key: str | None = None, animate: bool = True
) -> None:
    """Serve one `HttpDevice` until cancelled.

    Prints ``listening: http device on http://<host>:<port>`` once it serves.

    Raises:
        OSError: if the port cannot be bound.
        RuntimeError: if uvicorn is missing.
    """
    sim = HttpSimulator(HttpDevice(api_key=api_key, animate=animate), host=host, port=port)
    await asyncio.to_thread(sim.start)
    try:
        print(f"listening: http device on {sim.url}", flush=True)
        await asyncio.Event().wait()
    finally:
        # Shielded: the server thread must stop although we were cancelled.
        await asyncio.shield(asyncio.to_thread(sim.stop))
