"""safe_run (InstanceGuard): errors counted, a crash stops the instance, Sentry gets the envelopes."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from conftest import Recorder
from edgelink import ConnectionManager
from edgelink.isolation.safe import InstanceGuard, SentryReporter, guard_connection
from edgelink.testing.isolation import CounterConnection

Make = Callable[..., ConnectionManager]


def test_errors_are_counted_and_more_than_five_in_the_window_is_a_crash() -> None:
    """Test error_count, last_error, status error, and handle_crash after the sixth error."""
    now = [0.0]
    crashed: list[tuple[str, str]] = []
    guard = InstanceGuard(
        "plug",
        window=10.0,
        clock=lambda: now[0],
        on_crash=lambda i, e: crashed.append((i, str(e))),
    )
    assert guard.safe_run(lambda: 42) == 42 and guard.status == "running"

    def boom(n: int) -> int:
        raise KeyError(f"tag{n}")

    for n in range(5):
        now[0] += 3.0  # 5 errors over 15 s: never more than 4 within 10 s
        assert guard.safe_run(boom, n) is None
    assert (guard.error_count, guard.status, crashed) == (5, "error", [])
    assert guard.last_error == "KeyError: 'tag4'" and "boom" in (guard.last_traceback or "")
    now[0] += 11.0  # the window is empty again
    for n in range(5, 12):
        assert guard.safe_run(boom, n) is None
    # The sixth error within the window (tag10) is the crash; tag11 never ran.
    assert (guard.status, guard.error_count) == ("crashed", 11)
    assert crashed == [("plug", "'tag10'")], "handle_crash runs once"
    assert guard.safe_run(lambda: 1) is None, "a crashed instance runs no more code"
    guard.reset()
    assert (guard.safe_run(lambda: 1), guard.status) == (1, "running")


async def test_a_crashing_connection_callback_stops_that_connection_not_the_gateway(
    make_manager: Make,
) -> None:
    """Test that a guarded connection is stopped after 6 errors while its neighbour runs on."""
    m = make_manager()
    m.register_connection_type("counter", CounterConnection)
    rec = Recorder(m)
    m.add_connection("bad", "counter")
    m.add_connection("good", "counter", poll=[{"tags": ["x"], "interval": 0.01}])
    async with m:
        await m.wait_for_state("bad", "connected", timeout=5)
        guard = guard_connection(m, "bad")

        async def hook() -> None:
            raise RuntimeError("plugin bug")

        for _ in range(6):
            await guard.safe_run_async(hook)
        crashed = await rec.wait_for("instance_crashed", timeout=5)
        await m.wait_for_state("bad", "disconnected", timeout=5)
        assert m.get_state("good") == "connected"
    assert crashed[0].connection_id == "bad" and crashed[0].data["errors"] == 6
    assert crashed[0].data["last_error"] == "RuntimeError: plugin bug"


class _Sink(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        type(self).received.append((self.path, body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def sentry_sink() -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    """A local HTTP server standing in for Sentry's ingest endpoint."""
    _Sink.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], _Sink.received
    server.shutdown()
    server.server_close()
    thread.join()
    import sentry_sdk

    sentry_sdk.init()  # no DSN: off again for the other tests


def test_guarded_errors_reach_a_sentry_server(sentry_sink: tuple[int, list[Any]]) -> None:
    """Test that with a DSN the guard's errors arrive as envelopes at the (local) Sentry server."""
    port, received = sentry_sink
    reporter = SentryReporter(f"http://abc123@127.0.0.1:{port}/7", environment="test")
    guard = InstanceGuard("plug", reporter=reporter)

    def boom() -> None:
        raise ValueError("decoder broke")

    guard.safe_run(boom)
    reporter.flush(timeout=5)
    paths = [p for p, _ in received]
    assert paths and all(p.startswith("/api/7/envelope/") for p in paths)
    body = b"".join(b for _, b in received)
    assert b"decoder broke" in body and b"ValueError" in body and b'"instance":"plug"' in body


async def test_sentry_dsn_in_edgelink_json_is_off_by_default() -> None:
    """Test that edgelink.json has Sentry off unless a DSN is given, and hides the DSN."""
    from edgelink.service.config import load_service_settings

    assert load_service_settings({}).sentry.dsn is None
    s = load_service_settings({"sentry": {"dsn": "http://k@127.0.0.1:1/2"}})
    assert s.sentry.dsn is not None and "k@" not in repr(s.sentry)
    await asyncio.sleep(0)
