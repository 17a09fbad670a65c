"""CPU accounting per connection: the event loop's time in each connection's own code.

Every connection's work on the event loop runs in a context of its own: the
`Supervisor` starts its main task in a `contextvars.Context` whose `CURRENT`
is the connection's `CpuAccount`, and asyncio copies the context into
everything started from there: child tasks, ``call_soon``/``call_later``
callbacks, and the transports' protocol callbacks (a socket's reader is
registered from inside the task, so ``data_received`` runs in its context).
The datapoints a connection reports are routed inside those callbacks, so
routing them counts to it too.

How it is measured: by sampling handles, looking only at the ones drawn.
Each turn of an asyncio loop runs the handles of its ready queue (task
steps, ``call_soon`` callbacks, socket callbacks). `CpuAccounting` hooks the
one call a selector loop makes per turn right before it runs them
(``_process_events``, which adds the socket callbacks to that queue) and
draws every `SAMPLE_EVERY`-th handle of the queue from a random start; a
drawn handle that belongs to a connection is swapped for a stand-in that
times it with the loop thread's CPU clock (`time.thread_time_ns`, its own
reading cost taken off) and counts the time `SAMPLE_EVERY` times. Each
handle is timed with the same chance, so each account is an unbiased
estimate of its connection's time, as a sampling profiler's is, that settles
over a window of many handles. The cost: one Python call and one random draw
per turn, a look at one handle in `SAMPLE_EVERY`, and two clock reads for
each drawn handle of a connection; nothing else is wrapped.
``install(exact=True)`` times every connection's handle (exact figures, for
tests; it costs what timing every handle costs).

The thread's CPU clock, not a wall clock: on a machine short of CPU the
thread waits for a core in the middle of a step, and a wall clock read 1.6
to 2.4 times the process's real CPU in ``bench/ui_accounting.py``.

Not counted: the timer callbacks themselves (``call_later``; they mostly
wake a task, whose step counts), the threads of blocking (``SyncConnection``)
drivers, and work the gateway does for every connection at once (the
manager's deadline wheel, the API). Only asyncio's own selector loops have
the hook: under another loop (uvloop) `CpuAccounting.active` is False and
callers report the CPU as unknown (None), never as 0.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["CURRENT", "SAMPLE_EVERY", "CpuAccount", "CpuAccounting", "account_context"]

#: One handle in this many is timed (and counts this many times).
SAMPLE_EVERY = 16


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


def _clock_cost(clock: Callable[[], int] = time.thread_time_ns, pairs: int = 200) -> int:
    """The least time two back-to-back reads of ``clock`` measure, ns: the timing's own cost."""
    best = None
    for _ in range(pairs):
        start = clock()
        took = clock() - start
        if best is None or took < best:
            best = took
    return best or 0


#: What a timed handle's figure holds of the clock reads themselves, taken
#: off each figure: counted `SAMPLE_EVERY` times, 0.3 to 0.5 µs would be a real
#: share of a short handle's estimate.
_CLOCK_COST = _clock_cost()


class _Timed:
    """Stands in for one drawn handle in the ready queue: runs it and adds its time.

    The loop reads ``_cancelled`` and calls ``_run``; anything else (its debug
    mode's formatting of a slow callback) is the drawn handle's.
    """

    __slots__ = ("_account", "_cancelled", "_inner", "_weight")

    def __init__(self, inner: Any, account: CpuAccount, weight: int) -> None:
        self._cancelled = False
        self._inner = inner
        self._account = account
        self._weight = weight

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _run(self, clock: Callable[[], int] = time.thread_time_ns) -> None:
        inner = self._inner
        if inner._cancelled:  # cancelled after the draw
            return
        start = clock()
        inner._run()
        took = clock() - start - _CLOCK_COST
        if took > 0:
            self._account.ns += took * self._weight


_Process = Callable[[Any], None]


def _sampling(ready: deque[Any], process: _Process, every: int) -> _Process:
    """Wrap a selector loop's ``_process_events``: time one in ``every`` handles of each turn.

    Systematic sampling with a random start per turn: the handles at
    positions ``start, start + every, ...`` of the ready queue, ``start``
    drawn from ``0 .. every - 1``, so each handle is timed with chance
    ``1 / every`` and one that is counts ``every`` times. Only the drawn
    positions are looked at; 1 times every handle (exact).
    """
    draw = random.Random().random  # its own generator: the global one stays the user's

    def process_events(
        event_list: Any,
        process: _Process = process,
        ready: deque[Any] = ready,
        current: contextvars.ContextVar[CpuAccount | None] = CURRENT,
        plain: Any = asyncio.Handle,
        every: int = every,
    ) -> None:
        process(event_list)
        start = int(draw() * every)
        n = len(ready)
        if start >= n:  # most turns of a quiet loop: fewer handles than every
            return
        handle: Any
        for i in range(start, n, every):
            handle = ready[i]
            if handle.__class__ is plain:
                account = handle._context.get(current)
                if account is not None:
                    ready[i] = _Timed(handle, account, every)

    return process_events


@dataclass(slots=True)
class _Hooked:
    """One loop the accounting is on for."""

    users: int
    #: The loop's own ``_process_events`` instance attribute before the hook (None: the class's).
    own: Any
    #: Whether the loop has the hook (asyncio's selector loops) and accounts grow.
    hookable: bool


class CpuAccounting:
    """The switch of the accounting on an event loop (counted: each `install` wants an `uninstall`).

    Example:
        CpuAccounting.install()        # on the running loop
        try:
            ...  # accounts grow while their connections run
        finally:
            CpuAccounting.uninstall()
    """

    _lock = threading.Lock()
    _loops: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hooked]] = (
        weakref.WeakKeyDictionary()
    )

    @staticmethod
    def _loop(loop: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop | None:
        if loop is not None:
            return loop
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    @classmethod
    def install(
        cls,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        exact: bool = False,
        sample_every: int = SAMPLE_EVERY,
    ) -> bool:
        """Start accounting on ``loop`` (default: the running one); count one `uninstall` per call.

        Args:
            loop: The loop; default the running one.
            exact: Time every connection's handle (tests): ``sample_every=1``.
            sample_every: Time one handle in this many, counted this many
                times. The first user's choice holds until the last one is gone.

        Returns:
            Whether accounts grow on that loop now: False for a loop without
            the hook (uvloop) or no loop at all; the call still counts.

        Raises:
            ValueError: for ``sample_every`` below 1.
        """
        if sample_every < 1:
            raise ValueError(f"sample_every must be at least 1, not {sample_every}")
        target = cls._loop(loop)
        if target is None:
            return False
        with cls._lock:
            entry = cls._loops.get(target)
            if entry is not None:
                entry.users += 1
                return entry.hookable
            ready = getattr(target, "_ready", None)
            process = getattr(target, "_process_events", None)
            if not isinstance(ready, deque) or process is None:
                cls._loops[target] = _Hooked(1, None, hookable=False)
                return False
            cls._loops[target] = _Hooked(1, target.__dict__.get("_process_events"), hookable=True)
            hook = _sampling(ready, process, 1 if exact else sample_every)
            target._process_events = hook  # type: ignore[attr-defined]
            return True

    @classmethod
    def uninstall(cls, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Stop accounting on ``loop`` (default: the running one) once its last user is gone."""
        target = cls._loop(loop)
        with cls._lock:
            entry = cls._loops.get(target) if target is not None else None
            if entry is None or target is None:
                return
            entry.users -= 1
            if entry.users > 0:
                return
            del cls._loops[target]
            if entry.hookable:
                if entry.own is None:
                    del target._process_events  # type: ignore[attr-defined]  # the class's again
                else:
                    target._process_events = entry.own  # type: ignore[attr-defined]

    @classmethod
    def installed(cls, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Return whether the accounting is switched on for ``loop`` (default: the running one)."""
        target = cls._loop(loop)
        return target is not None and target in cls._loops

    @classmethod
    def active(cls, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Return whether accounts grow on ``loop`` (default: the running one).

        True only with the accounting on and a loop that has the hook
        (asyncio's selector loops); uvloop's has not.
        """
        target = cls._loop(loop)
        if target is None:
            return False
        entry = cls._loops.get(target)
        return entry is not None and entry.hookable
