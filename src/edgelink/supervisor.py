"""The Supervisor: one connection's life in motion.

It owns the driver's state machine and every task the connection runs:

- the main task (``edgelink[<id>].main``): connect with ``connect_timeout``
  (link opened *and* a first health check answered), back off with jitter,
  suspend after ``reconnect_max_attempts``, probe after ``suspend_cooldown``,
  fast-path one immediate attempt after a TX drop, sleep on `DeviceSleepError`,
  stop in ``error`` on a permanent error;
- while connected: the health task (``.health``), one task per poll group
  (``.poll<N>``), and timers on the injectable clock for ``stable_after`` and
  the ``data_timeout`` watchdog.

Two protections keep one bad device from costing the gateway more than itself:

- flap dampening (`edgelink.dampening`): a link that keeps going up and down
  is flagged ``flapping``, its reconnect is held down until its penalty decays,
  and its per-attempt events are coalesced meanwhile;
- poison quarantine: a poll read that crashes (`Action.POISON`: an exception
  that is no edgelink, OS or timeout error, a bug in driver or decode code) or times out
  ``poison_after`` times in a row is quarantined, no longer read, while the
  rest of the connection keeps flowing; `Supervisor.release_quarantine` brings
  it back.

Whatever notices a lost link (a failed health check, a driver calling
`Connection.connection_lost`, a TX drop, the watchdog, a failed request in
`execute_with_retry`) resolves one future; the main task then closes the link
and goes back to reconnecting. Driver calls are made "busy" with a deadline so
the manager's watchdog can see a call that overran its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar

from edgelink.backoff import Backoff
from edgelink.clock import Clock, TimerHandle
from edgelink.connection import AnyConnection, DriverAdapter
from edgelink.dampening import FlapDamper
from edgelink.deadline import DeadlineWheel
from edgelink.errors import (
    Action,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    DeviceResetError,
    classify,
)
from edgelink.events import EventBus, EventType, make_event
from edgelink.redact import redact_text
from edgelink.settings import ConnectionSettings
from edgelink.state import ConnectionState, Health, Reason, StateMachine, Transition
from edgelink.tasks import ChildTasks, cancel_and_wait

__all__ = [
    "MAX_BAD_TAGS",
    "MAX_CHILD_RESTARTS",
    "DataSink",
    "LinkDownListener",
    "PollSpec",
    "Supervisor",
    "WatchRule",
]

logger = logging.getLogger(__name__)

S = ConnectionState
T = TypeVar("T")

#: Crashes of one child task (health, a poller) on one link that are restarted
#: (after a backoff delay each); the next one drops the link (``task_died``),
#: and the reconnect starts the children afresh.
MAX_CHILD_RESTARTS: Final = 5

#: Tags a connection may have reported bad at once (for "once per good->bad
#: transition"); past it a bad report is passed on every time, never lost.
MAX_BAD_TAGS: Final = 10_000


class DataSink(Protocol):
    """``sink(connection_id, tag, value, quality, ts, reason)``: where reported data goes."""

    def __call__(
        self,
        connection_id: str,
        tag: str,
        value: Any,
        quality: str,
        ts: float,
        reason: str | None = None,
    ) -> None:
        """Take one datapoint; ``reason`` says why it is not good, if the source said."""


#: ``on_link_down(connection_id, reason)``: the link of a connection that was up is gone.
LinkDownListener = Callable[[str, str], None]
HealthCheck = Callable[[], Awaitable[bool]]

#: States in which nothing runs until a person (or a config change) acts.
RESTING = frozenset({S.DISCONNECTED, S.ERROR, S.SUSPENDED})

#: Per-attempt events that a flapping link emits at most once per
#: ``flap_event_interval`` each (``error`` only for failed reads). Transitions
#: (``connected``, ``disconnected``, ``state_change``...) always go out: the
#: bridge and the status depend on them, and the hold-down already bounds them.
COALESCED_WHILE_FLAPPING = frozenset(
    {
        EventType.RECONNECT_START,
        EventType.RECONNECT_FAILED,
        EventType.FAST_PATH_ACTIVE,
        EventType.TX_DROP_DETECTED,
        EventType.HEALTH_CHECK_FAILED,
        EventType.ERROR,
    }
)

#: Losses that are no flap: a person asked for them.
_NOT_A_FLAP = frozenset({Reason.ADMIN_RECONNECT})


@dataclass(frozen=True, slots=True)
class PollSpec:
    """One poll group: read ``tags`` every ``interval`` seconds while connected."""

    tags: tuple[str, ...]
    interval: float


@dataclass(frozen=True, slots=True)
class WatchRule:
    """A vital-sign watch on one tag (the power monitor seed)."""

    tag: str
    below: float | None = None
    above: float | None = None
    warning_after: int = 1
    critical_after: int = 3
    health_check: bool = False

    def is_bad(self, value: Any) -> bool:
        """Return True if ``value`` is outside the watched range."""
        if isinstance(value, str):
            # Text protocols report numbers as text: "0.0" is a reading too.
            try:
                value = float(value)
            except ValueError:
                return False
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.below is not None and value < self.below:
            return True
        return self.above is not None and value > self.above


def _describe(exc: BaseException) -> str:
    text = redact_text(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class _Lost:
    reason: str
    error: BaseException | None = None
    fast: bool = False
    sleep: bool = False
    permanent: bool = False


class Supervisor:
    """Runs one connection: connect, watch, reconnect, report.

    Created and owned by `edgelink.manager.ConnectionManager`; all methods run
    on the manager's event loop unless documented thread-safe.
    """

    def __init__(
        self,
        connection: AnyConnection,
        settings: ConnectionSettings,
        *,
        bus: EventBus,
        clock: Clock,
        name: str | None = None,
        type_name: str | None = None,
        admission: asyncio.Semaphore | None = None,
        executor: Executor | None = None,
        data_sink: DataSink | None = None,
        poll: Sequence[PollSpec] = (),
        watch: Sequence[WatchRule] = (),
        extra_checks: Callable[[], Sequence[HealthCheck]] | None = None,
        on_health_change: Callable[[str, Health], None] | None = None,
        on_health_checked: Callable[[str, float, bool], None] | None = None,
        deadlines: DeadlineWheel | None = None,
        on_link_down: LinkDownListener | None = None,
    ) -> None:
        self.connection_id = connection.connection_id
        #: The user's driver object (a `Connection` or `SyncConnection`).
        self.connection = connection
        #: How the supervisor calls it: one async interface over both kinds of driver.
        self.adapter = DriverAdapter(connection, executor)
        self.settings = settings
        self.name = name
        self.type_name = type_name or connection.type_name or type(connection).__name__
        self._bus = bus
        self._clock = clock
        self._admission = admission
        # Driver-call deadlines, shared manager-wide: cheaper than
        # asyncio.timeout() per health check and poll (see edgelink.deadline).
        self._deadlines = deadlines if deadlines is not None else DeadlineWheel()
        self._data_sink = data_sink
        self._poll = tuple(poll)
        self._watch = {rule.tag: rule for rule in watch}
        self._watch_counts: dict[str, int] = {}
        self._extra_checks = extra_checks
        self._on_health_change = on_health_change
        self._on_health_checked = on_health_checked
        self._on_link_down = on_link_down
        #: Tags whose last report was bad with a reason: the next one is not repeated.
        self._bad_tags: set[str] = set()
        self._backoff: Backoff = settings.backoff()
        self._sm = StateMachine(clock=clock.time, listener=self._on_transition)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None

        self.desired: Literal["running", "stopped"] = "stopped"
        self._task: asyncio.Task[None] | None = None
        #: The health and poll tasks of the current link (restarted if they crash).
        self._children = ChildTasks(self)
        #: Crashes per child role ("health", "poll0"...) on the current link; None: none yet.
        self._child_crashes: dict[str, int] | None = None
        self._timers: list[TimerHandle] = []
        self._lost: asyncio.Future[_Lost] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._health_kick: asyncio.Future[None] | None = None
        self._fast_requested = False
        self._link_open = False
        self._lifecycle = asyncio.Lock()
        self._state_waiters: dict[ConnectionState, list[asyncio.Future[None]]] = {}
        self._generation_waiters: list[tuple[int, asyncio.Future[None]]] = []
        #: Counts the links this supervisor brought up; a new one is a new link.
        self.link_generation = 0

        self._attempts = 0
        self._health = Health.UNKNOWN
        self._health_failures = 0
        self._health_latency: float | None = None
        self._last_error: str | None = None
        self._connected_at: float | None = None
        self._last_data_at: float | None = None
        self._last_data_mono: float | None = None
        self._next_retry_at: float | None = None
        self._cooldown: float | None = settings.suspend_cooldown
        self._identity: str | None = None
        self._busy: dict[str, float] = {}
        self.restarts = 0
        self.crashed: BaseException | None = None
        policy = settings.dampening()
        self._damper = FlapDamper(policy) if policy is not None else None
        #: Wall-clock time the link was flagged flapping (None: it is not).
        self._flapping_since: float | None = None
        #: event type -> (monotonic time it last went out, how many were held back since).
        self._coalesced: dict[str, tuple[float, int]] = {}
        #: Events a flapping link held back, in total.
        self.suppressed_events = 0
        #: Consecutive crashes or timeouts per polled tag (bounded by the poll config).
        self._strikes: dict[str, int] = {}
        #: Quarantined tags: tag -> why and since when.
        self._quarantine: dict[str, dict[str, Any]] = {}
        connection.attach(self)

    # ------------------------------------------------------------------ views

    @property
    def driver(self) -> DriverAdapter:
        """The former name of `adapter`, kept for one release."""
        return self.adapter

    @property
    def state(self) -> ConnectionState:
        """The current state."""
        return self._sm.state

    @property
    def reason(self) -> str | None:
        """Why the connection is in its state (machine-readable)."""
        return self._sm.reason

    @property
    def health(self) -> Health:
        """The link's health, apart from its state."""
        return self._health

    @property
    def last_error(self) -> str | None:
        """The last error, as text."""
        return self._last_error

    @property
    def connected_at(self) -> float | None:
        """Wall-clock time the link last came up."""
        return self._connected_at

    @property
    def reconnect_attempts(self) -> int:
        """Failed attempts since the link was last stable."""
        return self._attempts

    @property
    def clock(self) -> Clock:
        """The clock every wait of this connection goes through (drivers use it too)."""
        return self._clock

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The main task, while one exists."""
        return self._task

    def is_running(self) -> bool:
        """Return True while the main task is alive."""
        return self._task is not None and not self._task.done()

    def status_dict(self) -> dict[str, Any]:
        """Return the explainable status of DESIGN section 4."""
        return {
            "connection_id": self.connection_id,
            "type": self.type_name,
            "name": self.name,
            "status": str(self._sm.state),
            "reason": self._sm.reason,
            "desired": self.desired,
            "since": self._sm.since,
            "health": str(self._health),
            "health_latency": self._health_latency,
            "health_reason": self.connection.degraded_reason
            or (Reason.FLAPPING if self._flapping_since is not None else None),
            "connected_at": self._connected_at,
            "last_data_at": self._last_data_at,
            "last_error": self._last_error,
            "reconnect_attempts": self._attempts,
            "next_retry_at": self._next_retry_at,
            "stats": self.connection.stats.as_dict(),
            "transitions": [t.as_dict() for t in list(self._sm.history)[-5:]],
            "flapping": self._flapping_since is not None,
            "flap": self.flap_status(),
            "quarantined": [dict(entry) for entry in self._quarantine.values()],
        }

    def flap_status(self) -> dict[str, Any] | None:
        """Return the flap dampening's view of the link (None when dampening is off)."""
        damper = self._damper
        if damper is None:
            return None
        now = self._clock.monotonic()
        held = damper.hold_down(now)
        return {
            "flapping": self._flapping_since is not None,
            "since": self._flapping_since,
            "penalty": round(damper.penalty(now), 1),
            "flaps": damper.flaps,
            "held_until": self._clock.time() + held if held else None,
            "suppressed_events": self.suppressed_events,
        }

    @property
    def quarantined(self) -> dict[str, dict[str, Any]]:
        """The quarantined poll tags: tag -> reason, cause, error, since, strikes (a copy)."""
        return {tag: dict(entry) for tag, entry in self._quarantine.items()}

    def overdue(self, now: float) -> list[str]:
        """Return the roles whose driver call overran its deadline at monotonic ``now``."""
        return [role for role, deadline in self._busy.items() if now > deadline]

    def __repr__(self) -> str:
        return (
            f"<Supervisor {self.connection_id} {self._sm.state} health={self._health} "
            f"failures={self._health_failures} attempts={self._attempts}"
            f"{' flapping' if self._flapping_since is not None else ''}"
            f"{f' quarantined={len(self._quarantine)}' if self._quarantine else ''}>"
        )

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start supervising (idempotent). Must be called on the event loop."""
        self.desired = "running"
        if self.is_running():
            return
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self.crashed = None
        if self._sm.state in RESTING:
            self._sm.transition(S.CONNECTING, reason=Reason.START)
        self._task = self._loop.create_task(
            self._run_main(), name=f"edgelink[{self.connection_id}].main"
        )

    async def stop(self, *, reason: str = Reason.ADMIN_STOP, graceful: bool = True) -> None:
        """Stop supervising: end every task, close the link, go ``disconnected``.

        Lifecycle calls (stop, restart, resume) are serialized per connection,
        so two admins restarting the same connection at once cannot interleave.

        Args:
            reason: The status reason to record (``admin_stop``, ``panic``, ``killed``...).
            graceful: Give the driver's disconnect ``connect_timeout`` to finish;
                False gives it a tenth of a second (kill).
        """
        async with self._lifecycle:
            await self._stop(reason=reason, graceful=graceful)

    async def _stop(self, *, reason: str, graceful: bool = True) -> None:
        self.desired = "stopped"
        await self._cancel_main()
        await self._close_link(timeout=self.settings.connect_timeout if graceful else 0.1)
        self._next_retry_at = None
        if self._sm.state is not S.DISCONNECTED:
            was_connected = self._sm.state is S.CONNECTED
            self._transition(S.DISCONNECTED, reason)
            if was_connected:
                self._emit(EventType.DISCONNECTED, reason=reason)

    async def restart(self, *, reason: str = Reason.RESTART) -> None:
        """Stop and start again, with a fresh attempt counter."""
        async with self._lifecycle:
            await self._stop(reason=reason)
            self._attempts = 0
            self._cooldown = self.settings.suspend_cooldown
            if reason != Reason.SUPERVISOR_RESTARTED:
                # A person restarted it: the flap history is forgiven. The
                # watchdog restarting a dead task forgives nothing.
                self._reset_flap(reason)
            self.start()

    async def resume(self) -> None:
        """Bring a suspended or failed connection back (a person said so).

        A connection that is running and not resting is left alone.
        """
        async with self._lifecycle:
            was = self._sm.state
            if was not in RESTING and self.is_running():
                return
            await self._cancel_main()
            await self._close_link(timeout=self.settings.connect_timeout)
            self._attempts = 0
            self._cooldown = self.settings.suspend_cooldown
            self._reset_flap("resumed")
            self.desired = "running"
            self.start()
            self._emit(EventType.RESUMED, previous=str(was))

    async def suspend(
        self,
        reason: str,
        *,
        only_if: Callable[[], bool] | None = None,
        **data: Any,
    ) -> bool:
        """Suspend a running connection for ``reason`` (e.g. ``spam``): it waits for a person.

        Ends every task, closes the link, goes ``suspended`` with ``reason``
        and emits ``suspended`` (and ``disconnected`` if it was connected).
        No cooldown probe follows; `resume` brings it back.

        Args:
            reason: The status reason.
            only_if: Checked under the lifecycle lock; False leaves the
                connection alone (the cause went away while we waited).
            **data: Context for the ``suspended`` event.

        Returns:
            True if the connection was suspended now; False if it was not
            running (stopped, failed, already suspended) or ``only_if`` said no.
        """
        async with self._lifecycle:
            if self._sm.state in RESTING or (only_if is not None and not only_if()):
                return False
            was_connected = self._sm.state is S.CONNECTED
            await self._cancel_main()
            await self._close_link(timeout=self.settings.connect_timeout)
            self._next_retry_at = None
            self._transition(S.SUSPENDED, reason)
            if was_connected:
                self._emit(EventType.DISCONNECTED, reason=reason)
            self._emit(EventType.SUSPENDED, reason=reason, **data)
            return True

    async def _cancel_main(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            # A driver that swallows cancellation could hold us here forever:
            # bound the wait, the watchdog reports such a driver. (A task that
            # ended already was looked at by the watchdog.)
            await cancel_and_wait(task, timeout=self.settings.connect_timeout + 1.0)
        self._lost = None
        self._connected_at = None
        await self._end_connected_tasks()

    def abandon(self) -> None:
        """Forget a stuck main task (the watchdog will start a new one)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        self._busy.clear()

    # ------------------------------------------------------- driver callbacks

    def _on_loop(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread (driver hooks may come from threads)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._thread_id:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> bool:
        """Run ``callback(*args)`` on the loop thread for the driver. Thread-safe.

        Returns:
            False if there is no loop to run it on (never started, or closed).
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        self._on_loop(callback, *args)
        return True

    def on_data(
        self, tag: str, value: Any, quality: str, ts: float | None, reason: str | None = None
    ) -> None:
        """A datapoint arrived from the driver. Thread-safe."""
        self._on_loop(self._handle_data, tag, value, quality, ts, reason)

    def _handle_data(
        self, tag: str, value: Any, quality: str, ts: float | None, reason: str | None = None
    ) -> bool:
        """Pass a datapoint on; return False if it repeated a bad report and was not.

        A ``bad`` report that gives a reason (a value the driver could not
        decode, a read the device refused) is passed on once per good->bad
        transition of its tag (and once per link), so a tag that stays
        undecodable does not repeat itself every poll.
        """
        now = self._clock.time()
        self._last_data_at = now
        self._last_data_mono = self._clock.monotonic()
        bad_tags = self._bad_tags
        if quality == "good":
            if bad_tags:
                bad_tags.discard(tag)
            rule = self._watch.get(tag)
            if rule is not None:
                self._check_watch(rule, value)
        elif reason is not None and quality == "bad":
            if tag in bad_tags:
                return False
            if len(bad_tags) < MAX_BAD_TAGS:
                bad_tags.add(tag)
            logger.warning("%s: %s is bad: %s", self.connection_id, tag, reason)
        if self._data_sink is not None:
            try:
                self._data_sink(
                    self.connection_id, tag, value, quality, ts if ts is not None else now, reason
                )
            except Exception:
                logger.exception("%s: data sink failed for %s", self.connection_id, tag)
        return True

    def on_activity(self) -> None:
        """The link showed life. Thread-safe."""
        self._last_data_mono = self._clock.monotonic()

    def on_degraded(self, reason: str | None) -> None:
        """The driver says its link works but not fully (None: whole again). Thread-safe."""
        self._on_loop(self._handle_degraded, reason)

    def _handle_degraded(self, reason: str | None) -> None:
        # Only a connected link has a health to refine; a failing check
        # (unhealthy) outranks the driver's word, a link already lost keeps its
        # health until the main task handles the loss, and the next check or
        # link re-evaluates anyway.
        lost = self._lost
        if (
            self._sm.state is not S.CONNECTED
            or self._health is Health.UNHEALTHY
            or (lost is not None and lost.done())
        ):
            return
        self._set_health(self._passing_health())

    def _passing_health(self) -> Health:
        """The health of a link whose checks pass: degraded if slow or the driver says so."""
        s = self.settings
        latency = self._health_latency
        slow = (
            s.health_degraded_latency is not None
            and latency is not None
            and latency > s.health_degraded_latency
        )
        if (
            slow
            or self._health_failures
            or self.connection.degraded_reason is not None
            or self._flapping_since is not None
        ):
            return Health.DEGRADED
        return Health.HEALTHY

    def on_tx_drop(self) -> None:
        """A frame broke mid-way: reconnect at once on the fast path. Thread-safe."""
        self._on_loop(self._handle_tx_drop)

    def _handle_tx_drop(self) -> None:
        self._emit(EventType.TX_DROP_DETECTED)
        self._fast_requested = True
        self._lose(_Lost(Reason.TX_DROP, fast=True))

    def on_lost(self, exc: BaseException | None) -> None:
        """The driver noticed its link is gone. Thread-safe."""
        self._on_loop(self._handle_lost, exc)

    def _handle_lost(self, exc: BaseException | None) -> None:
        reason = Reason.LOST if exc is None else classify(exc).reason
        if reason in (Reason.CONNECT_FAILED, Reason.ERROR, Reason.LOST):
            # The driver saw its open link end; "connect_failed" would mislead.
            reason = Reason.CONNECTION_LOST
        self._lose(_Lost(reason, exc))

    def report_failure(self, exc: BaseException) -> None:
        """A request on the link failed with ``exc`` (from `execute_with_retry`)."""
        verdict = classify(exc)
        if verdict.action is Action.TIMEOUT:
            # A request that timed out leaves a request/response stream out of
            # step: treat it as a dropped frame.
            self._handle_tx_drop()
        elif verdict.action is Action.RECONNECT:
            self._lose(_Lost(verdict.reason, exc))

    def reconnect(self, *, fast_path: bool = True, reason: str = Reason.ADMIN_RECONNECT) -> None:
        """Drop the link and reconnect now (or cut a backoff wait short)."""
        self._fast_requested = fast_path
        if self._lost is not None and not self._lost.done():
            self._lose(_Lost(reason, fast=fast_path))
        elif self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def kick_health_check(self) -> None:
        """Run the next health check now instead of at its interval."""
        if self._health_kick is not None and not self._health_kick.done():
            self._health_kick.set_result(None)

    def _lose(self, lost: _Lost) -> None:
        fut = self._lost
        if fut is not None and not fut.done():
            fut.set_result(lost)

    # ---------------------------------------------------------------- helpers

    def _transition(self, new: ConnectionState, reason: str | None) -> Transition | None:
        if self._sm.state is new:
            self._sm.set_reason(reason)
            return None
        return self._sm.transition(new, reason=reason)

    def _on_transition(self, tr: Transition) -> None:
        if tr.new is S.CONNECTED:
            self.link_generation += 1
            if self._generation_waiters:
                keep = []
                for gen, fut in self._generation_waiters:
                    if gen <= self.link_generation:
                        if not fut.done():
                            fut.set_result(None)
                    else:
                        keep.append((gen, fut))
                self._generation_waiters = keep
        waiters = self._state_waiters.pop(tr.new, None)
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        self._emit(EventType.STATE_CHANGE, old=str(tr.old), new=str(tr.new), reason=tr.reason)

    def _emit(self, event_type: str, **data: Any) -> None:
        if event_type == "disconnected":
            self._link_down(str(data.get("reason") or "disconnected"))
        if (
            self._flapping_since is not None
            and event_type in COALESCED_WHILE_FLAPPING
            and (
                event_type != EventType.ERROR
                or data.get("reason") in (Reason.READ_FAILED, Reason.READ_CRASHED)
            )
            and not self._let_through(event_type, data)
        ):
            return
        bus = self._bus
        if not bus.wants(event_type):
            # Nobody listens and the log would drop it: skip building the event
            # (this is most events of a large fleet running quietly).
            return
        bus.emit(
            make_event(
                event_type,
                self.connection_id,
                self._clock.time(),
                state=str(self._sm.state),
                attempt=self._attempts,
                connection=self.connection,
                **data,
            )
        )

    def _link_down(self, reason: str) -> None:
        """The link that was up is gone: tell the manager (it marks the data stale) at once.

        Called where ``disconnected`` is emitted, synchronously: a datapoint of
        the next link can only come after it, so it is never marked stale.
        """
        self._bad_tags.clear()  # the next link reports its bad tags once again
        if self._on_link_down is not None:
            try:
                self._on_link_down(self.connection_id, reason)
            except Exception:
                logger.exception("%s: link-down listener failed", self.connection_id)

    def _set_health(self, health: Health) -> None:
        if health is not self._health:
            self._health = health
            if self._on_health_change is not None:
                self._on_health_change(self.connection_id, health)

    async def _call(self, role: str, timeout: float, factory: Callable[[], Awaitable[T]]) -> T:
        busy = self._busy
        # The watchdog's deadline is generous: it only catches a call that
        # ignored its own timeout (a driver swallowing cancellation, a hung thread).
        busy[role] = self._clock.monotonic() + 2 * timeout + 1.0
        try:
            with self._deadlines.timeout(timeout):
                return await factory()
        finally:
            busy.pop(role, None)

    async def wait_for_state(self, state: ConnectionState) -> None:
        """Return once the connection is (or has entered) ``state``."""
        if self._sm.state is state:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._state_waiters.setdefault(state, []).append(fut)
        try:
            await fut
        finally:
            waiters = self._state_waiters.get(state)
            if waiters and fut in waiters:
                waiters.remove(fut)

    async def wait_for_generation(self, generation: int) -> None:
        """Return once link number ``generation`` (or a later one) is up."""
        if self.link_generation >= generation and self._sm.state is S.CONNECTED:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (generation, fut)
        self._generation_waiters.append(entry)
        try:
            await fut
        finally:
            if entry in self._generation_waiters:
                self._generation_waiters.remove(entry)

    async def wait_connected(self) -> None:
        """Return once the connection is connected."""
        await self.wait_for_state(S.CONNECTED)

    # -------------------------------------------------------------- main task

    async def _run_main(self) -> None:
        try:
            await self._run_lifecycle()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.crashed = exc
            self._last_error = _describe(exc)
            logger.exception("%s: supervisor task failed", self.connection_id)
        finally:
            if self._owns():
                await self._end_connected_tasks()

    def _owns(self) -> bool:
        """Return True if the running task is this supervisor's current main task.

        A task that was abandoned (stuck, then replaced by the watchdog) or is
        being stopped must not touch shared state while it unwinds: whoever
        replaced or stopped it has cleaned up already.
        """
        return asyncio.current_task() is self._task

    async def _run_lifecycle(self) -> None:
        s = self.settings
        fast = False
        in_cooldown = self._sm.state is S.SUSPENDED
        while self._owns():
            if in_cooldown:
                if self._cooldown is None:
                    return
                self._next_retry_at = self._clock.time() + self._cooldown
                await self._wait(self._cooldown)
                self._cooldown = min(self._cooldown * 2, s.suspend_cooldown_max)
            elif self._sm.state is S.RECONNECTING and (hold := self._hold_down()) > 0:
                # Flapping: held down until the penalty decays, fast path or
                # not. An admin reconnect cuts the wait short (a person said so).
                self._next_retry_at = self._clock.time() + hold
                self._sm.set_reason(Reason.FLAPPING)
                await self._wait(hold)
            elif not fast and self._sm.state is S.RECONNECTING:
                attempt = self._attempts + 1
                delay = self._backoff.delay(attempt)
                self._next_retry_at = self._clock.time() + delay
                self._emit(EventType.RECONNECT_START, delay=round(delay, 4), next_attempt=attempt)
                await self._wait(delay)
            elif not fast and self._sm.state is S.SLEEPING:
                self._next_retry_at = self._clock.time() + s.sleep_probe_interval
                await self._wait(s.sleep_probe_interval)
            self._next_retry_at = None
            if fast:
                self._emit(EventType.FAST_PATH_ACTIVE, timeout=s.fast_path_timeout)
            timeout = s.fast_path_timeout if fast else s.connect_timeout
            fast = False
            self._fast_requested = False

            error = await self._attempt(timeout)
            if error is None:
                lost = await self._run_connected()
                await self._close_link(timeout=s.connect_timeout)
                if self.desired == "stopped":
                    return
                self._last_error = _describe(lost.error) if lost.error else lost.reason
                self._set_health(Health.UNHEALTHY)
                if lost.permanent:
                    self._transition(S.ERROR, lost.reason)
                    self._emit(EventType.DISCONNECTED, reason=lost.reason)
                    self._emit(EventType.ERROR, reason=lost.reason, error=self._last_error)
                    return
                if lost.sleep:
                    self._transition(S.SLEEPING, "device_sleep")
                    self._emit(EventType.DISCONNECTED, reason=Reason.DEVICE_SLEEP)
                    continue
                if not s.auto_reconnect:
                    self._transition(S.ERROR, lost.reason)
                    self._emit(EventType.DISCONNECTED, reason=lost.reason)
                    self._emit(EventType.ERROR, reason=lost.reason, error=self._last_error)
                    return
                self._transition(S.RECONNECTING, lost.reason)
                self._emit(EventType.DISCONNECTED, reason=lost.reason, error=self._last_error)
                if lost.reason not in _NOT_A_FLAP:
                    self._record_flap()
                fast = lost.fast or self._fast_requested
                in_cooldown = False
                continue

            # The attempt failed.
            verdict = classify(error)
            reason = verdict.reason
            self._last_error = _describe(error)
            # The device itself is unreachable: reads that timed out were the
            # link's fault, not their tags'.
            self._strikes.clear()
            self.connection.stats.add({"errors": 1}, self._clock.time())
            if verdict.action is Action.SLEEP:
                self._transition(S.SLEEPING, "device_sleep")
                in_cooldown = False
                continue
            if verdict.action is Action.PERMANENT:
                self._transition(S.ERROR, reason)
                self._emit(EventType.ERROR, reason=reason, error=self._last_error)
                return
            if in_cooldown:
                # One probe after the cooldown failed: stay suspended and say so again.
                self._emit(
                    EventType.SUSPENDED,
                    reason=Reason.MAX_ATTEMPTS,
                    error=self._last_error,
                    next_probe_in=self._cooldown,
                )
                self._sm.set_reason(Reason.MAX_ATTEMPTS)
                continue
            if self._sm.state is S.CONNECTING:
                # The first connect is not a reconnect attempt: the retries that
                # follow it wait initial, initial*multiplier, ... like after a loss.
                if not s.auto_reconnect:
                    self._transition(S.ERROR, reason)
                    self._emit(EventType.ERROR, reason=reason, error=self._last_error)
                    return
                self._transition(S.RECONNECTING, reason)
                continue
            self._attempts += 1
            self._emit(EventType.RECONNECT_FAILED, error=self._last_error, reason=reason)
            if not s.auto_reconnect:
                self._transition(S.ERROR, reason)
                self._emit(EventType.ERROR, reason=reason, error=self._last_error)
                return
            if self._backoff.exhausted(self._attempts):
                self._transition(S.SUSPENDED, "max_attempts")
                self._emit(
                    EventType.MAX_RETRIES_EXCEEDED, attempts=self._attempts, error=self._last_error
                )
                self._emit(
                    EventType.SUSPENDED,
                    reason=Reason.MAX_ATTEMPTS,
                    error=self._last_error,
                    next_probe_in=self._cooldown,
                )
                in_cooldown = True
                continue
            self._transition(S.RECONNECTING, reason)

    async def _wait(self, delay: float) -> None:
        """Wait ``delay`` on the clock; `reconnect()` cuts the wait short."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._wake = fut

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        handle = self._clock.call_later(delay, wake)
        try:
            await fut
        finally:
            handle.cancel()
            self._wake = None

    async def _attempt(self, timeout: float) -> BaseException | None:
        """One connect attempt: open the link and get a first health check answered."""
        admission = self._admission
        try:
            if admission is not None:
                async with admission:
                    await self._call("connect", timeout, self._open)
            else:
                await self._call("connect", timeout, self._open)
        except asyncio.CancelledError:
            if self._owns():
                await self._close_link(timeout=0.5)
            raise
        except TimeoutError as exc:
            if self._owns():
                await self._close_link(timeout=0.5)
            return ConnectTimeout(
                f"no connection within {timeout:g} s", connection_id=self.connection_id
            ).with_traceback(exc.__traceback__)
        except Exception as exc:  # noqa: BLE001 - every driver error is classified, not fatal
            if self._owns():
                await self._close_link(timeout=0.5)
            return exc
        return None

    async def _open(self) -> None:
        self._link_open = True
        await self.adapter.connect()
        ok = await self.adapter.health_check()
        if not ok:
            raise ConnectError("first health check failed", connection_id=self.connection_id)
        identity = await self.adapter.identity()
        if identity is not None:
            previous, self._identity = self._identity, identity
            if previous is not None and previous != identity:
                self._emit(EventType.DEVICE_RESET, old_identity=previous, new_identity=identity)
                try:
                    await self.adapter.on_reset()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise DeviceResetError(
                        f"re-provisioning after reset failed: {exc}",
                        connection_id=self.connection_id,
                        cause=exc,
                    ) from exc

    async def _close_link(self, *, timeout: float) -> None:
        if not self._link_open:
            return
        self._link_open = False
        # Shield the close: a stop that cancels us must still release the socket.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.adapter.disconnect())

    # ------------------------------------------------------------- connected

    async def _run_connected(self) -> _Lost:
        s = self.settings
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[_Lost] = loop.create_future()
        self._lost = lost
        was_reconnect = self._sm.state is not S.CONNECTING
        self._connected_at = self._clock.time()
        self._last_data_mono = self._clock.monotonic()
        self._health_failures = 0
        self._set_health(
            Health.HEALTHY
            if self.connection.degraded_reason is None and self._flapping_since is None
            else Health.DEGRADED
        )
        self._last_error = None
        attempt = self._attempts
        if was_reconnect:
            self.connection.stats.add({"reconnects": 1}, self._clock.time())
        self._transition(S.CONNECTED, None)
        self._emit(EventType.CONNECTED, reconnect=was_reconnect)
        if was_reconnect:
            self._emit(EventType.RECONNECT_OK, attempts=attempt)

        self._child_crashes = None
        if s.health_check_interval is not None:
            self._spawn_child("health")
        for i in range(len(self._poll)):
            self._spawn_child(f"poll{i}")
        if self._attempts and s.stable_after >= 0:
            self._timers.append(self._clock.call_later(s.stable_after, self._on_stable))
        if self._flapping_since is not None:
            self._timers.append(self._clock.call_later(s.stable_after, self._on_flap_stable))
        if s.data_timeout is not None:
            self._arm_data_watchdog(s.data_timeout)
        # A TX drop reported during the attempt itself still counts.
        try:
            return await lost
        finally:
            if self._owns():
                self._lost = None
                await self._end_connected_tasks()
                self._connected_at = None

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
        self._children.spawn(coro, name=f"edgelink[{self.connection_id}].{role}")

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
            self._lose(_Lost("task_died", exc))
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

    def _on_stable(self) -> None:
        if self._sm.state is S.CONNECTED:
            attempts, self._attempts = self._attempts, 0
            self._cooldown = self.settings.suspend_cooldown
            self._emit(EventType.CONNECTION_STABLE, previous_attempts=attempts)

    def _arm_data_watchdog(self, timeout: float) -> None:
        last = self._last_data_mono or self._clock.monotonic()
        remaining = last + timeout - self._clock.monotonic()
        self._timers.append(self._clock.call_later(remaining, self._check_data_watchdog))

    def _check_data_watchdog(self) -> None:
        timeout = self.settings.data_timeout
        if timeout is None or self._lost is None:
            return
        last = self._last_data_mono or 0.0
        if self._clock.monotonic() - last >= timeout:
            self._lose(_Lost(Reason.DATA_TIMEOUT))
        else:
            self._arm_data_watchdog(timeout)

    async def _wait_health_interval(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._health_kick = fut

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        handle = self._clock.call_later(interval, wake)
        try:
            await fut
        finally:
            handle.cancel()
            self._health_kick = None

    async def _run_health(self) -> None:
        s = self.settings
        assert s.health_check_interval is not None
        while True:
            await self._wait_health_interval(s.health_check_interval)
            lost = await self.check_health()
            if lost is not None:
                self._lose(lost)
                return

    async def check_health(self) -> _Lost | None:
        """Run one health check now; return why the link is lost, or None."""
        s = self.settings
        started = self._clock.monotonic()
        error: BaseException | None = None
        ok = False
        try:
            if not self.adapter.is_connected():
                return _Lost(Reason.CONNECTION_LOST)
            ok = await self._call("health", s.health_check_timeout, self.adapter.health_check)
            if ok and self._extra_checks is not None:
                for check in self._extra_checks():
                    ok = bool(await self._call("health", s.health_check_timeout, check))
                    if not ok:
                        break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the check is a failed check
            verdict = classify(exc)
            if verdict.action is Action.SLEEP:
                return _Lost(Reason.DEVICE_SLEEP, exc, sleep=True)
            if verdict.action is Action.PERMANENT:
                return _Lost(verdict.reason, exc, permanent=True)
            error = exc
        latency = self._clock.monotonic() - started
        self._health_latency = latency
        if self._on_health_checked is not None:
            self._on_health_checked(self.connection_id, latency, ok)
        if ok:
            self._health_failures = 0
            self._set_health(self._passing_health())
            return None
        self._health_failures += 1
        self.connection.stats.add({"errors": 1}, self._clock.time())
        text = _describe(error) if error else "health check returned False"
        self._last_error = text
        self._emit(
            EventType.HEALTH_CHECK_FAILED,
            failures=self._health_failures,
            threshold=s.health_check_failures,
            error=text,
        )
        if self._health_failures >= s.health_check_failures:
            self._set_health(Health.UNHEALTHY)
            if error is not None and classify(error).action is Action.TIMEOUT:
                return _Lost(
                    Reason.HALF_OPEN if self.adapter.is_connected() else Reason.TIMEOUT, error
                )
            return _Lost(Reason.HEALTH_CHECK_FAILED, error)
        self._set_health(Health.DEGRADED)
        return None

    async def _run_poll(self, group: PollSpec) -> None:
        s = self.settings
        next_at = self._clock.monotonic()
        while True:
            if self.adapter.has_read_many:
                if not await self._poll_batch(group):
                    return
                next_at = await self._next_poll_round(next_at, group.interval)
                continue
            for tag in group.tags:
                if tag in self._quarantine:
                    continue
                try:
                    value = await self._call(
                        "poll", s.request_timeout, functools.partial(self.adapter.read, tag)
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - classified by _poll_failed
                    if self._poll_failed((tag,), exc):
                        continue
                    return
                self._strikes.pop(tag, None)
                self._handle_data(tag, value, "good", None)
            next_at = await self._next_poll_round(next_at, group.interval)

    async def _next_poll_round(self, next_at: float, interval: float) -> float:
        # Fixed-rate schedule: a slow read delays the next round, it does not
        # shift every later one; missed rounds are skipped, not bunched.
        next_at += interval
        now = self._clock.monotonic()
        if next_at < now:
            next_at = now
        await self._clock.sleep(next_at - now)
        return next_at

    async def _poll_batch(self, group: PollSpec) -> bool:
        """Poll one group with the driver's batched read; return False once the link is lost.

        A tag the device refused is reported bad with an ``error`` event and
        the others keep their values; an error that breaks the link ends the
        poller like a failed read (the link's data is then marked stale).
        """
        s = self.settings
        tags = group.tags
        if self._quarantine:
            tags = tuple(tag for tag in tags if tag not in self._quarantine)
            if not tags:
                return True
        try:
            results = await self._call(
                "poll", s.request_timeout, functools.partial(self.adapter.read_many, tags)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            return self._poll_failed(tags, exc)
        for tag in tags:
            if tag not in results:
                continue
            value = results[tag]
            if isinstance(value, BaseException):
                if not self._poll_failed((tag,), value, per_tag=True):
                    return False
                continue
            self._strikes.pop(tag, None)
            self._handle_data(tag, value, "good", None)
        return True

    def _poll_failed(
        self, tags: Sequence[str], exc: BaseException, *, per_tag: bool = False
    ) -> bool:
        """Classify a failed poll read of ``tags``; return True if polling goes on (link kept).

        With ``per_tag`` the error belongs to one tag of a batch, so a bad tag
        (`ConfigError`) costs that tag its value, not the connection its state.
        A crash (`Action.POISON`) keeps the link and counts a strike against
        the tags; a timeout counts one too, and drops the link. Once the link
        is lost its data is marked stale, not bad (`_link_down`).
        """
        verdict = classify(exc)
        action = verdict.action
        if action is Action.REFUSED or (per_tag and isinstance(exc, ConfigError)):
            # The device said no for this tag: report it bad, keep the link.
            for tag in tags:
                self._read_refused(tag, exc)
            return True
        if action is Action.POISON:
            # A bug in the read or its decoding: a reconnect cannot fix it, so
            # the link and the other tags carry on.
            self._strike(tags, exc)
            return True
        if action is Action.SLEEP:
            self._lose(_Lost(Reason.DEVICE_SLEEP, exc, sleep=True))
        elif action is Action.TIMEOUT:
            self._strike(tags, exc)
            self._handle_tx_drop()
        else:
            self._lose(_Lost(verdict.reason, exc, permanent=action is Action.PERMANENT))
        return False

    # ---------------------------------------------------------- flap dampening

    def _hold_down(self) -> float:
        damper = self._damper
        return 0.0 if damper is None else damper.hold_down(self._clock.monotonic())

    def _record_flap(self) -> None:
        """The link was up and went down: add a penalty; flag it flapping on suppression."""
        damper = self._damper
        if damper is None:
            return
        now = self._clock.monotonic()
        was_suppressed = damper.is_suppressed(now)
        if not damper.record_flap(now) or was_suppressed:
            return
        hold = damper.hold_down(now)
        first = self._flapping_since is None
        if first:
            self._flapping_since = self._clock.time()
        # One event per hold-down (the hold-down itself bounds how often).
        self._emit(
            EventType.FLAPPING,
            flaps=damper.flaps,
            penalty=round(damper.penalty(now), 1),
            hold_down=round(hold, 3),
            first=first,
            suppressed_events=self.suppressed_events,
        )

    def _on_flap_stable(self) -> None:
        """The link stayed up ``stable_after`` since it was let back: no longer flapping."""
        if self._sm.state is not S.CONNECTED:
            return
        hold = self._hold_down()
        if hold:
            # Let back early by an admin: flapping until the penalty has decayed.
            self._timers.append(self._clock.call_later(hold, self._on_flap_stable))
            return
        self._clear_flapping("stable")
        if self._health is Health.DEGRADED:
            self._set_health(self._passing_health())

    def _reset_flap(self, reason: str) -> None:
        if self._damper is not None:
            self._damper.reset()
        self._clear_flapping(reason)

    def _clear_flapping(self, reason: str) -> None:
        if self._flapping_since is None:
            return
        since, self._flapping_since = self._flapping_since, None
        held_back = sum(n for _, n in self._coalesced.values())
        self._coalesced.clear()
        self._emit(
            EventType.FLAP_CLEARED,
            reason=reason,
            flapping_since=since,
            suppressed_events=self.suppressed_events,
            held_back=held_back,
        )

    def _let_through(self, event_type: str, data: dict[str, Any]) -> bool:
        """Rate-limit one per-attempt event of a flapping link; count what is held back.

        The event that goes out after a quiet spell carries ``coalesced``: how
        many of its type were held back before it.
        """
        now = self._clock.monotonic()
        last = self._coalesced.get(event_type)
        if last is None or now - last[0] >= self.settings.flap_event_interval:
            self._coalesced[event_type] = (now, 0)
            if last is not None and last[1]:
                data["coalesced"] = last[1]
            return True
        self._coalesced[event_type] = (last[0], last[1] + 1)
        self.suppressed_events += 1
        return False

    # --------------------------------------------------------------- poison

    def _strike(self, tags: Sequence[str], exc: BaseException) -> None:
        """Count one crash or timeout against each of ``tags``; quarantine at ``poison_after``."""
        crash = classify(exc).action is Action.POISON
        text = _describe(exc)
        if crash:
            # The link stays, so the tags' values are bad now (once per good->bad).
            for tag in tags:
                self._handle_data(tag, None, "bad", None, text)
            self._emit(
                EventType.ERROR,
                reason=Reason.READ_CRASHED,
                tag=tags[0],
                tags=list(tags),
                error=text,
            )
        limit = self.settings.poison_after
        if limit is None:
            return
        newly: list[str] = []
        for tag in tags:
            count = self._strikes.get(tag, 0) + 1
            if count < limit:
                self._strikes[tag] = count
                continue
            self._strikes.pop(tag, None)
            self._quarantine[tag] = {
                "tag": tag,
                "reason": Reason.POISON,
                "cause": "crash" if crash else "timeout",
                "error": text,
                "since": self._clock.time(),
                "strikes": count,
            }
            newly.append(tag)
        if not newly:
            return
        # Once per quarantine, with the traceback a developer needs to fix the
        # driver: the tag is no longer read, so this cannot repeat.
        logger.warning(
            "%s: poll read of %s quarantined after %d consecutive %s: %s",
            self.connection_id,
            ", ".join(newly),
            limit,
            "crashes" if crash else "timeouts",
            text,
            exc_info=exc if crash else None,
        )
        self._emit(
            EventType.POLL_QUARANTINED,
            reason=Reason.POISON,
            cause="crash" if crash else "timeout",
            tags=newly,
            strikes=limit,
            error=text,
        )

    def release_quarantine(self, tag: str | None = None) -> list[str]:
        """Read quarantined tags again (all of them, or ``tag``); return those released.

        The next poll round reads them; a tag that crashes again is
        quarantined again after ``poison_after`` strikes.

        Raises:
            KeyError: if ``tag`` is given and not quarantined.
        """
        if tag is None:
            released = list(self._quarantine)
        elif tag in self._quarantine:
            released = [tag]
        else:
            raise KeyError(f"tag {tag!r} of {self.connection_id!r} is not quarantined")
        for name in released:
            del self._quarantine[name]
            self._strikes.pop(name, None)
        if released:
            self._emit(EventType.QUARANTINE_RELEASED, tags=released)
        return released

    def _read_refused(self, tag: str, exc: BaseException) -> None:
        """A read of ``tag`` failed, the link stays: report it bad and say why, once."""
        error = _describe(exc)
        if self._handle_data(tag, None, "bad", None, error):
            self._emit(EventType.ERROR, reason=Reason.READ_FAILED, tag=tag, error=error)

    # ----------------------------------------------------------- vital signs

    def _check_watch(self, rule: WatchRule, value: Any) -> None:
        if not rule.is_bad(value):
            self._watch_counts[rule.tag] = 0
            return
        count = self._watch_counts.get(rule.tag, 0) + 1
        self._watch_counts[rule.tag] = count
        data = {"tag": rule.tag, "value": value, "consecutive": count}
        if count == rule.warning_after:
            self._emit(EventType.POWER_WARNING, **data)
            if rule.health_check:
                self.kick_health_check()
        if count == rule.critical_after:
            self._emit(EventType.POWER_CRITICAL, **data)
