"""Shared fixtures: loopback peers, a manual clock, managers that always stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from edgelink import ConnectionManager, Event
from edgelink.testing import ManualClock
from edgelink.testing.peers import PingPongPeer

#: Settings that keep real-time parts of tests short.
FAST: dict[str, Any] = {
    "connect_timeout": 0.5,
    "health_check_timeout": 0.3,
    "fast_path_timeout": 0.3,
    "request_timeout": 0.5,
    "reconnect_jitter": 0.0,
}


@pytest.fixture
async def peer() -> AsyncIterator[PingPongPeer]:
    """A running PING/PONG device on a free loopback port."""
    async with PingPongPeer(values={"temperature": "21.5", "power": "230"}) as p:
        yield p


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock."""
    return ManualClock()


class Recorder:
    """Collects events of a manager; `types()` after `drain()`."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.events: list[Event] = []
        self.manager = manager
        manager.on_event("*", self._on)

    async def _on(self, ev: Event) -> None:
        self.events.append(ev)

    async def types(
        self, *, exclude: tuple[str, ...] = ("state_change", "health_change")
    ) -> list[str]:
        await self.manager.events.drain()
        return [e.type for e in self.events if e.type not in exclude]

    async def of(self, kind: str) -> list[Event]:
        await self.manager.events.drain()
        return [e for e in self.events if e.type == kind]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 5.0) -> list[Event]:
        async with asyncio.timeout(timeout):
            while True:
                got = [e for e in self.events if e.type == kind]
                if len(got) >= count:
                    return got
                await asyncio.sleep(0.005)


@pytest.fixture
async def make_manager() -> AsyncIterator[Callable[..., ConnectionManager]]:
    """Build managers with fast timeouts; every one is stopped at teardown."""
    made: list[ConnectionManager] = []

    def make(**settings: Any) -> ConnectionManager:
        manager = ConnectionManager(**{**FAST, **settings})
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.stop()


def tcp(port: int, **extra: Any) -> dict[str, Any]:
    """The config of a tcp connection to a loopback port."""
    return {"host": "127.0.0.1", "port": port, **extra}
