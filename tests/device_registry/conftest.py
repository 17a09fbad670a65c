"""Fixtures of the device registry suite: every registry test runs on SQLite and on PostgreSQL.

``db_url`` is a fresh SQLite file, or a new database on the suite's private
PostgreSQL (the test kit's ``postgres_server``: initdb in a temporary folder
on a free port; skipped without PostgreSQL, a failure under CI=true), dropped
afterwards.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from device_registry.registry_kit import FAST, KEY
from edgelink import ConnectionManager
from edgelink.devices import DeviceRegistry
from edgelink.testing import ZkDevice, ZkSimulator
from edgelink.testing.postgres import PostgresServer

_numbers = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'devices.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"edgelink_test_{os.getpid()}_{next(_numbers)}"
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


@pytest.fixture
async def manager() -> AsyncIterator[ConnectionManager]:
    """A started manager with short timeouts."""
    async with ConnectionManager(**FAST) as m:
        yield m


@pytest.fixture
async def registry(db_url: str, manager: ConnectionManager) -> AsyncIterator[DeviceRegistry]:
    """A started registry on the test's database, keeping its connections in ``manager``."""
    async with DeviceRegistry(db_url, manager=manager) as r:
        yield r


@pytest.fixture
async def sims() -> AsyncIterator[Callable[..., Any]]:
    """Start ZK terminals (comm key `KEY` unless told); all stop at teardown."""
    started: list[ZkSimulator] = []

    async def start(**device: Any) -> ZkSimulator:
        sim = ZkSimulator(device=ZkDevice(**{"comm_key": KEY, **device}))
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()
