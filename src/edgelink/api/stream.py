"""The live stream: events and datapoints over a WebSocket, by pattern.

``/api/stream`` (also ``/api/nodered/stream``) takes the token as a bearer
header or ``?token=``, and what to stream as query parameters:
``events=connected,disconnected`` (``*`` = all, the default; ``none`` = no
events) and ``data=plc_1.**,bms.*.voltage`` (``*`` one segment, ``**`` any
depth; default none). A client may change them later by sending
``{"events": [...], "data": [...]}``.

Messages are JSON: ``{"type": "data", "address", "source", "tag", "value",
"quality", "ts"}`` (plus ``"reason"`` and ``"since"`` for a datapoint
that is ``stale`` or ``bad``, when known), ``{"type": "event", "event_type",
"event", "connection_id", "ts", "state", "attempt", "data"}`` and, when the client's rate
limit (``api.stream_rate`` messages/s, a token bucket) or its queue dropped
messages, ``{"type": "dropped", "count": n}`` once a second. A slow client
loses its own messages; it never slows the gateway or the other clients.

A browser's handshake must come from the API's own origin or one listed in
``api.allowed_origins`` (else 403); a client without an ``Origin`` header
(Node-RED, scripts) needs only the token. What a client sends must be JSON
text: a binary frame closes the stream with 1003, text that is not JSON or is
nested deeper than `MAX_DEPTH` with 1007, a message over `MAX_MESSAGE`
characters with 1009. A well-formed request that asks for something wrong
(an unknown event type) gets ``{"type": "error"}`` and the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from edgelink._tasks import cancel_and_wait
from edgelink.api.auth import websocket_token
from edgelink.events import EVENT_TYPES, Event
from edgelink.router.datapoint import DataPoint, quality_detail
from edgelink.router.wire import WireEncoder
from edgelink.service.token import token_matches

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["StreamHub", "compile_pattern", "origin_allowed", "register_stream"]

logger = logging.getLogger(__name__)

#: Messages queued per client before the oldest are dropped.
CLIENT_QUEUE = 5000
#: Longest pattern list a client may ask for.
MAX_PATTERNS = 64
#: Longest message a client may send, characters (close 1009 beyond).
MAX_MESSAGE = 64 * 1024
#: Deepest nesting of a client's JSON (close 1007 beyond); a request needs 2.
MAX_DEPTH = 16

_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile an address pattern: ``*`` is one dotted segment, ``**`` any depth.

    Raises:
        ValueError: for an empty or overlong pattern.
    """
    if not pattern or len(pattern) > 256:
        raise ValueError("a pattern must be 1..256 characters")
    parts = []
    for piece in re.split(r"(\*\*|\*)", pattern):
        if piece == "**":
            parts.append(".*")
        elif piece == "*":
            parts.append("[^.]*")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts) + r"\Z")


class _Client:
    __slots__ = ("data", "dropped", "events", "patterns", "queue", "rate", "tokens", "updated")

    def __init__(self, rate: float) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(CLIENT_QUEUE)
        self.events: frozenset[str] | None = frozenset()  # None = every type
        self.data: tuple[re.Pattern[str], ...] = ()
        self.patterns: tuple[str, ...] = ()
        self.rate = rate
        self.tokens = rate
        self.updated = time.monotonic()
        self.dropped = 0

    def configure(self, events: Iterable[str] | None, data: Iterable[str] | None) -> None:
        if events is not None:
            wanted = [e.strip() for e in events if e.strip()]
            if "*" in wanted:
                self.events = None
            else:
                unknown = [e for e in wanted if e not in EVENT_TYPES and e != "none"]
                if unknown:
                    raise ValueError(f"unknown event types: {', '.join(unknown[:5])}")
                self.events = frozenset(e for e in wanted if e != "none")
        if data is not None:
            patterns = [p.strip() for p in data if p.strip()]
            if len(patterns) > MAX_PATTERNS:
                raise ValueError(f"at most {MAX_PATTERNS} data patterns")
            self.data = tuple(compile_pattern(p) for p in patterns)
            self.patterns = tuple(patterns)

    def wants_event(self, event_type: str) -> bool:
        return self.events is None or event_type in self.events

    def wants_address(self, address: str) -> bool:
        return any(p.match(address) for p in self.data)

    def offer(self, message: str) -> None:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            self.dropped += 1
            return
        self.tokens -= 1.0
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1


class StreamHub:
    """Fans events and datapoints out to the connected stream clients."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._clients: set[_Client] = set()
        #: Datapoints whose value has no JSON form go out as quality bad (counted here).
        self.encoder = WireEncoder("stream")

    @property
    def clients(self) -> int:
        """The number of clients connected."""
        return len(self._clients)

    async def publish_event(self, event: Event) -> None:
        """Send an event to every client that wants its type (an event-bus callback)."""
        if not self._clients:
            return
        message: str | None = None
        for client in self._clients:
            if client.wants_event(event.type):
                if message is None:
                    body = event.as_dict()
                    body["event_type"] = body.pop("type")
                    message = json.dumps({"type": "event", **body}, default=str)
                client.offer(message)

    def publish_data(self, dp: DataPoint) -> None:
        """Send a datapoint to every client whose patterns match (a data space subscriber)."""
        if not self._clients:
            return
        address = dp.address
        message: str | None = None
        for client in self._clients:
            if client.data and client.wants_address(address):
                if message is None:
                    body = {
                        "type": "data",
                        "address": address,
                        "source": dp.source,
                        "tag": dp.tag,
                        "value": dp.value,
                        "quality": dp.quality,
                        "ts": dp.ts,
                    }
                    if dp.quality != "good":
                        body.update(quality_detail(dp.metadata))
                    message = self.encoder.encode(body, address)
                client.offer(message)

    async def serve(self, ws: WebSocket) -> None:
        """Run one client's stream until it goes away."""
        gateway = self._gateway
        if not token_matches(websocket_token(ws), gateway.token):
            await ws.close(code=1008, reason="missing or wrong token")
            return
        api = gateway.settings.api
        origin = ws.headers.get("origin")
        if origin is not None and not origin_allowed(
            origin, ws.headers.get("host"), api.allowed_origins
        ):
            await ws.close(code=1008, reason="origin not allowed (api.allowed_origins)")
            return
        if len(self._clients) >= api.stream_clients:
            await ws.close(code=1013, reason="too many stream clients")
            return
        client = _Client(api.stream_rate)
        try:
            client.configure(
                _split(ws.query_params.get("events", "*")), _split(ws.query_params.get("data", ""))
            )
        except ValueError as exc:
            await ws.close(code=1008, reason=str(exc)[:120])
            return
        await ws.accept()
        self._clients.add(client)
        sender = asyncio.get_running_loop().create_task(
            self._run_sender(ws, client), name="edgelink.api.stream.sender"
        )
        try:
            await ws.send_text(json.dumps({"type": "hello", **_describe(client)}))
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                refusal = _refusal(text)
                if refusal is not None:
                    await ws.close(code=refusal[0], reason=refusal[1])
                    break
                assert text is not None
                await self._reconfigure(ws, client, text)
        except WebSocketDisconnect:
            pass
        finally:
            self._clients.discard(client)
            # The sender's own failure ends the stream only: not ours to raise.
            with contextlib.suppress(Exception):
                await cancel_and_wait(sender)

    async def _reconfigure(self, ws: WebSocket, client: _Client, text: str) -> None:
        try:
            request = json.loads(text)
            if not isinstance(request, dict):
                raise ValueError('send an object: {"events": [...], "data": [...]}')
            events, data = request.get("events"), request.get("data")
            for name, value in (("events", events), ("data", data)):
                if value is not None and (
                    not isinstance(value, list) or not all(isinstance(v, str) for v in value)
                ):
                    raise ValueError(f"{name} must be a list of strings")
            client.configure(events, data)
        except ValueError as exc:
            await ws.send_text(json.dumps({"type": "error", "error": str(exc)[:200]}))
            return
        await ws.send_text(json.dumps({"type": "subscribed", **_describe(client)}))

    async def _run_sender(self, ws: WebSocket, client: _Client) -> None:
        last_report = time.monotonic()
        while True:
            try:
                async with asyncio.timeout(1.0):
                    message = await client.queue.get()
            except TimeoutError:
                message = None
            if message is not None:
                await ws.send_text(message)
            now = time.monotonic()
            if client.dropped and now - last_report >= 1.0:
                dropped, client.dropped = client.dropped, 0
                last_report = now
                await ws.send_text(json.dumps({"type": "dropped", "count": dropped}))


def origin_allowed(origin: str, host: str | None, allowed: Iterable[str]) -> bool:
    """Return True if a browser at ``origin`` may open the stream.

    Allowed: the API's own origin (its host and port are the request's
    ``Host``) and every origin in ``allowed`` (``scheme://host[:port]``).
    """
    wanted = origin.strip().rstrip("/").lower()
    if wanted in {a.strip().rstrip("/").lower() for a in allowed}:
        return True
    parts = urlsplit(wanted)
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc == (host or "").lower()


def _refusal(text: str | None) -> tuple[int, str] | None:
    """Return the close code and reason for a client message the stream cannot take."""
    if text is None:
        return 1003, "binary frames are not supported: send JSON text"
    if len(text) > MAX_MESSAGE:
        return 1009, f"message over {MAX_MESSAGE} characters"
    depth = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_DEPTH:
            return 1007, f"JSON nested deeper than {MAX_DEPTH}"
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return 1007, "not valid JSON"
    return None


def _split(value: str) -> list[str]:
    return [part for part in value.split(",") if part.strip()]


def _describe(client: _Client) -> dict[str, Any]:
    return {
        "events": "*" if client.events is None else sorted(client.events),
        "data": list(client.patterns),
        "rate": client.rate,
    }


def register_stream(app: FastAPI, hub: StreamHub) -> None:
    """Add the stream endpoints to ``app``."""

    @app.websocket("/api/stream")
    async def stream(ws: WebSocket) -> None:
        await hub.serve(ws)

    @app.websocket("/api/nodered/stream")
    async def nodered_stream(ws: WebSocket) -> None:
        await hub.serve(ws)
