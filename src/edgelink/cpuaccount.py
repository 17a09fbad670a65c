"""CPU accounting per connection: the event loop's time in each connection's own code.

Every connection's work on the event loop runs in a context of its own: the
`Supervisor` starts its main task in a `contextvars.Context` whose `CURRENT`
is the connection's `CpuAccount`, and asyncio copies the context into
everything started from there: child tasks, ``call_soon``/``call_later``
callbacks, and the transports' protocol callbacks (a socket's reader is
registered from inside the task, so ``data_received`` runs in its context).
The datapoints a connection reports are routed inside those callbacks, so
routing them counts to it too.

`CpuAccounting.install` wraps asyncio's ``Handle._run``, the one place the
loop runs every task step and callback: for a handle whose context carries
an account it adds the CPU time the loop's thread spent on it
(`time.thread_time_ns`: a system call, about 0.3 µs here). The thread's CPU
clock, not a wall clock: on a machine short of CPU the thread waits for a
core in the middle of a step, and a wall clock (``perf_counter_ns``, 0.1 µs)
read 1.6 to 1.9 times the process's real CPU in ``bench/ui_accounting.py``.

The two clock reads are most of the cost, so by default only a random one in
`SAMPLE_EVERY` of a connection's handles is timed, and counts that many times
(the way a sampling profiler counts): each account is an unbiased estimate
that settles over a window of many handles (a connection busy for 1 % of a
core over 10 s runs thousands), at a quarter of the clock reads. A handle of
no connection pays one context lookup; one not drawn, a lookup and a random
draw. ``bench/ui_accounting.py`` measures the whole cost at 10,000
connections. ``install(sample_every=1)`` times every handle.

Not counted: the threads of blocking (``SyncConnection``) drivers, and work
the gateway does for every connection at once (the manager's deadline wheel,
the API). Only asyncio's own loop runs handles through ``Handle._run``:
under another loop (uvloop) `CpuAccounting.active` is False and callers
report the CPU as unknown (None), never as 0.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["CURRENT", "SAMPLE_EVERY", "CpuAccount", "CpuAccounting", "account_context"]

#: One in this many of a connection's handles is timed (and counts this many times).
SAMPLE_EVERY = 4


class CpuAccount:
    """The event-loop time spent in one connection's task steps and callbacks.

    Attributes:
        connection_id: Whose account.
        ns: Nanoseconds so far (only ever grows).
    """

    __slots__ = ("connection_id", "ns")

    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        self.ns = 0

    @property
    def seconds(self) -> float:
        """The time so far, s."""
        return self.ns / 1e9

    def __repr__(self) -> str:
        return f"<CpuAccount {self.connection_id} {self.seconds:.3f} s>"


#: The account of the connection whose code runs now (None: nobody's).
CURRENT: contextvars.ContextVar[CpuAccount | None] = contextvars.ContextVar(
    "edgelink_cpu_account", default=None
)


def account_context(account: CpuAccount) -> contextvars.Context:
    """Return a copy of the current context with `CURRENT` set to ``account``.

    Start a connection's task in it (``loop.create_task(coro, context=...)``).
    """
    context = contextvars.copy_context()
    context.run(CURRENT.set, account)
    return context


_Run = Callable[[asyncio.Handle], None]


def _accounted(run: _Run, sample_every: int) -> _Run:
    """Wrap asyncio's ``Handle._run``: add the time of handles that carry an account.

    A random one in ``sample_every`` of them is timed and counts
    ``sample_every`` times. Kept to the fewest operations (this runs for
    every handle of the loop): names bound as defaults, no ``try``: a
    handle's own errors are caught inside ``run``, only SystemExit and
    KeyboardInterrupt pass, and then that one step goes uncounted.
    """
    draws = random.Random().random  # its own generator: the global one stays the user's

    def accounted_run(
        handle: Any,
        run: _Run = run,
        clock: Callable[[], int] = time.thread_time_ns,
        current: contextvars.ContextVar[CpuAccount | None] = CURRENT,
        draw: Callable[[], float] = draws,
        chance: float = 1.0 / sample_every,
        weight: int = sample_every,
    ) -> None:
        # ``_context`` is the context asyncio runs the handle in (asyncio's own
        # attribute of every Handle, 3.11 to 3.13).
        account = handle._context.get(current)
        if account is None or draw() >= chance:
            run(handle)
            return
        start = clock()
        run(handle)
        account.ns += (clock() - start) * weight

    accounted_run.__wrapped__ = run  # type: ignore[attr-defined]
    return accounted_run


class CpuAccounting:
    """The process-wide switch of the accounting (counted: each `install` wants an `uninstall`).

    Example:
        CpuAccounting.install()
        try:
            ...  # accounts grow while their connections run
        finally:
            CpuAccounting.uninstall()
    """

    _lock = threading.Lock()
    _users = 0
    _original: Any = None

    @classmethod
    def install(cls, *, sample_every: int = SAMPLE_EVERY) -> None:
        """Start accounting (idempotent per user: count one `uninstall` per call).

        Args:
            sample_every: Time one in this many handles (1: every one); the
                first user's choice holds until the last one is gone.

        Raises:
            ValueError: for ``sample_every`` below 1.
        """
        if sample_every < 1:
            raise ValueError(f"sample_every must be at least 1, not {sample_every}")
        with cls._lock:
            cls._users += 1
            if cls._users == 1:
                cls._original = asyncio.events.Handle._run
                asyncio.events.Handle._run = _accounted(cls._original, sample_every)  # type: ignore[method-assign,assignment]

    @classmethod
    def uninstall(cls) -> None:
        """Stop accounting once the last user is gone."""
        with cls._lock:
            if cls._users == 0:
                return
            cls._users -= 1
            if cls._users == 0:
                asyncio.events.Handle._run = cls._original  # type: ignore[method-assign]
                cls._original = None

    @classmethod
    def installed(cls) -> bool:
        """Return whether the accounting is on (for asyncio's loops)."""
        return cls._users > 0

    @classmethod
    def active(cls, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Return whether accounts grow on ``loop`` (default: the running one).

        True only with the accounting on and a loop of asyncio's own (its
        handles run through ``Handle._run``); uvloop's do not.
        """
        if not cls.installed():
            return False
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False
        return isinstance(loop, asyncio.BaseEventLoop)
