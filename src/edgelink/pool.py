"""ConnectionPool: keyed, on-demand connections to devices you talk to now and then.

Some devices are not worth a supervised, always-on link (a Miele appliance, a
ZKTeco time clock): you connect, ask, and let go. The pool keeps such links
warm between uses, one per key, and bounds how many exist at once.

Invariants, which every method below keeps:

- ``len(pool) == idle + active <= max_size``, where *active* counts every key
  that is held: checked out, being connected, or being checked on checkout.
  A link being closed no longer counts (its slot is already free).
- A key is held by at most one caller at a time. A second caller for a held
  key waits in the same FIFO queue as callers waiting for capacity.
- Every slot taken is given back exactly once, on every path: success,
  failure, timeout and cancellation (see `ConnectionPool._abandon`).
- Every task the pool starts (only closes: ``edgelink.pool[<key>].close``) is
  owned by the pool and awaited by `ConnectionPool.close`.

Time: idle timers run on the injectable clock (a test advances them);
``acquire_timeout`` and ``connect_timeout`` bound real waits for a peer and
run on the event loop's own time, like every other I/O timeout in edgelink.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from edgelink.clock import Clock, SystemClock, TimerHandle
from edgelink.connection import AnyConnection, DriverAdapter
from edgelink.errors import (
    Action,
    ConnectError,
    ConnectionPoolExhaustedError,
    ConnectTimeout,
    EdgelinkError,
    classify,
)
from edgelink.lifecycle import AsyncResource
from edgelink.registry import DriverRegistry

__all__ = ["ConnectionPool"]

logger = logging.getLogger(__name__)

#: The counters of `ConnectionPool.stats`, in the order they are reported.
_COUNTERS = (
    "created",
    "reused",
    "replaced_stale",
    "replaced_config",
    "connect_failed",
    "evicted",
    "idle_closed",
    "discarded",
    "exhausted",
)


@dataclass(eq=False, slots=True)
class _Entry:
    """One pooled link: the driver, what it was opened with, and its idle timer."""

    key: str
    type_name: str
    config: dict[str, Any]
    adapter: DriverAdapter
    created_at: float
    last_used: float
    uses: int = 0
    idle_timer: TimerHandle | None = None

    def cancel_idle_timer(self) -> None:
        timer, self.idle_timer = self.idle_timer, None
        if timer is not None:
            timer.cancel()


@dataclass(eq=False, slots=True)
class _Waiter:
    """A caller in the queue. Its future resolves to a pooled entry, or None for a free slot."""

    key: str
    future: asyncio.Future[_Entry | None] = field(repr=False)


class ConnectionPool(AsyncResource):
    """A keyed pool of on-demand device connections.

    One connection per key at a time: a checked-out key is exclusive, and a
    second ``connection(key)`` waits for it. A live idle connection is reused
    after a checkout test (``is_connected()``, then ``health_check()``); a
    stale one, or one opened with a different ``type``/``config``, is closed
    and replaced. Idle connections close after ``idle_timeout``. At most
    ``max_size`` connections exist (idle + checked out + connecting); when full
    the least recently used idle one is evicted, and if none is idle the
    caller waits, first come first served, for up to ``acquire_timeout``.

    Example:
        async with ConnectionPool(max_size=4, idle_timeout=30.0) as pool:
            async with pool.connection("door_1", type="tcp",
                                       config={"host": "10.0.0.7", "port": 4370}) as conn:
                status = await conn.read("status")

    Args:
        max_size: Most connections that exist at once (idle, active and connecting).
        idle_timeout: Seconds an idle connection is kept; None keeps it until evicted.
        acquire_timeout: Seconds a caller waits for a free slot or its busy key;
            None waits forever.
        registry: Where driver classes are looked up by type name.
        connect_timeout: Seconds a connect (and a checkout health check, and a
            close) may take.
        clock: The clock idle timers run on (`edgelink.testing.ManualClock` in tests).
        executor: Where blocking `SyncConnection` drivers run (None: the loop's default).
        context: Passed to every driver's constructor.

    The pool never swallows an exception raised in the body of ``async with
    pool.connection(...)``; a link-level one (`edgelink.errors.Verdict.breaks_link`)
    or a cancellation discards the connection instead of returning it.
    """

    def __init__(
        self,
        *,
        max_size: int = 10,
        idle_timeout: float | None = 60.0,
        acquire_timeout: float | None = 10.0,
        registry: DriverRegistry | None = None,
        connect_timeout: float = 3.0,
        clock: Clock | None = None,
        executor: Executor | None = None,
        context: Any = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, not {max_size}")
        for name, value in (
            ("idle_timeout", idle_timeout),
            ("acquire_timeout", acquire_timeout),
            ("connect_timeout", connect_timeout),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.acquire_timeout = acquire_timeout
        self.connect_timeout = connect_timeout
        self.registry = registry if registry is not None else DriverRegistry()
        self.context = context
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._executor = executor
        # Idle entries, least recently used first: eviction pops from the front.
        self._idle: OrderedDict[str, _Entry] = OrderedDict()
        # Held keys: the entry checked out, being checked, or being connected;
        # None while the holder has a slot but no driver yet.
        self._held: dict[str, _Entry | None] = {}
        # The FIFO queue of callers; a dict is an insertion-ordered set with O(1) removal.
        self._waiters: dict[_Waiter, None] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._closed = False

    def __len__(self) -> int:
        """Return how many connections exist: idle + active (including connecting)."""
        return len(self._idle) + len(self._held)

    @property
    def active_connections(self) -> int:
        """Keys held by a caller: checked out, being checked, or being connected."""
        return len(self._held)

    @property
    def idle_connections(self) -> int:
        """Connections waiting in the pool for their key to be asked for again."""
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """Callers queued for a free slot or for their busy key."""
        return len(self._waiters)

    @property
    def closed(self) -> bool:
        """True once `aclose` was called."""
        return self._closed

    def stats(self) -> dict[str, int]:
        """Return the pool's counters and its current occupancy.

        Counters: ``created``, ``reused``, ``replaced_stale`` (failed the checkout
        test), ``replaced_config`` (asked for with another type or config),
        ``connect_failed``, ``evicted`` (LRU, to make room), ``idle_closed``,
        ``discarded`` (the body raised a link error or was cancelled),
        ``exhausted`` (``acquire_timeout`` ran out). Gauges: ``waiting``,
        ``size``, ``active``, ``idle``, ``max_size``.
        """
        return {
            **self._counters,
            "waiting": self.waiting,
            "size": len(self),
            "active": self.active_connections,
            "idle": self.idle_connections,
            "max_size": self.max_size,
        }

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (
            f"<ConnectionPool size={len(self)}/{self.max_size} active={self.active_connections}"
            f" idle={self.idle_connections} waiting={self.waiting}{state}>"
        )

    async def aclose(self) -> None:
        """Close every idle connection and fail every waiter. Idempotent.

        Connections checked out at this moment are closed when they are
        returned; `aclose` does not wait for them. It does wait for every close
        the pool started, so no pool task outlives it.
        """
        if not self._closed:
            self._closed = True
            self._disarm_leak_warning()
            logger.debug("%r: closing", self)
            waiters, self._waiters = list(self._waiters), {}
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(RuntimeError("ConnectionPool was closed"))
            idle, self._idle = list(self._idle.values()), OrderedDict()
            for entry in idle:
                self._close_soon(entry, "pool closed")
        # asyncio.wait, not gather: if our caller is cancelled, the closes run on
        # (owned by the pool), rather than being cancelled half-way.
        while self._closing:
            await asyncio.wait(set(self._closing))

    async def close(self) -> None:
        """Close the pool: the former spelling of `aclose`, kept for one release."""
        await self.aclose()

    @contextlib.asynccontextmanager
    async def connection(
        self,
        key: str,
        type: str = "tcp",  # shadows the builtin: the public keyword of DESIGN section 4
        config: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[AnyConnection]:
        """Check out the connection for ``key``, opening it if needed; return it on exit.

        Args:
            key: Which device; also the driver's ``connection_id``.
            type: The driver's registry name.
            config: The driver's config; a pooled connection opened with another
                type or config is replaced.

        Yields:
            The driver (a `Connection` or `SyncConnection`), connected and
            exclusively yours until the block ends.

        Raises:
            ConnectionPoolExhaustedError: no slot (or the key, held by someone
                else) came free within ``acquire_timeout``.
            ConnectTimeout: the connect did not finish within ``connect_timeout``.
            ConnectError: the connect failed (the driver's error is the cause).
            ConfigError: the type is unknown or the driver rejected its config.
            RuntimeError: the pool is closed.
        """
        entry = await self._checkout(key, type, dict(config or {}))
        try:
            yield entry.adapter.conn
        except BaseException as exc:
            close_task = self._checkin(entry, exc)
            if close_task is not None:
                # Shield only the cleanup: if we are cancelled again the close
                # still finishes, owned by the pool; the original error propagates.
                await asyncio.shield(close_task)
            raise
        close_task = self._checkin(entry, None)
        if close_task is not None:
            await asyncio.shield(close_task)

    async def _checkout(self, key: str, type_name: str, config: dict[str, Any]) -> _Entry:
        """Take ``key``'s slot (waiting if needed), then hand back a connected entry."""
        if self._closed:
            raise RuntimeError("ConnectionPool is closed")
        granted = await self._wait_for_grant(key)
        # From here the key is held and a slot is ours: every exit below either
        # returns a connected entry or gives the slot back via _drop_lease.
        try:
            entry = granted
            if entry is not None:
                entry = await self._reuse_or_retire(entry, type_name, config)
            if entry is None:
                entry = await self._open(key, type_name, config)
            if self._closed:
                # close() ran while we were connecting: it fails waiters and
                # closes idle links, so a checkout in flight must not succeed either.
                raise RuntimeError("ConnectionPool was closed while connecting")
        except BaseException:
            self._drop_lease(key, "checkout failed")
            raise
        entry.uses += 1
        return entry

    async def _wait_for_grant(self, key: str) -> _Entry | None:
        """Queue for ``key`` and return what `_dispatch` granted: an idle entry or a free slot."""
        waiter = _Waiter(key, asyncio.get_running_loop().create_future())
        self._waiters[waiter] = None
        self._dispatch()
        if waiter.future.done():
            # Served at once: no one was ahead of us for what we need.
            return waiter.future.result()
        deadline = asyncio.timeout(self.acquire_timeout)
        try:
            async with deadline:
                try:
                    return await waiter.future
                except BaseException:
                    self._abandon(waiter)
                    raise
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            self._counters["exhausted"] += 1
            raise self._exhausted_error(key) from exc

    def _abandon(self, waiter: _Waiter) -> None:
        """Leave the queue after a cancellation or timeout, giving back anything granted.

        The classic pool race (aiohttp's connector comments it too): `_dispatch`
        may resolve our future in the same loop iteration in which we are
        cancelled (by our caller or by ``acquire_timeout``). The task then wakes
        with CancelledError although a slot, or an idle entry, was handed to it.
        Dropping the grant on the floor would leak that slot forever, so it is
        returned here and the next waiter is served.
        """
        self._waiters.pop(waiter, None)
        future = waiter.future
        if not future.done():
            future.cancel()
        elif not future.cancelled() and future.exception() is None:
            entry = future.result()
            held = self._held.pop(waiter.key, None)
            assert held is entry, "a granted key is held by its grant until checkout"
            if entry is not None:
                self._put_idle(entry)
            logger.debug("%r: returned a grant for %r after cancellation", self, waiter.key)
        # Nothing was taken in the other cases; the exception of a closed pool
        # was retrieved by future.exception() above, so asyncio does not log it.
        self._dispatch()

    def _exhausted_error(self, key: str) -> ConnectionPoolExhaustedError:
        if key in self._held:
            message = (
                f"connection {key!r} stayed checked out for {self.acquire_timeout:g} s"
                f" (one caller per key; max_size={self.max_size},"
                f" {self.active_connections} active)"
            )
        else:
            message = (
                f"no connection free within {self.acquire_timeout:g} s:"
                f" max_size={self.max_size} reached with {self.active_connections} active"
                f" and {self.idle_connections} idle"
            )
        return ConnectionPoolExhaustedError(message, connection_id=key)

    async def _reuse_or_retire(
        self, entry: _Entry, type_name: str, config: dict[str, Any]
    ) -> _Entry | None:
        """Return ``entry`` if it matches and passes the checkout test; else close it.

        Returns None after closing a retired entry: the caller keeps the key
        and slot and opens a fresh connection in their place.
        """
        if entry.type_name != type_name or entry.config != config:
            reason = "config changed"
            counter = "replaced_config"
        elif await self._passes_checkout_test(entry):
            self._counters["reused"] += 1
            logger.debug("%r: reusing %r (use %d)", self, entry.key, entry.uses + 1)
            return entry
        else:
            reason = "stale on checkout"
            counter = "replaced_stale"
        self._counters[counter] += 1
        logger.info("pool: replacing connection %r (%s)", entry.key, reason)
        self._held[entry.key] = None
        # Close the old link before opening the new one: some devices (ZKTeco
        # time clocks among them) accept a single TCP connection at a time.
        # Shielded so that a cancellation here cannot leave it half-closed.
        await asyncio.shield(self._spawn_close(entry, reason))
        return None

    async def _passes_checkout_test(self, entry: _Entry) -> bool:
        """Return True if the link says it is up and answers a real health check."""
        adapter = entry.adapter
        try:
            if not adapter.is_connected():
                return False
            # A hung peer process is invisible to TCP: only a real request tells.
            async with asyncio.timeout(self.connect_timeout):
                return await adapter.health_check()
        except asyncio.CancelledError:
            raise
        except Exception:  # any failure of the check means "stale"; logged below
            logger.debug("pool: checkout test of %r raised", entry.key, exc_info=True)
            return False

    async def _open(self, key: str, type_name: str, config: dict[str, Any]) -> _Entry:
        """Create and connect a driver for ``key`` in the slot the caller holds."""
        driver = self.registry.create(key, type_name, config, self.context)
        now = self._clock.monotonic()
        entry = _Entry(key, type_name, config, DriverAdapter(driver, self._executor), now, now)
        # Held before connecting, so that a failed or cancelled connect closes
        # whatever the driver half-opened (via _drop_lease in _checkout).
        self._held[key] = entry
        deadline = asyncio.timeout(self.connect_timeout)
        try:
            async with deadline:
                await entry.adapter.connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._counters["connect_failed"] += 1
            logger.debug("pool: connect of %r failed: %r", key, exc)
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise ConnectTimeout(
                    f"no connection within {self.connect_timeout:g} s",
                    connection_id=key,
                    cause=exc,
                ) from exc
            if isinstance(exc, EdgelinkError):
                raise
            raise ConnectError(f"connect failed: {exc!r}", connection_id=key, cause=exc) from exc
        self._counters["created"] += 1
        # A pool that opened a connection holds sockets until it is closed.
        self._arm_leak_warning()
        logger.debug("%r: opened %r", self, key)
        return entry

    def _checkin(self, entry: _Entry, exc: BaseException | None) -> asyncio.Task[None] | None:
        """Return ``entry`` to the pool, or discard it; return the close task if any.

        Never awaits, so a plain return hands the entry to the next waiter
        before our caller's task can be interrupted.
        """
        key = entry.key
        if self._held.get(key) is not entry:
            # Only possible if the pool's invariants broke; do not corrupt them further.
            logger.error("pool: %r returned but not held; closing it", key)
            return self._spawn_close(entry, "not held")
        if self._closed:
            return self._drop_lease(key, "pool closed")
        if exc is not None and (
            (verdict := classify(exc)).breaks_link or verdict.action is Action.PROPAGATE
        ):
            # A link error means the link is broken; a cancellation (or any
            # BaseException) may have cut a request in half, leaving an answer
            # in flight that the next user would read as theirs.
            self._counters["discarded"] += 1
            return self._drop_lease(key, f"discarded after {type(exc).__name__}")
        if not self._still_connected(entry):
            self._counters["discarded"] += 1
            return self._drop_lease(key, "returned disconnected")
        del self._held[key]
        entry.last_used = self._clock.monotonic()
        self._put_idle(entry)
        self._dispatch()
        return None

    @staticmethod
    def _still_connected(entry: _Entry) -> bool:
        try:
            return entry.adapter.is_connected()
        except Exception:  # noqa: BLE001 - a driver that cannot say is not trusted
            return False

    def _put_idle(self, entry: _Entry) -> None:
        """Park ``entry`` as the most recently used idle connection, with an idle timer."""
        if self._closed:
            self._close_soon(entry, "pool closed")
            return
        self._idle[entry.key] = entry
        self._idle.move_to_end(entry.key)
        entry.cancel_idle_timer()
        if self.idle_timeout is not None:
            entry.idle_timer = self._clock.call_later(
                self.idle_timeout, functools.partial(self._on_idle_timeout, entry)
            )

    def _on_idle_timeout(self, entry: _Entry) -> None:
        # The timer may fire in the same iteration in which the entry was
        # granted to a waiter (its cancel came too late), or after it was
        # evicted and its key reopened: close it only if it is still the idle one.
        if self._idle.get(entry.key) is not entry:
            return
        del self._idle[entry.key]
        entry.idle_timer = None
        self._counters["idle_closed"] += 1
        logger.debug("%r: closing %r, idle for %g s", self, entry.key, self.idle_timeout)
        self._close_soon(entry, "idle timeout")
        self._dispatch()

    def _drop_lease(self, key: str, reason: str) -> asyncio.Task[None] | None:
        """Release ``key``'s slot now and close its entry, if it has one."""
        entry = self._held.pop(key, None)
        task = self._spawn_close(entry, reason) if entry is not None else None
        self._dispatch()
        return task

    def _dispatch(self) -> None:
        """Hand idle entries and free slots to waiters. Never awaits.

        Called after anything that may let a waiter proceed: a new waiter, a
        checkin, a freed slot. Two passes:

        1. The first waiter of each free key that has an idle entry takes it.
           Reuse costs no capacity, so it takes nothing from anyone; doing it
           first also keeps pass 2 from evicting an entry that is wanted.
        2. Waiters that need a new slot are served strictly in arrival order,
           evicting the least recently used idle entry when the pool is full.
           When the pool is full and nothing is idle, no later waiter could be
           served either, so the walk stops.

        Waiters whose key is held are skipped: they are served when that key
        comes back (pass 1) or its slot is dropped (pass 2).
        """
        if not self._waiters:
            return
        for waiter in list(self._waiters):
            if waiter.future.done():
                # Task.cancel() (our caller's, or acquire_timeout's) cancels the
                # future at once, but the task runs _abandon only on its next
                # turn: such a waiter is gone already, so serve the next one.
                del self._waiters[waiter]
            elif waiter.key not in self._held and waiter.key in self._idle:
                self._grant(waiter, self._idle.pop(waiter.key))
        for waiter in list(self._waiters):
            if waiter.key in self._held:
                continue
            if len(self) >= self.max_size:
                if not self._idle:
                    break
                _, victim = self._idle.popitem(last=False)
                self._counters["evicted"] += 1
                logger.debug("%r: evicting idle %r for %r", self, victim.key, waiter.key)
                self._close_soon(victim, "evicted")
            self._grant(waiter, None)

    def _grant(self, waiter: _Waiter, entry: _Entry | None) -> None:
        del self._waiters[waiter]
        assert not waiter.future.done(), "_dispatch drops finished waiters first"
        if entry is not None:
            entry.cancel_idle_timer()
        else:
            assert waiter.key not in self._idle, "pass 1 hands an idle key's entry out first"
        self._held[waiter.key] = entry
        waiter.future.set_result(entry)

    def _spawn_close(self, entry: _Entry, reason: str) -> asyncio.Task[None]:
        """Close ``entry`` in a task the pool owns; return it for a caller that waits."""
        task = self._new_close_task(entry, reason)
        self._own_close(task)
        return task

    def _close_soon(self, entry: _Entry, reason: str) -> None:
        """Close ``entry`` in a task the pool owns, for a caller that cannot wait.

        Nothing is left dangling: `_closing` holds the task until it ends and
        `aclose` waits for it.
        """
        self._own_close(self._new_close_task(entry, reason))

    def _new_close_task(self, entry: _Entry, reason: str) -> asyncio.Task[None]:
        entry.cancel_idle_timer()
        return asyncio.get_running_loop().create_task(
            self._close_entry(entry, reason), name=f"edgelink.pool[{entry.key}].close"
        )

    def _own_close(self, task: asyncio.Task[None]) -> None:
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_entry(self, entry: _Entry, reason: str) -> None:
        logger.debug("pool: closing %r (%s)", entry.key, reason)
        try:
            # disconnect() never raises, but a driver may hang in it.
            async with asyncio.timeout(self.connect_timeout):
                await entry.adapter.disconnect()
        except TimeoutError:
            logger.warning(
                "pool: disconnect of %r did not finish within %g s",
                entry.key,
                self.connect_timeout,
            )
