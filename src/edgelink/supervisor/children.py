"""Child tasks: the health and poll tasks of the current link, owned and restarted.

A crashed child is evented and restarted after a backoff delay; past
`MAX_CHILD_RESTARTS` crashes on one link the link is dropped (``task_died``)
and the reconnect starts the children afresh.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Final

from edgelink.events import EventType
from edgelink.state import ConnectionState
from edgelink.supervisor.policy import (
    Lost,
)
from edgelink.supervisor.polling import SupervisorPolling

logger = logging.getLogger("edgelink.supervisor")

S = ConnectionState

#: Crashes of one child task (health, a poller) on one link that are restarted
#: (after a backoff delay each); the next one drops the link (``task_died``),
#: and the reconnect starts the children afresh.
MAX_CHILD_RESTARTS: Final = 5


class SupervisorChildren(SupervisorPolling):
    """The child tasks of a link (a part of `edgelink.supervisor.Supervisor`)."""

    __slots__ = ()

    async def _end_connected_tasks(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        await self._children.aclose()

    def _spawn_child(self, role: str) -> None:
        """Start the link's child task ``role``: ``health`` or ``poll<N>``."""
        coro = (
            self._run_health()
            if role == "health"
            else self._run_poll(self._poll[int(role.removeprefix("poll"))])
        )
        self._children.start(coro, name=f"edgelink[{self.connection_id}].{role}")

    def child_crashed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        """A health or poll task died of ``exc``: event it, restart it after a backoff.

        The other tasks of the link keep running. A child that crashes more
        than `MAX_CHILD_RESTARTS` times on one link drops the link instead
        (reason ``task_died``). A crash while the link is going down anyway is
        only logged.
        """
        role = task.get_name().rpartition(".")[2]
        if self._lost is None or self._lost.done():
            logger.error(
                "%s: %s task failed while the link closed", self.connection_id, role, exc_info=exc
            )
            return
        crashes = self._child_crashes
        if crashes is None:
            crashes = self._child_crashes = {}
        n = crashes[role] = crashes.get(role, 0) + 1
        self.restarts += 1
        if n > MAX_CHILD_RESTARTS:
            logger.error(
                "%s: %s task died %d times on this link; dropping the link",
                self.connection_id,
                role,
                n,
                exc_info=exc,
            )
            self._lose(Lost("task_died", exc))
            return
        delay = self._backoff.delay(n)
        logger.error(
            "%s: %s task died; restarting it in %.3g s",
            self.connection_id,
            role,
            delay,
            exc_info=exc,
        )
        self._emit(
            EventType.SUPERVISOR_RESTARTED,
            cause="task_died",
            task=role,
            detail=repr(exc),
            restarts=self.restarts,
            delay=round(delay, 4),
        )
        self._timers.append(
            self._clock.call_later(delay, functools.partial(self._restart_child, role))
        )

    def _restart_child(self, role: str) -> None:
        if self._lost is not None and not self._lost.done():
            self._spawn_child(role)
