"""pytest plugin of edgelink's test kit: fixtures for a manual clock, loopback peers, PostgreSQL.

``postgres_server`` (session scope) is a private `PostgresServer`; without
PostgreSQL installed a test that asks for it is skipped with the reason, and
fails instead when the environment says ``CI=true``.

It also guards every asyncio test (with pytest-asyncio installed): a task the
test started and left pending on its event loop fails the test, naming the
tasks. Tasks that finish within `LEFTOVER_GRACE_S` after the test are fine.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from edgelink.testing.clock import ManualClock
from edgelink.testing.postgres import PostgresNotFoundError, PostgresServer

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the guard needs pytest-asyncio
    HAS_PYTEST_ASYNCIO = False
else:
    HAS_PYTEST_ASYNCIO = True

#: How long a task the test started may take to finish after the test (seconds).
LEFTOVER_GRACE_S = 0.5

#: Tasks of third-party code that may outlive a test, by name prefix, with the
#: reason (none so far: every task edgelink starts is owned and ended).
ALLOWED_LEFTOVERS: dict[str, str] = {}

_GUARD = "edgelink_no_leftover_tasks"


@pytest.fixture
def manual_clock() -> ManualClock:
    """Return a fresh `ManualClock`."""
    return ManualClock()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Return a running private PostgreSQL (skipped if not installed; under CI=true: failed)."""
    server = PostgresServer()
    try:
        server.start()
    except PostgresNotFoundError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is required under CI: {exc}")
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


def _allowed(task: asyncio.Task[object]) -> bool:
    return task.get_name().startswith(tuple(ALLOWED_LEFTOVERS))


async def _leftovers(before: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    """Return the tasks started since ``before`` still pending after the grace period."""
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    deadline = loop.time() + LEFTOVER_GRACE_S
    while True:
        left = [
            task
            for task in asyncio.all_tasks()
            if task not in before and task is not current and not _allowed(task)
        ]
        if not left or loop.time() >= deadline:
            return left
        await asyncio.sleep(0.01)


if HAS_PYTEST_ASYNCIO:

    @pytest_asyncio.fixture(name=_GUARD)
    async def _no_leftover_tasks() -> AsyncIterator[None]:
        """Fail the test if a task it started is still pending after it."""
        before = asyncio.all_tasks()
        yield
        left = await _leftovers(before)
        if left:
            for task in left:
                task.cancel()
            await asyncio.wait(left, timeout=LEFTOVER_GRACE_S)
            names = sorted(task.get_name() for task in left)
            pytest.fail(f"the test left {len(names)} asyncio task(s) pending: {names}")

    def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
        """Guard every coroutine test with the leftover-task check (set up first, ended last)."""
        for item in items:
            function = getattr(item, "function", None)
            if (
                inspect.iscoroutinefunction(function)
                and isinstance(item, pytest.Function)
                and _GUARD not in item.fixturenames
            ):
                item.fixturenames.insert(0, _GUARD)
