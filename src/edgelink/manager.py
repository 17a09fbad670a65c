"""ConnectionManager: the registry of supervised connections and their lifecycle.

It owns one `Supervisor` per connection, the `EventBus`, the manager-wide
connect admission (``max_concurrent_connects``), the thread pool for blocking
drivers, and the supervisor watchdog that restarts a connection whose task
died or got stuck. `execute_with_retry` is how everything else (the router,
the API, user code) talks to a device without caring whether the link is up
right now.

It also owns one `Router` (`ConnectionManager.router`): every datapoint a
driver reports goes through it, its connection writes go through
`execute_with_retry`, and its spam protection suspends a connection that
reports more than ``spam_max_pps`` datapoints per second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from os import PathLike
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

from pydantic import ValidationError

from edgelink._deadline import DeadlineWheel
from edgelink._tasks import cancel_and_wait
from edgelink.appcontext import context_with
from edgelink.clock import Clock, SystemClock
from edgelink.config import (
    ConfigDiff,
    ConnectionSpec,
    GatewayConfig,
    build_spec,
    diff_specs,
    load_config,
)
from edgelink.connection import AnyConnection, SyncConnection
from edgelink.errors import (
    ConfigError,
    ConnectionLostError,
    classify,
)
from edgelink.events import (
    Event,
    EventBus,
    EventCallback,
    EventType,
    Unsubscribe,
    make_event,
)
from edgelink.gcpolicy import GcPolicy, GcState, resolve_gc_policy
from edgelink.isolation import IsolationSpec, build_isolated
from edgelink.lifecycle import Service
from edgelink.looplag import LoopLagMonitor
from edgelink.registry import DriverRegistry, RegistrableClass
from edgelink.router import Router
from edgelink.router.datapoint import QUALITY_REASON, QUALITY_SINCE
from edgelink.router.targets import WriteNowait
from edgelink.settings import ManagerSettings
from edgelink.state import ConnectionState, Health, Reason
from edgelink.supervisor import RESTING, PollSpec, Supervisor, WatchRule
from edgelink.supervisor.failover import (
    Endpoint,
    Endpoints,
    check_endpoints,
    endpoint_configs,
    endpoint_label,
    make_probe,
)
from edgelink.supervisor.fleet import FleetRecovery, recovery_endpoint, recovery_group_key
from edgelink.supervisor.specs import LinkObservers

if TYPE_CHECKING:
    from edgelink.pool import ConnectionPool

__all__ = [
    "LIVE_SETTINGS",
    "ConnectionManager",
    "DataListener",
    "HealthCheckListener",
    "HealthMonitor",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Least seconds between two ``loop_lag`` events (stalls between are counted).
LAG_EVENT_INTERVAL = 10.0
#: How often the freeze waits another ``settle`` for connections still connecting.
GC_SETTLE_TRIES = 6

#: ``listener(connection_id, tag, value, quality, ts)``: called for every datapoint.
DataListener = Callable[[str, str, Any, str, float], None]
StateCallback = Callable[[str, Any], Awaitable[None] | None]
#: ``listener(connection_id, latency_s, ok)``: called after every health check.
HealthCheckListener = Callable[[str, float, bool], None]


#: States in which a supervisor stopped trying: a wait for its link ends there.
_GIVEN_UP: Final = (ConnectionState.SUSPENDED, ConnectionState.ERROR)


async def _wait_for_link(
    sup: Supervisor, timeout: float, up: Coroutine[Any, Any, None]
) -> str | None:
    """Await ``up`` (a link coming up) for at most ``timeout`` s; None if it came.

    The wait ends early when the supervisor enters a state it gives up in
    (suspended after its attempts, error): a caller waiting for the link then
    hears so at once, not after its whole timeout. A state the supervisor is
    already in does not end it (a suspended connection's cooldown probe may
    still bring the link).

    Returns:
        None when the link came up, else why not, for an error message.
    """
    waits = [asyncio.ensure_future(up)]
    waits += [
        asyncio.ensure_future(sup.wait_for_state(state))
        for state in _GIVEN_UP
        if sup.state is not state
    ]
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    if waits[0] in done:
        return None
    if done:
        return f"gave up: the connection is {sup.state} ({sup.reason})"
    return f"not connected within {timeout:g} s"


class HealthMonitor:
    """Custom health checks and state callbacks (the optimization guide's API).

    Example:
        monitor = manager.get_health_monitor()
        monitor.register_health_check("plc_1", check_ident)       # async () -> bool
        monitor.register_state_callback("plc_1", on_change)       # (id, new_state_or_health)
    """

    def __init__(self, manager: ConnectionManager) -> None:
        self._manager = manager
        self._checks: dict[str, list[Callable[[], Awaitable[bool]]]] = {}

    def register_health_check(
        self, connection_id: str, check: Callable[[], Awaitable[bool]]
    ) -> Unsubscribe:
        """Add ``check`` to the connection's health checks (all must pass).

        Returns:
            A function that removes the check again.
        """
        self._checks.setdefault(connection_id, []).append(check)

        def remove() -> None:
            checks = self._checks.get(connection_id, [])
            if check in checks:
                checks.remove(check)

        return remove

    def checks_for(self, connection_id: str) -> Sequence[Callable[[], Awaitable[bool]]]:
        """Return the custom checks registered for a connection."""
        return tuple(self._checks.get(connection_id, ()))

    def register_state_callback(self, connection_id: str, callback: StateCallback) -> Unsubscribe:
        """Call ``callback(connection_id, new)`` on every state or health change.

        ``new`` is a `ConnectionState` for a state change and a `Health` for a
        health change. ``connection_id`` may be ``"*"`` for every connection.
        The callback may be sync or async; it runs isolated like any event callback.
        """

        def pick(ev: Event) -> tuple[str, Any] | None:
            if connection_id not in ("*", ev.connection_id) or ev.connection_id is None:
                return None
            new = str(ev.data.get("new"))
            value: Any = ConnectionState(new) if ev.type == "state_change" else Health(new)
            return ev.connection_id, value

        handler: EventCallback
        if inspect.iscoroutinefunction(callback):

            async def handler_async(ev: Event) -> None:
                picked = pick(ev)
                if picked is not None:
                    await callback(*picked)

            handler = handler_async
        else:

            def handler_sync(ev: Event) -> None:
                picked = pick(ev)
                if picked is not None:
                    callback(*picked)

            handler = handler_sync
        offs = [
            self._manager.on_event("state_change", handler),
            self._manager.on_event("health_change", handler),
        ]

        def unsubscribe() -> None:
            for off in offs:
                off()

        return unsubscribe

    async def check_now(self, connection_id: str) -> bool:
        """Run one health check of a connected connection now; return whether it passed.

        A check that failed is False even while the link stays up (degraded,
        below ``health_check_failures``); a slow one that answered is True.
        """
        sup = self._manager._supervisor(connection_id)
        if sup.state is not ConnectionState.CONNECTED:
            return False
        lost = await sup.check_health()
        if lost is not None:
            sup._lose(lost)
            return False
        return sup.health_failures == 0 and sup.health is not Health.UNHEALTHY


class ConnectionManager(Service):
    """Supervises many device connections.

    Example:
        async with ConnectionManager.from_config("config/connections.json") as manager:
            manager.on_event("connected", lambda ev: print(ev.connection_id))
            value = await manager.execute_with_retry("plc_1", lambda c: c.read("MAIN.temp"))
            print(manager.get_status("plc_1"))

    Args:
        clock: The clock every wait goes through (tests pass a ManualClock).
        registry: Driver types; a fresh one with the built-ins and plugins by default.
        context: Passed to every driver (the seed's ``app_context``); by default
            an `AppContext` where this manager is ``connection_manager``.
        gc_policy: ``"fleet"`` (or a `GcPolicy`) freezes the fleet's long-lived
            objects out of the garbage collector once it is up and after each
            reload (see `edgelink.gcpolicy`); off by default, since the
            collector is process-wide.
        **settings: Defaults of DESIGN section 3 plus ``max_connections``,
            ``max_concurrent_connects``, ``watchdog_interval``, ``sync_workers``.

    Raises:
        ConfigError: if a setting is invalid.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        registry: DriverRegistry | None = None,
        context: Any = None,
        gc_policy: GcPolicy | str | None = None,
        **settings: Any,
    ) -> None:
        try:
            self.settings = ManagerSettings(**settings)
        except ValidationError as exc:
            first = exc.errors()[0]
            path = "settings." + ".".join(str(p) for p in first["loc"])
            raise ConfigError(first["msg"], path=path) from None
        self.clock: Clock = clock or SystemClock()
        self.registry = registry or DriverRegistry()
        #: The seed's ``app_context``: an `AppContext` naming this manager
        #: ``connection_manager`` unless the caller passed a context of its own.
        self.context = context_with(context, "connection_manager", self)
        self._bus = EventBus()
        self._sups: dict[str, Supervisor] = {}
        self._specs: dict[str, ConnectionSpec] = {}
        #: Datapoint metadata of connections with failover: the endpoint of the current link.
        self._endpoint_meta: dict[str, dict[str, Any]] = {}
        self._data_listeners: list[DataListener] = []
        self._health_listeners: list[HealthCheckListener] = []
        self._health_monitor = HealthMonitor(self)
        self._admission = asyncio.Semaphore(self.settings.max_concurrent_connects)
        # Fleet-aware recovery (docs/recovery.md): a link that comes back wakes
        # the siblings of its recovery group that wait out a backoff.
        self._fleet = FleetRecovery(
            self.clock,
            rate=self.settings.fleet_wake_rate,
            window=self.settings.fleet_wake_window,
            holdoff=self.settings.fleet_wake_holdoff,
            probe_interval=self.settings.fleet_probe_interval,
            on_wake=self._on_fleet_wake,
        )
        self._executor: ThreadPoolExecutor | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._restart_tasks: set[asyncio.Task[None]] = set()
        self._pool: ConnectionPool | None = None
        # Request deadlines: asyncio.timeout() per request would cost more than
        # the rest of execute_with_retry (see edgelink._deadline).
        self._deadlines = DeadlineWheel()
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._router = Router(
            clock=self.clock,
            writer=self._write_for_router,
            direct_writer=self._direct_write_for_router,
        )
        # One bound method each for every supervisor, not one per connection:
        # each would be another object the garbage collector tracks per link.
        self._data_sink = self._on_data
        self._health_change_cb = self._on_health_change
        self._health_checked_cb = self._on_health_checked
        self._spam_cb = self._on_spam
        self._link_down_cb = self._on_link_down
        self._lag = LoopLagMonitor(
            interval=self.settings.loop_lag_interval,
            threshold=self.settings.loop_lag_threshold,
            on_stall=self._on_loop_stall,
        )
        self._lag_reported = 0
        self._lag_event_at = float("-inf")
        try:
            policy = resolve_gc_policy(gc_policy)
        except ValueError as exc:
            raise ConfigError(str(exc), path="gc_policy") from None
        self._gc = GcState(policy) if policy is not None else None
        self._gc_timer: asyncio.TimerHandle | None = None

    @classmethod
    def from_config(
        cls,
        source: str | PathLike[str] | Mapping[str, Any],
        *,
        clock: Clock | None = None,
        registry: DriverRegistry | None = None,
        context: Any = None,
        gc_policy: GcPolicy | str | None = None,
    ) -> Self:
        """Build a manager from a ``connections.json``/YAML path or a dict (DESIGN section 6).

        Nothing starts until `start` (or ``async with``).

        Raises:
            ConfigError: naming the file, JSON path and reason, for any bad input.
        """
        config = load_config(source)
        manager = cls(
            clock=clock,
            registry=registry,
            context=context,
            gc_policy=gc_policy,
            **config.settings.model_dump(),
        )
        try:
            manager._check_specs(config.specs().values())
        except ConfigError as exc:
            # A driver's own validation knows no file: name the one read.
            if isinstance(source, str | PathLike):
                raise exc.in_file(source) from None
            raise
        for spec in config.specs().values():
            manager._add_spec(spec)
        return manager

    def register_connection_type(self, type_name: str, cls: RegistrableClass) -> None:
        """Register a driver class under a type name (a custom connection in a few lines)."""
        self.registry.register(type_name, cls)

    def _executor_for_sync(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.sync_workers, thread_name_prefix="edgelink-sync"
            )
        return self._executor

    def check_config(self, source: str | PathLike[str] | Mapping[str, Any]) -> None:
        """Validate a config as `reload` would (every driver config too), changing nothing.

        Raises:
            ConfigError: naming the path and the reason of the first problem.
        """
        self._check_specs(load_config(source).specs().values())

    def _check_specs(self, specs: Any) -> None:
        """Instantiate each spec's driver once, so a bad one fails before anything changes."""
        for spec in specs:
            self._make_driver(spec)

    def _create_driver(
        self, spec: ConnectionSpec, config: Mapping[str, Any], entry: int | None = None
    ) -> AnyConnection:
        """Build the driver for ``config``; errors name ``connections.<id>.…``.

        ``entry``: the index in ``endpoints`` that ``config`` was merged from;
        its keys are named there (``endpoints[1].port``) instead of in ``config``.
        """
        where = f"connections.{spec.connection_id}"
        own = spec.endpoints[entry].keys() if entry is not None else ()

        def located(path: str | None) -> str:
            if not path:
                return where
            key = path.removeprefix("config.").split(".", 1)[0].split("[", 1)[0]
            if path.startswith("config.") and key in own:
                return f"{where}.endpoints[{entry}].{path.removeprefix('config.')}"
            return f"{where}.{path}"

        isolation = self._isolation_of(spec)
        try:
            if isolation is not None:
                return build_isolated(
                    spec.connection_id,
                    config,
                    self.context,
                    driver_class=self.registry.get(spec.type),
                    isolation=isolation,
                    poll=[(g.tags, g.interval) for g in spec.poll]
                    if _child_polls(isolation)
                    else (),
                    request_timeout=spec.settings.request_timeout,
                )
            return self.registry.create(spec.connection_id, spec.type, config, self.context)
        except ConfigError as exc:
            # A driver's config model reports every bad key: keep them all.
            errors = [(located(p), m) for p, m in exc.errors]
            raise ConfigError(
                exc.message,
                file=exc.file,
                path=located(exc.path),
                errors=errors,
                connection_id=spec.connection_id,
            ) from exc

    def _make_driver(self, spec: ConnectionSpec) -> AnyConnection:
        where = f"connections.{spec.connection_id}"
        configs = endpoint_configs(spec.config, spec.endpoints)
        driver = self._create_driver(spec, configs[0], 0 if spec.endpoints else None)
        if spec.endpoints:
            check_endpoints(
                spec.connection_id, spec.type, spec.endpoints, type(driver).endpoint_fields, configs
            )
            for i in range(1, len(configs)):
                # Built once (no I/O) so that an alternate is checked as fully as the config.
                self._create_driver(spec, configs[i], i)
        # Polled and watched tags are checked by the driver now, so a mistyped
        # tag is a config error, not a bad datapoint every interval.
        tag_paths = [
            (f"{where}.poll[{i}].tags[{j}]", tag)
            for i, group in enumerate(spec.poll)
            for j, tag in enumerate(group.tags)
        ] + [(f"{where}.watch[{i}].tag", w.tag) for i, w in enumerate(spec.watch)]
        for path, tag in tag_paths:
            try:
                driver.check_tag(tag)
            except ValueError as exc:
                message = exc.message if isinstance(exc, ConfigError) else str(exc)
                raise ConfigError(message, path=path, connection_id=spec.connection_id) from exc
        return driver

    def _isolation_of(self, spec: ConnectionSpec) -> IsolationSpec | None:
        """The connection's own isolation, else its type's (a plugin manifest's), else None."""
        if spec.isolation is not None:
            return spec.isolation
        default = self.registry.isolation_of(spec.type)
        return default if isinstance(default, IsolationSpec) else None

    def _add_spec(self, spec: ConnectionSpec) -> AnyConnection:
        cid = spec.connection_id
        if cid in self._sups:
            raise ConfigError(f"connection {cid!r} already exists", path=f"connections.{cid}")
        limit = self.settings.max_connections
        if limit is not None and len(self._sups) >= limit:
            raise ConfigError(
                f"max_connections ({limit}) reached; cannot add {cid!r}",
                path=f"connections.{cid}",
            )
        driver = self._make_driver(spec)
        endpoints = self._endpoints_for(spec, driver)
        sup = Supervisor(
            driver,
            spec.settings,
            bus=self._bus,
            clock=self.clock,
            name=spec.name,
            type_name=spec.type,
            admission=self._admission,
            executor=self._executor_for_sync() if _is_sync(driver) else None,
            data_sink=self._data_sink,
            # An isolated driver's child may read the poll groups itself (fewer round trips).
            poll=[]
            if _child_polls(self._isolation_of(spec))
            else [PollSpec(tuple(g.tags), g.interval) for g in spec.poll],
            watch=[
                WatchRule(
                    w.tag, w.below, w.above, w.warning_after, w.critical_after, w.health_check
                )
                for w in spec.watch
            ],
            extra_checks=functools.partial(self._health_monitor.checks_for, cid),
            on_health_change=self._health_change_cb,
            on_health_checked=self._health_checked_cb,
            deadlines=self._deadlines,
            on_link_down=self._link_down_cb,
            observer=self._fleet if endpoints is None else LinkObservers(self._fleet, endpoints),
            endpoints=endpoints,
        )
        self._join_fleet(cid, spec, driver.cfg, driver.config)
        self._sups[cid] = sup
        self._specs[cid] = spec
        self._router.register_connection(
            cid, spam_max_pps=spec.settings.spam_max_pps, on_spam=self._spam_cb
        )
        if self._started and spec.enabled:
            sup.start()
        return driver

    def _join_fleet(
        self, cid: str, spec: ConnectionSpec, cfg: Any, config: Mapping[str, Any]
    ) -> None:
        """Put a connection in the recovery group of its (active) endpoint."""
        settings = spec.settings
        self._fleet.join(
            cid,
            recovery_group_key(
                recovery_endpoint(cfg, config),
                enabled=settings.fleet_recovery,
                group=settings.recovery_group,
                scope=settings.recovery_scope,
                subnet_prefix=settings.recovery_subnet_prefix,
            ),
        )

    def _endpoints_for(self, spec: ConnectionSpec, driver: AnyConnection) -> Endpoints | None:
        """Return the failover state of a connection with alternate endpoints, else None."""
        configs = endpoint_configs(spec.config, spec.endpoints)
        if len(configs) < 2:
            return None
        cid = spec.connection_id
        executor = self._executor_for_sync() if _is_sync(driver) else None
        preferred = {**configs[0], **type(driver).probe_overrides}

        def regroup(eps: Endpoints) -> None:
            # Fleet recovery groups by the endpoint the connection tries now.
            # (The driver is re-pointed only before the next attempt: read the config.)
            self._join_fleet(cid, spec, None, eps.active_endpoint.config)
            self._endpoint_meta[cid] = eps.link_metadata

        eps = Endpoints(
            cid,
            [
                Endpoint(i, endpoint_label({**entry, **config}, i), config)
                for i, (entry, config) in enumerate(zip(spec.endpoints, configs, strict=True))
            ],
            spec.settings,
            clock=self.clock,
            probe=make_probe(
                lambda: self.registry.create(cid, spec.type, preferred, self.context),
                executor,
                timeout=spec.settings.connect_timeout,
            ),
            on_active=regroup,
        )
        self._endpoint_meta[cid] = eps.link_metadata
        return eps

    def add_connection(
        self,
        connection_id: str,
        type: str,
        config: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        enabled: bool = True,
        settings: Mapping[str, Any] | None = None,
        poll: Sequence[Mapping[str, Any]] | None = None,
        watch: Sequence[Mapping[str, Any]] | None = None,
        endpoints: Sequence[Mapping[str, Any]] | None = None,
        isolation: str | Mapping[str, Any] | None = None,
    ) -> AnyConnection:
        """Add a connection; it starts at once if the manager runs and it is enabled.

        ``endpoints``: the preferred endpoint first, then alternates, each with
        the config fields that differ (docs/failover.md). ``isolation``:
        ``"process"`` or an object with limits runs the driver in a child
        process (docs/isolation.md); the driver object is then a
        `edgelink.isolation.ProcessConnection`.

        Returns:
            The driver object.

        Raises:
            ConfigError: for a duplicate id, an unknown type, bad settings or bad config.
        """
        spec = build_spec(
            connection_id,
            {
                "type": type,
                "name": name,
                "enabled": enabled,
                "config": dict(config or {}),
                "settings": dict(settings or {}),
                "poll": list(poll or []),
                "watch": list(watch or []),
                "endpoints": [dict(e) for e in endpoints or []],
                **(
                    {"isolation": isolation if isinstance(isolation, str) else dict(isolation)}
                    if isolation is not None
                    else {}
                ),
            },
            self.settings.connection_defaults(),
        )
        return self._add_spec(spec)

    async def remove_connection(self, connection_id: str) -> None:
        """Stop a connection and forget it.

        Raises:
            KeyError: for an unknown id.
        """
        sup = self._supervisor(connection_id)
        await sup.stop(reason=Reason.REMOVED)
        sup.connection.attach(None)
        self._sups.pop(connection_id, None)
        self._specs.pop(connection_id, None)
        self._endpoint_meta.pop(connection_id, None)
        self._fleet.leave(connection_id)
        self._router.unregister_connection(connection_id)

    async def start(self) -> None:
        """Start every enabled connection and the supervisor watchdog (idempotent)."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._bus.bind(self._loop)
        self._started = True
        self._arm_leak_warning()
        for cid, sup in self._sups.items():
            if self._specs[cid].enabled:
                sup.start()
        self._watchdog_task = self._loop.create_task(
            self._run_watchdog(), name="edgelink.manager.watchdog"
        )
        self._lag.start()
        if self._gc is not None:
            self._gc.install()
            self._schedule_gc_settle()

    async def stop(self) -> None:
        """Close every connection and end every task the manager started (idempotent)."""
        if not self._started:
            return
        self._started = False
        self._disarm_leak_warning()
        self._lag.stop()
        if self._gc_timer is not None:
            self._gc_timer.cancel()
            self._gc_timer = None
        if self._gc is not None:
            self._gc.uninstall()
        task, self._watchdog_task = self._watchdog_task, None
        if task is not None:
            await cancel_and_wait(task)
        for restart in list(self._restart_tasks):
            restart.cancel()
        await asyncio.gather(*self._restart_tasks, return_exceptions=True)
        # Pending writes would only meet closing links now.
        await self._router.aclose()
        await asyncio.gather(*(sup.stop(reason=Reason.SHUTDOWN) for sup in self._sups.values()))
        if self._pool is not None:
            await self._pool.aclose()
        self._fleet.close()
        await self._bus.aclose()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False, cancel_futures=True)

    async def start_connection(self, connection_id: str) -> None:
        """Start (or re-enable) one connection."""
        sup = self._supervisor(connection_id)
        if not self._started:
            raise RuntimeError("the manager is not started")
        self._router.reset_spam(connection_id)
        if sup.state in (ConnectionState.ERROR, ConnectionState.SUSPENDED):
            await sup.resume()
        else:
            sup.start()

    async def stop_connection(self, connection_id: str) -> None:
        """Stop one connection gracefully; it stays stopped until started."""
        await self._supervisor(connection_id).stop(reason=Reason.ADMIN_STOP)

    async def restart_connection(self, connection_id: str) -> None:
        """Stop and start one connection with a fresh attempt counter."""
        sup = self._supervisor(connection_id)
        self._router.reset_spam(connection_id)
        await sup.restart(reason=Reason.ADMIN_RESTART)

    async def kill_connection(self, connection_id: str) -> None:
        """Stop one connection at once, giving its driver no time to close politely."""
        await self._supervisor(connection_id).stop(reason=Reason.KILLED, graceful=False)

    async def resume(self, connection_id: str) -> None:
        """Bring a suspended (or failed) connection back; also re-arms its spam protection."""
        sup = self._supervisor(connection_id)
        self._router.reset_spam(connection_id)
        await sup.resume()

    async def release_quarantine(self, connection_id: str, tag: str | None = None) -> list[str]:
        """Poll quarantined tags of a connection again (all, or ``tag``); return those released.

        Raises:
            KeyError: for an unknown connection, or a ``tag`` that is not quarantined.
        """
        return self._supervisor(connection_id).release_quarantine(tag)

    @property
    def router(self) -> Router:
        """The manager's router: every datapoint drivers report goes through it."""
        return self._router

    def _supervisor(self, connection_id: str) -> Supervisor:
        try:
            return self._sups[connection_id]
        except KeyError:
            raise KeyError(f"unknown connection {connection_id!r}") from None

    def get_supervisor(self, connection_id: str) -> Supervisor:
        """Return the supervisor of a connection.

        Raises:
            KeyError: for an unknown id.
        """
        return self._supervisor(connection_id)

    def get_connection(self, connection_id: str) -> AnyConnection | None:
        """Return the driver object of a connection, or None if there is none."""
        sup = self._sups.get(connection_id)
        return sup.connection if sup is not None else None

    @property
    def connections(self) -> dict[str, AnyConnection]:
        """Every connection's driver by id (a copy)."""
        return {cid: sup.connection for cid, sup in self._sups.items()}

    def get_state(self, connection_id: str) -> ConnectionState:
        """Return the state of one connection."""
        return self._supervisor(connection_id).state

    def get_status(self, connection_id: str | None = None) -> dict[str, Any]:
        """Return the status dict of one connection, or of all by id."""
        if connection_id is not None:
            return self._supervisor(connection_id).status_dict()
        return {cid: sup.status_dict() for cid, sup in self._sups.items()}

    def get_spec(self, connection_id: str) -> ConnectionSpec:
        """Return the resolved config of one connection."""
        self._supervisor(connection_id)
        return self._specs[connection_id]

    def __len__(self) -> int:
        return len(self._sups)

    def __contains__(self, connection_id: object) -> bool:
        return connection_id in self._sups

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for sup in self._sups.values():
            counts[sup.state] = counts.get(sup.state, 0) + 1
        states = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        return f"<ConnectionManager connections={len(self._sups)} {states}>".replace(" >", ">")

    def on_event(self, event_type: str, callback: EventCallback) -> Unsubscribe:
        """Subscribe to an event type (``"*"`` = all); returns the unsubscribe function."""
        return self._bus.on(event_type, callback)

    @property
    def events(self) -> EventBus:
        """The event bus."""
        return self._bus

    def on_data(self, listener: DataListener) -> Unsubscribe:
        """Call ``listener(connection_id, tag, value, quality, ts)`` for every datapoint.

        Listeners run on the event loop, in order; one that raises is logged and skipped.
        """
        self._data_listeners = [*self._data_listeners, listener]

        def remove() -> None:
            self._data_listeners = [x for x in self._data_listeners if x is not listener]

        return remove

    def _on_data(
        self,
        connection_id: str,
        tag: str,
        value: Any,
        quality: str,
        ts: float,
        reason: str | None = None,
    ) -> None:
        metadata = None if reason is None else {QUALITY_REASON: reason, QUALITY_SINCE: ts}
        if self._endpoint_meta:
            # Failover: the endpoint the value came from, one shared dict per link.
            endpoint = self._endpoint_meta.get(connection_id)
            if endpoint is not None:
                metadata = endpoint if metadata is None else {**endpoint, **metadata}
        if not self._router.route_data(connection_id, tag, value, metadata, quality=quality, ts=ts):
            return  # spam protection dropped it
        for listener in self._data_listeners:
            try:
                listener(connection_id, tag, value, quality, ts)
            except Exception:
                logger.exception("data listener %r failed", listener)

    def _on_link_down(self, connection_id: str, reason: str) -> None:
        # The one place where a lost, stopped, disabled, removed or panicked
        # link's last values become stale: the supervisor calls it where it
        # emits ``disconnected`` (once per outage, not per reconnect attempt).
        marked = self._router.mark_stale(connection_id, reason)
        if marked:
            logger.debug("%s: %d values marked stale (%s)", connection_id, marked, reason)

    def on_health_check(self, listener: HealthCheckListener) -> Unsubscribe:
        """Call ``listener(connection_id, latency_s, ok)`` after every health check that ran.

        For metrics (a latency histogram). Runs on the event loop, inline: keep it cheap.
        """
        self._health_listeners = [*self._health_listeners, listener]

        def remove() -> None:
            self._health_listeners = [x for x in self._health_listeners if x is not listener]

        return remove

    def _on_health_checked(self, connection_id: str, latency: float, ok: bool) -> None:
        for listener in self._health_listeners:
            try:
                listener(connection_id, latency, ok)
            except Exception:
                logger.exception("health check listener %r failed", listener)

    async def _write_for_router(self, connection_id: str, tag: str, value: Any) -> None:
        """The router's writer: a connection write with the retries of execute_with_retry."""
        await self.execute_with_retry(connection_id, lambda c: c.write(tag, value))

    def _direct_write_for_router(self, connection_id: str) -> WriteNowait | None:
        """The router's direct writer: a connected async driver's ``write_nowait``, else None."""
        sup = self._sups.get(connection_id)
        if sup is None or sup.state is not ConnectionState.CONNECTED:
            return None
        driver = sup.adapter
        if driver.is_sync:
            return None
        write: WriteNowait | None = getattr(driver.conn, "write_nowait", None)
        return write

    def _on_spam(self, connection_id: str, info: dict[str, Any]) -> None:
        """Spam protection tripped (the router drops the data already): suspend the connection."""
        loop = self._loop
        if loop is None or not self._started:
            return
        task = loop.create_task(
            self._suspend_for_spam(connection_id, info), name=f"edgelink[{connection_id}].spam"
        )
        self._restart_tasks.add(task)
        task.add_done_callback(self._restart_tasks.discard)

    async def _suspend_for_spam(self, connection_id: str, info: dict[str, Any]) -> None:
        sup = self._sups.get(connection_id)
        if sup is None:
            return
        # Checked under the supervisor's lifecycle lock: a resume() that came
        # first has re-armed the guard, and then there is nothing to do.
        suspended = await sup.suspend(
            Reason.SPAM, only_if=lambda: self._router.is_spam_blocked(connection_id), **info
        )
        if suspended:
            self._bus.emit(
                make_event(
                    EventType.SPAM_SUSPENDED,
                    connection_id,
                    self.clock.time(),
                    state=str(sup.state),
                    attempt=sup.reconnect_attempts,
                    connection=sup.connection,
                    **info,
                )
            )

    def _on_health_change(self, connection_id: str, health: Health) -> None:
        if self._bus.wants("health_change"):
            sup = self._sups.get(connection_id)
            self._bus.emit(
                make_event(
                    EventType.HEALTH_CHANGE,
                    connection_id,
                    self.clock.time(),
                    state=str(sup.state) if sup else None,
                    new=str(health),
                )
            )

    async def wait_for_state(
        self,
        connection_id: str,
        state: ConnectionState | str,
        timeout: float | None = None,
    ) -> None:
        """Return when the connection is in ``state`` (or enters it).

        Raises:
            TimeoutError: if it does not within ``timeout`` seconds (real time).
            ValueError: for an unknown state name.
        """
        target = ConnectionState(state)
        sup = self._supervisor(connection_id)
        async with asyncio.timeout(timeout):
            await sup.wait_for_state(target)

    async def wait_for_link(
        self, connection_id: str, timeout: float, *, newer_than: int | None = None
    ) -> None:
        """Return once the connection's link is up (a link after number ``newer_than``).

        Raises:
            ConnectionLostError: the supervisor gave up meanwhile (suspended
                after its attempts, or an error), at once, or ``timeout``
                seconds (real time) passed.
            KeyError: for an unknown connection id.
        """
        sup = self._supervisor(connection_id)
        up = sup.wait_connected() if newer_than is None else sup.wait_for_generation(newer_than + 1)
        outcome = await _wait_for_link(sup, timeout, up)
        if outcome is not None:
            raise ConnectionLostError(
                f"{outcome} ({sup.state}, {sup.last_error})", connection_id=connection_id
            )

    async def execute_with_retry(
        self,
        connection_id: str,
        op: Callable[[Any], Awaitable[T] | T],
        *,
        retries: int | None = None,
        timeout: float | None = None,
    ) -> T:
        """Run ``op(connection)``; on a transient failure wait for the reconnect and retry.

        Args:
            connection_id: The connection to use.
            op: Called with the driver; may return a value or an awaitable. A
                blocking driver's op runs in a worker thread.
            retries: Retries after transient failures (default 3).
            timeout: Per attempt, and the longest wait for the link to come
                back (default: the connection's ``request_timeout``).

        Raises:
            ConnectionLostError: when the link is down and does not come back in
                time, or the retries are used up; carries the cause.
            DeviceError, DeviceSleepError, PermanentError, ConfigError: as
                raised, never retried. Errors of ``op`` that are not link
                errors propagate as they are.
            KeyError: for an unknown connection id.
        """
        sup = self._supervisor(connection_id)
        driver = sup.adapter
        deadlines = self._deadlines
        retries = 3 if retries is None else retries
        per_call = timeout if timeout is not None else sup.settings.request_timeout
        failures = 0
        while True:
            if sup.state is not ConnectionState.CONNECTED:
                await self._await_link(sup, per_call, failures)
            generation = sup.link_generation
            # The hot path: arm/disarm rather than a `with` block, and an async
            # driver's op called right here, not through DriverAdapter.call.
            deadline = deadlines.arm(per_call)
            try:
                if driver.is_sync:
                    result = await driver.call(op)
                else:
                    result = op(driver.conn)
                    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                        result = await result
                return result  # type: ignore[no-any-return]
            except asyncio.CancelledError:
                if not deadlines.disarm(deadline, cancelled=True):
                    raise
                error: Exception = TimeoutError(f"no answer within {per_call:g} s")
            except Exception as exc:
                # Only a broken link is worth a retry on the next one; a device's
                # "no", a sleep, a permanent error or a bug propagate as they are.
                if not classify(exc).breaks_link:
                    raise
                error = exc
            finally:
                deadlines.disarm(deadline)
            failures += 1
            sup.report_failure(error)
            if failures > retries:
                raise ConnectionLostError(
                    f"gave up after {failures} attempts: {error}",
                    connection_id=connection_id,
                    cause=error,
                ) from error
            # Wait for a new link, not the broken one still marked connected.
            outcome = await _wait_for_link(sup, per_call, sup.wait_for_generation(generation + 1))
            if outcome is not None:
                raise ConnectionLostError(
                    f"{outcome} after: {error}", connection_id=connection_id, cause=error
                ) from error

    async def _await_link(self, sup: Supervisor, timeout: float, failures: int) -> None:
        state = sup.state
        if state in RESTING and not (state is ConnectionState.SUSPENDED and sup.is_running()):
            raise ConnectionLostError(
                f"connection is {state} ({sup.reason})", connection_id=sup.connection_id
            )
        outcome = await _wait_for_link(sup, timeout, sup.wait_connected())
        if outcome is not None:
            raise ConnectionLostError(
                f"{outcome} ({sup.state}, {sup.last_error})", connection_id=sup.connection_id
            )

    def mark_tx_drop(self, connection_id: str) -> None:
        """Say a frame to this connection broke mid-way: fast-path reconnect."""
        self._supervisor(connection_id).on_tx_drop()

    async def safe_reconnect(self, connection_id: str, fast_path: bool = True) -> None:
        """Drop the link and reconnect now (fast path: no backoff for the first attempt)."""
        self._supervisor(connection_id).reconnect(fast_path=fast_path)
        await asyncio.sleep(0)

    async def reconnect_connection(self, connection_id: str) -> str:
        """Bring one connection's link back now, whatever it is doing (an admin's reconnect).

        The seed's Disconnect/Reconnect pair: a stopped connection is started,
        a failed or suspended one resumed, one waiting out a backoff retries at
        once, and a connected one drops its link and reconnects (fast path).

        Returns:
            What was done: ``started``, ``resumed`` or ``reconnecting``.
        """
        sup = self._supervisor(connection_id)
        if sup.desired == "stopped" or not sup.is_running():
            await self.start_connection(connection_id)
            return "started"
        if sup.state in (ConnectionState.ERROR, ConnectionState.SUSPENDED):
            await self.resume(connection_id)
            return "resumed"
        await self.safe_reconnect(connection_id, fast_path=True)
        return "reconnecting"

    def record_activity(self, connection_id: str) -> None:
        """Feed the data watchdog of a connection without a datapoint."""
        self._supervisor(connection_id).on_activity()

    async def reload(self, source: str | PathLike[str] | Mapping[str, Any]) -> ConfigDiff:
        """Apply a new config: only what changed is touched.

        Added connections start, removed ones stop, changed ones restart with
        the new config; unchanged ones are not touched.

        Raises:
            ConfigError: for a bad config; then nothing changes.
        """
        config: GatewayConfig = load_config(source)
        new_specs = config.specs()
        diff = diff_specs(self._specs, new_specs)
        self._check_specs(new_specs[cid] for cid in (*diff.added, *diff.changed))
        limit = config.settings.max_connections
        if limit is not None and len(new_specs) > limit:
            raise ConfigError(
                f"{len(new_specs)} connections exceed max_connections ({limit})",
                path="settings.max_connections",
            )
        self.settings = config.settings
        self._fleet.configure(
            rate=config.settings.fleet_wake_rate,
            window=config.settings.fleet_wake_window,
            holdoff=config.settings.fleet_wake_holdoff,
            probe_interval=config.settings.fleet_probe_interval,
        )
        for cid in diff.removed:
            await self.remove_connection(cid)
        retuned = [cid for cid in diff.changed if _live_change(self._specs[cid], new_specs[cid])]
        for cid in retuned:
            self._retune(new_specs[cid])
        for cid in diff.changed:
            if cid not in retuned:
                await self.remove_connection(cid)
                self._add_spec(new_specs[cid])
        for cid in diff.added:
            self._add_spec(new_specs[cid])
        if diff.added or diff.changed or diff.removed:
            self._schedule_gc_settle()
        return dataclasses.replace(diff, retuned=retuned) if retuned else diff

    def _retune(self, spec: ConnectionSpec) -> None:
        """Apply a spec whose only changes are `LIVE_SETTINGS` to a running connection."""
        cid = spec.connection_id
        self._specs[cid] = spec
        self._sups[cid].settings = spec.settings
        self._router.set_spam_limit(cid, spec.settings.spam_max_pps, self._spam_cb)

    def loop_lag(self) -> dict[str, Any]:
        """Event-loop lag: recent p50/p99, maximum and stalls since start (milliseconds)."""
        return self._lag.snapshot()

    @property
    def lag_monitor(self) -> LoopLagMonitor:
        """The loop-lag sampler (its histogram feeds ``/metrics``)."""
        return self._lag

    def runtime_status(self) -> dict[str, Any]:
        """The process as the manager sees it: loop lag, GC policy, fleet recovery."""
        return {
            "loop_lag": self._lag.snapshot(),
            "gc": self._gc.snapshot() if self._gc is not None else None,
            "fleet_recovery": self._fleet.snapshot(),
        }

    @property
    def fleet(self) -> FleetRecovery:
        """The recovery groups and what their wakes did (docs/recovery.md)."""
        return self._fleet

    def _on_fleet_wake(self, record: dict[str, Any]) -> None:
        self._bus.emit(make_event(EventType.FLEET_WAKE, None, self.clock.time(), **record))

    def _on_loop_stall(self, lag: float) -> None:
        # One event per quiet period: a loop that stalls every second must not
        # also flood the event log; the count says how many were folded in.
        now = self.clock.monotonic()
        if now - self._lag_event_at < LAG_EVENT_INTERVAL:
            return
        stalls = self._lag.stalls - self._lag_reported
        self._lag_reported = self._lag.stalls
        self._lag_event_at = now
        self._bus.emit(
            make_event(
                EventType.LOOP_LAG,
                None,
                self.clock.time(),
                lag_ms=round(lag * 1000, 1),
                threshold_ms=round(self._lag.threshold * 1000, 1),
                stalls=stalls,
            )
        )

    def _schedule_gc_settle(self, tries: int = 0) -> None:
        """Freeze the collector once the fleet has settled (the policy's ``settle`` delay)."""
        if self._gc is None or self._loop is None or not self._started:
            return
        if self._gc_timer is not None:
            self._gc_timer.cancel()
        self._gc_timer = self._loop.call_later(self._gc.policy.settle, self._gc_settle, tries)

    def _gc_settle(self, tries: int) -> None:
        self._gc_timer = None
        if self._gc is None:
            return
        connecting = ConnectionState.CONNECTING
        if tries < GC_SETTLE_TRIES and any(s.state is connecting for s in self._sups.values()):
            self._schedule_gc_settle(tries + 1)
            return
        self._gc.settled()

    def get_health_monitor(self) -> HealthMonitor:
        """Return the health monitor (custom checks, state callbacks)."""
        return self._health_monitor

    def get_connection_pool(self) -> ConnectionPool:
        """Return the manager's pool of on-demand connections (same driver registry)."""
        if self._pool is None:
            from edgelink.pool import ConnectionPool

            self._pool = ConnectionPool(
                max_size=self.settings.max_connections or 10,
                registry=self.registry,
                connect_timeout=self.settings.connect_timeout,
                clock=self.clock,
                executor=self._executor_for_sync(),
                context=self.context,
            )
        return self._pool

    async def _run_watchdog(self) -> None:
        """Restart any connection whose task died or whose driver call overran."""
        while True:
            await self.clock.sleep(self.settings.watchdog_interval)
            self.check_supervisors()

    def check_supervisors(self) -> list[str]:
        """Look at every supervisor once; restart dead or stuck ones. Returns their ids."""
        now = self.clock.monotonic()
        restarted: list[str] = []
        for cid, sup in list(self._sups.items()):
            if sup.desired != "running":
                continue
            cause: str | None = None
            detail: str | None = None
            task = sup.task
            if task is None or task.done():
                if task is not None and not task.cancelled() and task.exception() is not None:
                    cause, detail = "task_died", repr(task.exception())
                elif sup.crashed is not None:
                    cause, detail = "task_died", repr(sup.crashed)
                elif sup.state not in RESTING:
                    cause, detail = "task_ended", f"main task ended in state {sup.state}"
            else:
                overdue = sup.overdue(now)
                if overdue:
                    cause, detail = "stuck", f"driver call overran its deadline: {overdue}"
                    sup.abandon()
            if cause is None:
                continue
            restarted.append(cid)
            sup.restarts += 1
            logger.error("%s: restarting supervisor (%s: %s)", cid, cause, detail)
            self._bus.emit(
                make_event(
                    EventType.SUPERVISOR_RESTARTED,
                    cid,
                    self.clock.time(),
                    state=str(sup.state),
                    attempt=sup.reconnect_attempts,
                    connection=sup.connection,
                    cause=cause,
                    detail=detail,
                    restarts=sup.restarts,
                )
            )
            task_ = asyncio.get_running_loop().create_task(
                sup.restart(reason=Reason.SUPERVISOR_RESTARTED),
                name=f"edgelink[{cid}].restart",
            )
            self._restart_tasks.add(task_)
            task_.add_done_callback(self._restart_tasks.discard)
        return restarted


#: Connection settings a reload applies to a running connection, without a restart.
LIVE_SETTINGS = frozenset({"spam_max_pps"})


def _live_change(old: ConnectionSpec, new: ConnectionSpec) -> bool:
    """Return whether ``new`` differs from ``old`` only in `LIVE_SETTINGS`."""
    live = {key: getattr(new.settings, key) for key in LIVE_SETTINGS}
    if old.settings.model_copy(update=live) != new.settings:
        return False
    return dataclasses.replace(new, settings=old.settings) == old


def _is_sync(driver: AnyConnection) -> bool:
    return isinstance(driver, SyncConnection)


def _child_polls(isolation: IsolationSpec | None) -> bool:
    """True if an isolated connection's child reads its poll groups (not the supervisor)."""
    return isolation is not None and isolation.poll == "child"
