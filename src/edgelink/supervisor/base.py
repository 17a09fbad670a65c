"""The supervisor's state and plain parts: construction, views, driver callbacks, events.

Everything here runs on the loop in a few steps, without waits: the driver's
hooks (data, activity, TX drop, loss) hop onto the loop and resolve the one
``lost`` future the main task waits on; `_emit` builds events only when someone
listens; `_call` gives a driver call its deadline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from edgelink._deadline import DeadlineWheel
from edgelink._tasks import ChildTasks
from edgelink.backoff import Backoff
from edgelink.clock import Clock, TimerHandle
from edgelink.connection import AnyConnection, DriverAdapter
from edgelink.cpuaccount import CpuAccount
from edgelink.dampening import FlapDamper
from edgelink.errors import (
    Action,
    classify,
)
from edgelink.events import EventBus, EventType, make_event
from edgelink.settings import ConnectionSettings
from edgelink.state import ConnectionState, Health, Reason, StateMachine, Transition
from edgelink.supervisor.failover import Endpoints
from edgelink.supervisor.policy import (
    COALESCED_WHILE_FLAPPING,
    Lost,
)
from edgelink.supervisor.specs import (
    DataSink,
    HealthCheck,
    LinkDownListener,
    LinkObserver,
    PollSpec,
    WatchRule,
)

logger = logging.getLogger("edgelink.supervisor")

S = ConnectionState
T = TypeVar("T")

#: Tags a connection may have reported bad at once (for "once per good->bad
#: transition"); past it a bad report is passed on every time, never lost.
MAX_BAD_TAGS: Final = 10_000


class SupervisorBase:
    """The state of one connection's supervisor and what every part uses.

    The parts (health, flapping, polling, children, lifecycle) extend it one
    on the other; `edgelink.supervisor.Supervisor` is the last of them, one object per link.
    """

    # One object per link, many links: no instance dict (a Supervisor's ~56
    # attributes cost ~1.5 KB more per link in a dict than in slots).
    __slots__ = (
        "__weakref__",
        "_admission",
        "_attempts",
        "_backoff",
        "_bad_tags",
        "_bus",
        "_busy",
        "_child_crashes",
        "_children",
        "_clock",
        "_coalesced",
        "_connected_at",
        "_cooldown",
        "_damper",
        "_data_sink",
        "_deadlines",
        "_endpoints",
        "_extra_checks",
        "_fast_requested",
        "_flapping_since",
        "_generation_waiters",
        "_health",
        "_health_failures",
        "_health_kick",
        "_health_latency",
        "_identity",
        "_last_data_at",
        "_last_data_mono",
        "_last_error",
        "_lifecycle",
        "_link_open",
        "_loop",
        "_lost",
        "_next_retry_at",
        "_observer",
        "_on_health_change",
        "_on_health_checked",
        "_on_link_down",
        "_poll",
        "_quarantine",
        "_sm",
        "_state_waiters",
        "_strikes",
        "_task",
        "_thread_id",
        "_timers",
        "_wake",
        "_watch",
        "_watch_counts",
        "adapter",
        "connection",
        "connection_id",
        "cpu",
        "crashed",
        "desired",
        "link_generation",
        "name",
        "restarts",
        "settings",
        "suppressed_events",
        "type_name",
    )

    if TYPE_CHECKING:
        # Provided by the parts built on this one; ``self`` is handed to the
        # driver and the child tasks as the whole supervisor.
        def _check_watch(self, rule: WatchRule, value: Any) -> None: ...
        def _let_through(self, event_type: str, data: dict[str, Any]) -> bool: ...
        def on_degraded(self, reason: str | None) -> None:
            """See `edgelink.supervisor.health`."""

        def status_dict(self) -> dict[str, Any]:
            """See `edgelink.supervisor.core`."""

        def child_crashed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
            """See `edgelink.supervisor.children`."""

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
        observer: LinkObserver | None = None,
        endpoints: Endpoints | None = None,
    ) -> None:
        self.connection_id = connection.connection_id
        #: The user's driver object (a `Connection` or `SyncConnection`).
        self.connection = connection
        #: How the supervisor calls it: one async interface over both kinds of driver.
        self.adapter = DriverAdapter(connection, executor)
        self.settings = settings
        #: The event-loop time of this connection's tasks and callbacks (`edgelink.cpuaccount`).
        self.cpu = CpuAccount(self.connection_id)
        self.name = name
        self.type_name = type_name or connection.type_name or type(connection).__name__
        self._bus = bus
        self._clock = clock
        self._admission = admission
        # Driver-call deadlines, shared manager-wide: cheaper than
        # asyncio.timeout() per health check and poll (see edgelink._deadline).
        self._deadlines = deadlines if deadlines is not None else DeadlineWheel()
        self._data_sink = data_sink
        self._poll = tuple(poll)
        self._watch = {rule.tag: rule for rule in watch}
        self._watch_counts: dict[str, int] = {}
        self._extra_checks = extra_checks
        self._on_health_change = on_health_change
        self._on_health_checked = on_health_checked
        self._on_link_down = on_link_down
        #: Told of backoff waits and returns (the manager's fleet recovery).
        self._observer = observer
        #: The connection's endpoints when it has alternates (failover), else None.
        self._endpoints = endpoints
        if endpoints is not None:
            endpoints.attach(self)
        #: Tags whose last report was bad with a reason: the next one is not repeated.
        #: Made with the first (most links of a fleet never report a bad tag).
        self._bad_tags: set[str] | None = None
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
        self._lost: asyncio.Future[Lost] | None = None
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
    def health_failures(self) -> int:
        """Health checks failed in a row on the current link (0 after one passes)."""
        return self._health_failures

    @property
    def identity(self) -> str | None:
        """The device identity the driver reported when the link last came up (None: none)."""
        return self._identity

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

    def overdue(self, now: float) -> list[str]:
        """Return the roles whose driver call overran its deadline at monotonic ``now``."""
        return [role for role, deadline in self._busy.items() if now > deadline]

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

    def emit_event(self, event_type: str, **data: Any) -> None:
        """Emit an event the driver raised (`Connection.emit_event`). Thread-safe."""
        self._on_loop(functools.partial(self._emit, event_type, **data))

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
            if bad_tags is None:
                bad_tags = self._bad_tags = set()
            elif tag in bad_tags:
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

    def on_good_values(self, flat: Sequence[Any], ts: float | None = None) -> None:
        """Good values of one read, flat (``tag, value, tag, value, ...``), read at ``ts``.

        The batch form of `on_data` for an isolated driver's child, which reads
        its poll groups itself (`edgelink.isolation`). Thread-safe.
        """
        self._on_loop(self._handle_good, zip(flat[::2], flat[1::2], strict=True), ts)

    def _handle_good(self, values: Iterable[tuple[str, Any]], ts: float | None = None) -> None:
        """Pass on the good values of one read (a poll batch), stamped alike.

        What `_handle_data` does for each ``(tag, value)`` with quality good,
        with the clock read once for the batch: the values came in one answer
        (at ``ts``, if the reader says when).
        """
        now = self._clock.time() if ts is None else ts
        self._last_data_at = now
        self._last_data_mono = self._clock.monotonic()
        bad_tags = self._bad_tags
        watch = self._watch
        sink = self._data_sink
        cid = self.connection_id
        for tag, value in values:
            if bad_tags:
                bad_tags.discard(tag)
            if watch:
                rule = watch.get(tag)
                if rule is not None:
                    self._check_watch(rule, value)
            if sink is not None:
                try:
                    sink(cid, tag, value, "good", now, None)
                except Exception:
                    logger.exception("%s: data sink failed for %s", cid, tag)

    def on_activity(self) -> None:
        """The link showed life. Thread-safe."""
        self._last_data_mono = self._clock.monotonic()

    def on_tx_drop(self) -> None:
        """A frame broke mid-way: reconnect at once on the fast path. Thread-safe."""
        self._on_loop(self._handle_tx_drop)

    def _handle_tx_drop(self) -> None:
        self._emit(EventType.TX_DROP_DETECTED)
        self._fast_requested = True
        self._lose(Lost(Reason.TX_DROP, fast=True))

    def on_lost(self, exc: BaseException | None) -> None:
        """The driver noticed its link is gone. Thread-safe."""
        self._on_loop(self._handle_lost, exc)

    def _handle_lost(self, exc: BaseException | None) -> None:
        reason = Reason.LOST if exc is None else classify(exc).reason
        if reason in (Reason.CONNECT_FAILED, Reason.ERROR, Reason.LOST):
            # The driver saw its open link end; "connect_failed" would mislead.
            reason = Reason.CONNECTION_LOST
        self._lose(Lost(reason, exc))

    def report_failure(self, exc: BaseException) -> None:
        """A request on the link failed with ``exc`` (from `execute_with_retry`)."""
        verdict = classify(exc)
        if verdict.action is Action.TIMEOUT:
            # A request that timed out leaves a request/response stream out of
            # step: treat it as a dropped frame.
            self._handle_tx_drop()
        elif verdict.action is Action.RECONNECT:
            self._lose(Lost(verdict.reason, exc))

    def reconnect(self, *, fast_path: bool = True, reason: str = Reason.ADMIN_RECONNECT) -> None:
        """Drop the link and reconnect now (or cut a backoff wait short)."""
        self._fast_requested = fast_path
        if self._lost is not None and not self._lost.done():
            self._lose(Lost(reason, fast=fast_path))
        elif self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def wake(self) -> bool:
        """Cut the wait before the next connect attempt short; never drops a link.

        What a sibling's recovery calls (`edgelink.supervisor.fleet`): the
        attempt that follows is an ordinary one, counted once if it fails.

        Returns:
            True if a wait was running and is now cut short.
        """
        fut = self._wake
        if fut is None or fut.done():
            return False
        fut.set_result(None)
        return True

    def failback(self) -> None:
        """Drop the link and connect again at once (to the preferred endpoint, failover asked).

        The link is closed before the next attempt: never two links at once.
        """
        self.reconnect(fast_path=True, reason=Reason.FAILBACK)

    @property
    def endpoints(self) -> Endpoints | None:
        """The connection's endpoints when it has alternates (`edgelink.supervisor.failover`)."""
        return self._endpoints

    def _lose(self, lost: Lost) -> None:
        fut = self._lost
        if fut is not None and not fut.done():
            fut.set_result(lost)

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
        self._bad_tags = None  # the next link reports its bad tags once again
        if self._observer is not None:
            self._observer.on_link_down(self, reason)
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
