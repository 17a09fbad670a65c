"""The ``counter`` connection type: a virtual device that counts (edgelink plugin example)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from edgelink.connection import Connection

#: The plugin's config (``default_step``), updated when it is configured.
SETTINGS: dict[str, Any] = {"default_step": 1}


class CounterConnection(Connection):
    """Reports ``value`` every ``interval`` seconds, counting up by ``step``."""

    type_name = "counter"

    def __init__(
        self, connection_id: str, config: Mapping[str, Any] | None = None, context: Any = None
    ) -> None:
        super().__init__(connection_id, config, context)
        cfg = dict(config or {})
        self.interval = float(cfg.get("interval", 1.0))
        self.step = int(cfg.get("step", SETTINGS["default_step"]))
        self.value = 0
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._count())

    async def disconnect(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # ended; a cancel aimed at us still reaches us

    def is_connected(self) -> bool:
        return self._task is not None and not self._task.done()

    async def health_check(self) -> bool:
        return self.is_connected()

    async def read(self, tag: str) -> Any:
        return self.value

    async def _count(self) -> None:
        while True:
            self.value += self.step
            self.report_data("value", self.value)
            await self.clock.sleep(self.interval)


def register(host: Any) -> None:
    """Called by edgelink when the plugin is enabled."""
    SETTINGS.update(host.config)
    host.on_config(SETTINGS.update)
    host.add_driver("counter", CounterConnection)
