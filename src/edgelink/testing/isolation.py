"""Misbehaving drivers for testing isolation limits (docs/isolation.md).

Each is a real driver a child process can import by name; each misbehaves in
one way a faulty plugin does:

- `LeakyConnection`: after connect, keeps ``leak_mb_per_s`` more memory every
  second (touched, so it shows in RSS) until it is killed;
- `BusyConnection`: after connect, burns a core in a thread (a busy loop that
  never yields the CPU but lets the event loop and its pulse run);
- `CounterConnection`: a well-behaved device whose tags count up on every read.

Example:
    manager.add_connection("leak", "leaky", {"leak_mb_per_s": 50},
                           isolation={"mode": "process", "max_memory_mb": 200})
    manager.register_connection_type("leaky", LeakyConnection)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from edgelink.connection import Connection

__all__ = ["BusyConnection", "CounterConnection", "LeakyConnection"]

_MB = 1024 * 1024


class CounterConnection(Connection):
    """A device whose every tag reads as a counter that grows by one per read."""

    type_name = "counter"

    def __init__(self, connection_id: str, config: Any = None, context: Any = None) -> None:
        super().__init__(connection_id, config, context)
        self._up = False
        self._count = 0

    async def connect(self) -> None:
        """Come up at once."""
        self._up = True

    async def disconnect(self) -> None:
        """Go down."""
        self._up = False

    def is_connected(self) -> bool:
        """True between connect and disconnect."""
        return self._up

    async def health_check(self) -> bool:
        """Always healthy while up."""
        return self._up

    async def read(self, tag: str) -> Any:
        """Return the next count."""
        self._count += 1
        self.count_exchange(8, 1, 8)
        return self._count


class LeakyConnection(CounterConnection):
    """A device driver that leaks ``leak_mb_per_s`` MB a second once connected."""

    type_name = "leaky"

    def __init__(self, connection_id: str, config: Any = None, context: Any = None) -> None:
        super().__init__(connection_id, config, context)
        self._rate = float(self.config.get("leak_mb_per_s", 20.0))
        self._kept: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Come up and start leaking."""
        await super().connect()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_leak())

    async def _run_leak(self) -> None:
        step = 0.05
        while True:
            # Filled, not zeroed: the pages are touched and count in RSS.
            self._kept.append(b"\x01" * int(self._rate * _MB * step))
            await asyncio.sleep(step)

    async def disconnect(self) -> None:
        """Go down; the leak goes on (it is the process that leaks)."""
        await super().disconnect()


class BusyConnection(CounterConnection):
    """A device driver that burns a core in a thread once connected."""

    type_name = "busy"

    def __init__(self, connection_id: str, config: Any = None, context: Any = None) -> None:
        super().__init__(connection_id, config, context)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def connect(self) -> None:
        """Come up and start the busy loop."""
        await super().connect()
        if self._thread is None:
            self._thread = threading.Thread(target=self._spin, name="busy", daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        n = 0
        while not self._stop.is_set():
            for _ in range(10_000):
                n += 1

    async def disconnect(self) -> None:
        """Go down and end the busy loop."""
        await super().disconnect()
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(RuntimeError):
                await asyncio.to_thread(thread.join, 1.0)
