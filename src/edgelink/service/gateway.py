"""`Gateway`: a config folder assembled into a running gateway (``edgelink run``).

It owns the `ConnectionManager` (and through it the router, which it loads
with ``routing.json`` and the webhook targets of ``edgelink.json``), the
SQLite event log, the MQTT bridge and the folder watch. Hot reload touches
only what changed: `ConnectionManager.reload` restarts changed connections,
and a bad file is reported (log, ``config_error`` event, `Gateway.status`)
while the running config stays. Panic stops every device connection and
keeps the API up until an explicit `Gateway.recover`.

The gateway does not know the admin API: `edgelink.api` (and the web UI)
read and act through its public methods (`Gateway.connections`,
`Gateway.routes`, `Gateway.query_events`, `Gateway.instance_action`,
`Gateway.panic`, `Gateway.subscribe_events`...), and the command line starts
the API server beside it (`edgelink.api.server`).

Example:
    gateway = Gateway("config/")
    await gateway.start()          # raises ConfigError for a bad folder
    ...
    await gateway.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgelink import __version__
from edgelink._documents import write_atomically
from edgelink.appcontext import context_with
from edgelink.backoff import Backoff
from edgelink.bridge.mqtt import MqttBridge, bridge_will
from edgelink.clock import Clock
from edgelink.config import load_config, read_document
from edgelink.connection import AnyConnection, Connection, SyncConnection
from edgelink.cpuaccount import CpuAccounting
from edgelink.drivers.ble.scanner import close_scanner
from edgelink.drivers.mqtt import MqttConnection
from edgelink.errors import ConfigError, DeviceError, EdgelinkError, RouteError
from edgelink.events import Event, EventCallback, EventType, make_event
from edgelink.isolation.safe import SentryReporter
from edgelink.manager import ConnectionManager
from edgelink.plugins import PluginManager
from edgelink.redact import collect_secrets, remember_secrets
from edgelink.registry import DriverRegistry
from edgelink.router import check_routes
from edgelink.router.address import resolve_endpoint
from edgelink.router.datapoint import DataPoint
from edgelink.router.dataspace import DataSubscriber
from edgelink.router.engine import Router, RouteTableDiff
from edgelink.router.expr import ExprLimits
from edgelink.router.schema import load_routing
from edgelink.router.trial import try_route
from edgelink.service.audit import SYSTEM, Auditor
from edgelink.service.config import ConfigFolder, ServiceSettings, load_service_settings
from edgelink.service.lock import FolderLock
from edgelink.service.resources import CpuRates, ProcessResources, instance_resources
from edgelink.service.token import kept_secret, resolve_token
from edgelink.settings import ConnectionSettings
from edgelink.state import Reason
from edgelink.store import Database, ErrorLogHandler, EventLog, UplinkBuffer
from edgelink.store.audit import AuditLog

#: The routing table of a folder without routing.json.
NO_ROUTES: dict[str, Any] = {"version": "1.0", "routes": []}

__all__ = [
    "INSTANCE_ACTIONS",
    "ActionRefusedError",
    "Gateway",
    "LoadedFolder",
    "LogClosedError",
    "UnknownConnectionError",
    "compile_routes",
    "connections_document",
    "load_folder",
    "with_bridge_will",
]

logger = logging.getLogger(__name__)

#: Changes to the folder arriving within this window are applied together.
RELOAD_DEBOUNCE_S = 0.3
#: How long `stop` gives everything before it stops waiting.
STOP_BUDGET_S = 4.0

#: What an admin can ask of one connection (`Gateway.instance_action`).
INSTANCE_ACTIONS = ("start", "stop", "restart", "kill", "resume", "disconnect", "reconnect")
#: Actions that would bring a device link up: refused while in panic.
_STARTING = frozenset({"start", "restart", "resume", "reconnect"})
#: Actions that take a link down: kept through `Gateway.recover`.
_STOPPING = frozenset({"stop", "kill", "disconnect"})


#: Seconds after start before the first scheduled plugin update check.
PLUGIN_CHECK_DELAY_S = 60.0
#: What `Gateway.plugin_action` does.
PLUGIN_ACTIONS = ("enable", "disable", "check", "update", "install")


class ActionRefusedError(EdgelinkError):
    """An admin action that cannot be done now (e.g. a start during panic); the API answers 409."""


class UnknownConnectionError(EdgelinkError, LookupError):
    """An admin action named a connection that does not exist; the API answers 404."""


class LogClosedError(EdgelinkError):
    """The event or audit log asked for is not open (before start); the API answers 503."""


class Gateway:
    """A gateway running from one config folder.

    Args:
        config_dir: The folder with ``connections.json`` (and optionally
            ``routing.json`` and ``edgelink.json``; YAML too).
        clock: The clock for the manager (tests pass a ManualClock).
        registry: Driver types (default: built-ins and installed plugins).
        watch: Watch the folder and reload on changes.
        gc_policy: The manager's garbage-collection policy: the service runs a
            fleet, so ``"fleet"`` (freeze the long-lived objects once up and
            after each reload; see `edgelink.gcpolicy`) unless told ``"off"``.
        cpu_accounting: Measure each connection's CPU on the event loop
            (`edgelink.cpuaccount`; ``cpu_percent`` of `instance_resources`).
    """

    def __init__(
        self,
        config_dir: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        registry: DriverRegistry | None = None,
        watch: bool = True,
        gc_policy: str | None = "fleet",
        cpu_accounting: bool = True,
    ) -> None:
        self.config_dir = Path(config_dir)
        self._gc_policy = gc_policy
        self._stop_lock = asyncio.Lock()
        self._clock = clock
        self._registry = registry
        #: The config folder's plugins (``<config>/plugins``), made on start.
        self.plugins: PluginManager = PluginManager(Path(config_dir) / "plugins", DriverRegistry())
        self._watch = watch
        self.folder: ConfigFolder | None = None
        self.settings = ServiceSettings()
        self._manager: ConnectionManager | None = None
        self.db: Database | None = None
        self.events: EventLog | None = None
        self.bridge: MqttBridge | None = None
        self.webhooks: dict[str, Any] = {}
        self.token = ""
        self.token_origin = ""
        #: Where the admin API listens: set by `edgelink.api.server` while it serves.
        self.api_address: tuple[str, int] | None = None
        #: Where the web UI is served at that address (``"/"``): set by `edgelink.ui` while mounted.
        self.ui_path: str | None = None
        self.started_at: float | None = None
        self.panicked = False
        self.panic_info: dict[str, Any] | None = None
        self._panic_stopped: list[str] = []
        #: What admins ordered per connection since the panic ("stopped" or "running").
        self._panic_orders: dict[str, str] = {}
        self.audit: AuditLog | None = None
        self.auditor = Auditor()
        self.last_reload: dict[str, Any] | None = None
        self.config_errors: dict[str, str] = {}
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        #: Stop and reload requests from signals, kept until they end.
        self._requests: set[asyncio.Task[None]] = set()
        #: Awaited by `stop` before the connections stop (`stop_with`).
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._stopped = asyncio.Event()
        self._unsubscribe: list[Any] = []
        self._lock: FolderLock | None = None
        self._resources = ProcessResources()
        self._cpu_rates = CpuRates()
        self._cpu_accounting = cpu_accounting
        #: The loop the CPU accounting was switched on for (None: off).
        self._accounting_loop: asyncio.AbstractEventLoop | None = None
        #: Where guarded instance code reports its errors (``sentry`` in edgelink.json), or None.
        self.error_reporter: SentryReporter | None = None
        self._ui_secret: str | None = None
        #: The last spam trip per connection (the ``spam_suspended`` event's figures).
        self._spam_trips: dict[str, dict[str, Any]] = {}

    @property
    def manager(self) -> ConnectionManager:
        """The connection manager (after `start`).

        Raises:
            RuntimeError: before `start`.
        """
        if self._manager is None:
            raise RuntimeError("the gateway is not started")
        return self._manager

    @property
    def name(self) -> str:
        """The gateway's name for people: ``ui.name`` of ``edgelink.json``, else the folder's."""
        return self.settings.ui.name or self.config_dir.resolve().name

    def state_counts(self) -> dict[str, int]:
        """Return how many connections are in each state (``{"connected": 3, ...}``)."""
        counts: dict[str, int] = {}
        if self._manager is not None:
            for status in self._manager.get_status().values():
                counts[status["status"]] = counts.get(status["status"], 0) + 1
        return counts

    def panic_state(self) -> dict[str, Any] | None:
        """Return the panic in force (``at``, ``reason``, ``by``, ``stopped``), or None."""
        return dict(self.panic_info or {}) if self.panicked else None

    def instance_resources(self) -> dict[str, Any]:
        """Return the seed's resource dict per connection and the process totals beside them.

        See `edgelink.service.resources`: what cannot be attributed to one
        in-process connection is None there, never estimated.
        """
        now = time.time()
        manager = self.manager
        statuses = self.connections()
        measured = CpuAccounting.active()
        shares: dict[str, float | None] = {}
        totals: dict[str, int] = {}
        if measured:
            totals = {
                s["connection_id"]: manager.get_supervisor(s["connection_id"]).cpu.ns
                for s in statuses
            }
            shares = self._cpu_rates.sample(totals, time.monotonic())
        instances = [
            instance_resources(
                status,
                now,
                cpu_percent=shares.get(status["connection_id"]),
                cpu_seconds=round(totals[status["connection_id"]] / 1e9, 6) if measured else None,
            )
            for status in statuses
        ]
        for figures in instances:
            # An isolated connection measures its own child process (edgelink.isolation).
            conn = manager.get_connection(str(figures.get("connection_id")))
            own = getattr(conn, "resources", None)
            if callable(own):
                figures.update(own())
        process = self._resources.sample()
        process["network_packets_sent"] = sum(i["network_packets_sent"] or 0 for i in instances)
        process["network_packets_recv"] = sum(i["network_packets_recv"] or 0 for i in instances)
        process["cpu_accounting"] = "event_loop" if measured else None
        return {"process": process, "instances": instances}

    def process_resources(self) -> dict[str, Any]:
        """Return the ``process`` part of `instance_resources` without the per-connection dicts.

        For readers of the whole process only (the service page): no status
        is built and no connection's CPU window is sampled.
        """
        process = self._resources.sample()
        stats = [conn.stats for conn in self.manager.connections.values()]
        process["network_packets_sent"] = sum(st.packets_sent for st in stats)
        process["network_packets_recv"] = sum(st.packets_received for st in stats)
        process["cpu_accounting"] = "event_loop" if CpuAccounting.active() else None
        return process

    def spam_suspensions(self) -> list[dict[str, Any]]:
        """Return the connections suspended by spam protection now, by id.

        Each: ``connection_id``, ``name``, ``type``, ``rate_pps`` (the rate
        that tripped it: the datapoints of the window over the seconds they
        came in), ``limit_pps`` (the threshold then), ``threshold_pps`` (the
        connection's ``spam_max_pps`` now: an adjusted one shows here),
        ``suspended_at`` and ``last_activity`` (the last datapoint, epoch s).
        """
        manager = self._manager
        if manager is None:
            return []
        found = []
        for cid in sorted(self._spam_trips):
            if cid not in manager:
                del self._spam_trips[cid]
                continue
            status = manager.get_status(cid)
            if status["status"] != "suspended" or status["reason"] != Reason.SPAM:
                del self._spam_trips[cid]
                continue
            trip = self._spam_trips[cid]
            found.append(
                {
                    "connection_id": cid,
                    "name": status.get("name"),
                    "type": status["type"],
                    "status": status["status_code"],
                    "rate_pps": trip["rate_pps"],
                    "limit_pps": trip["limit_pps"],
                    "threshold_pps": manager.get_spec(cid).settings.spam_max_pps,
                    "suspended_at": trip["at"],
                    "last_activity": status.get("last_data_at") or trip["at"],
                }
            )
        return found

    def _on_spam_suspended(self, event: Event) -> None:
        cid = event.connection_id
        if cid is None:
            return
        data = event.data
        seconds = float(data.get("seconds") or 0.0)
        count = int(data.get("count") or 0)
        manager = self._manager
        if manager is not None and len(self._spam_trips) >= len(manager):
            for gone in [c for c in self._spam_trips if c not in manager]:
                del self._spam_trips[gone]
        self._spam_trips[cid] = {
            "at": event.ts,
            "limit_pps": data.get("limit_pps"),
            # ``count`` datapoints in ``seconds``: over the limit by definition.
            "rate_pps": round(count / seconds, 1) if seconds > 0 else None,
        }

    def ui_storage_secret(self) -> str:
        """Return the web UI's storage secret: ``ui.storage_secret``, else a kept 0600 file.

        The file (``ui.storage_secret_file`` in the config folder) is made on
        first use, so a gateway without the UI never writes it.

        Raises:
            RuntimeError: before `start`.
            OSError: if the file can be neither read nor written.
        """
        if self._ui_secret is None:
            configured = self.settings.ui.storage_secret
            if configured is not None:
                secret = configured.get_secret_value()
            else:
                if self.folder is None:
                    raise RuntimeError("the gateway is not started")
                secret, _origin = kept_secret(
                    self.folder.resolve(self.settings.ui.storage_secret_file)
                )
            remember_secrets(collect_secrets({"token": secret}))
            self._ui_secret = secret
        return self._ui_secret

    def status(self) -> dict[str, Any]:
        """Return the service's own status: uptime, panic, reload, config errors."""
        return {
            "config_dir": str(self.config_dir),
            "started_at": self.started_at,
            "uptime_s": time.time() - self.started_at if self.started_at else None,
            "connections": self.state_counts(),
            "panic": self.panic_state(),
            "last_reload": self.last_reload,
            "config_errors": dict(self.config_errors),
            "runtime": self._manager.runtime_status() if self._manager is not None else None,
            "audit": {"written": self.audit.written, "write_errors": self.audit.write_errors}
            if self.audit
            else None,
            "api": {"host": self.api_address[0], "port": self.api_address[1]}
            if self.api_address
            else None,
        }

    def __repr__(self) -> str:
        state = "panic" if self.panicked else ("running" if self.started_at else "stopped")
        return f"<Gateway {self.config_dir} {state}>"

    @property
    def current_manager(self) -> ConnectionManager | None:
        """The connection manager, or None before `start` (for readers that run any time)."""
        return self._manager

    def health(self) -> dict[str, Any]:
        """Return liveness: ``ok`` or ``panic``, the version and the uptime."""
        return {
            "status": "panic" if self.panicked else "ok",
            "version": __version__,
            "uptime_s": (time.time() - self.started_at) if self.started_at else None,
        }

    def connections(self) -> list[dict[str, Any]]:
        """Return every connection's status (DESIGN section 4)."""
        return list(self.manager.get_status().values())

    def connection(self, connection_id: str) -> dict[str, Any]:
        """Return one connection's status.

        Raises:
            UnknownConnectionError: for a connection that does not exist.
        """
        try:
            return self.manager.get_status(connection_id)
        except KeyError:
            raise UnknownConnectionError(
                f"unknown connection {connection_id!r}", connection_id=connection_id
            ) from None

    def routes(self) -> dict[str, Any]:
        """Return the route table as written, each route with its counters, and the totals."""
        router = self.manager.router
        return {"routes": router.routes_with_stats(), "stats": router.stats()}

    def route(self, route_id: str) -> dict[str, Any]:
        """Return one route as written, with its counters.

        Raises:
            KeyError: for an unknown route.
        """
        router = self.manager.router
        for spec in router.routes:
            if spec["id"] == route_id:
                return {**spec, "stats": router.route_stats(route_id)}
        raise KeyError(route_id)

    def check_routes(self, document: dict[str, Any]) -> int:
        """Compile a route table under the running caps, apply nothing; return its route count.

        Raises:
            RouteError: for a bad table or a missing ``routes`` key.
        """
        if "routes" not in document:
            raise RouteError("'routes' is required", path="routes")
        manager = self.manager
        return check_routes(document, clock=manager.clock, limits=manager.router.limits)

    def try_route(
        self, spec: dict[str, Any], address: str, value: Any, *, quality: str = "good"
    ) -> dict[str, Any]:
        """Run one route on a sample value under the running caps; nothing is sent.

        See `edgelink.router.trial.try_route` for the answer's keys.

        Raises:
            RouteError: for a route that does not validate or compile (path, position).
        """
        manager = self.manager
        return try_route(
            spec,
            address,
            value,
            limits=manager.router.limits,
            clock=manager.clock,
            quality=quality,
        )

    async def events_overview(self, now: float | None = None) -> dict[str, Any]:
        """Return the event log's errors counted per connection and type.

        Keys ``hour`` and ``day``: lists of ``{connection_id, type, level, count}``,
        most first, over the last hour and the last day.

        Raises:
            LogClosedError: before `start`.
        """
        if self.events is None:
            raise LogClosedError("the event log is not open")
        now = time.time() if now is None else now
        return {
            "hour": await self.events.counts(since=now - 3600.0),
            "day": await self.events.counts(since=now - 86400.0),
        }

    def data_children(self, prefix: str = "", limit: int | None = None) -> list[str]:
        """Return the data space's paths one level below ``prefix`` (segments and topic levels).

        With ``limit``, only the first ``limit`` of them (sorted); `data_child_count` says
        how many there are.
        """
        return self.manager.router.data.children(prefix, limit)

    def data_child_count(self, prefix: str = "") -> int:
        """Return how many paths are one level below ``prefix`` in the data space."""
        return self.manager.router.data.child_count(prefix)

    def data_has_children(self, path: str) -> bool:
        """Return whether the data space holds anything below ``path``."""
        return self.manager.router.data.has_children(path)

    def data_tree_version(self) -> int:
        """Return a number that grows whenever a path enters or leaves the data space's tree."""
        return self.manager.router.data.tree_version

    def data_writable(self, address: str) -> bool:
        """Return whether `write_point` can write ``address`` (a connection's tag it can write)."""
        manager = self.manager
        cid, tag = resolve_endpoint(address, manager)
        conn = manager.get_connection(cid) if cid is not None and tag else None
        return conn is not None and conn.can_write(tag)

    async def write_point(self, address: str, value: Any, *, who: str = SYSTEM) -> dict[str, Any]:
        """Write ``value`` to the device behind ``address``, audited; return the device's answer.

        ``address`` is ``<connection>.<tag>``; the write goes through
        `ConnectionManager.execute_with_retry`, as the bridge's ``/set`` does.
        The answer says how long the device took and, for a driver that
        reads from its device (not ``mqtt``, whose read is the last message),
        the value read back right after (``read_back``, or ``read_back_error``).

        Raises:
            UnknownConnectionError: no connection owns ``address``.
            ActionRefusedError: during panic.
            ValueError: the tag cannot be written (a read-only table, a driver without write).
            EdgelinkError: what the device or the link answered (refused, timed out, down).
        """
        manager = self.manager
        cid, tag = resolve_endpoint(address, manager)
        params = {"value": value}
        async with self.auditor.action(who, "write", address, params) as outcome:
            if cid is None or not tag:
                raise UnknownConnectionError(f"no connection owns the address {address!r}")
            if self.panicked:
                raise ActionRefusedError(
                    "the gateway is in panic: recover it first", connection_id=cid
                )
            conn = manager.get_connection(cid)
            if conn is None or not conn.can_write(tag):
                raise ValueError(f"{address!r} cannot be written (tag {tag!r} of {cid!r})")
            started = time.monotonic()
            await manager.execute_with_retry(cid, lambda c: c.write(tag, value))
            elapsed_ms = round((time.monotonic() - started) * 1000.0, 1)
            outcome["elapsed_ms"] = elapsed_ms
            answer: dict[str, Any] = {
                "ok": True,
                "address": address,
                "connection_id": cid,
                "tag": tag,
                "value": value,
                "elapsed_ms": elapsed_ms,
            }
            if not isinstance(conn, MqttConnection) and _reads_its_device(conn):
                try:
                    answer["read_back"] = await manager.execute_with_retry(
                        cid, lambda c: c.read(tag), retries=0
                    )
                except (EdgelinkError, TimeoutError) as exc:
                    answer["read_back_error"] = f"{type(exc).__name__}: {exc}"
                outcome["read_back"] = answer.get("read_back", answer.get("read_back_error"))
        logger.info("admin write %s = %r (by %s)", address, value, who)
        return answer

    def subscriptions(self, connection_id: str) -> list[dict[str, Any]]:
        """Return the subscription ledger of an ``mqtt`` connection, each entry with its origin.

        ``origin`` is ``config`` for a filter of the connection's
        ``config.subscribe`` and ``run time`` for one added by `add_subscription`.

        Raises:
            UnknownConnectionError: for a connection that does not exist.
            ValueError: for a connection that is not ``mqtt``.
        """
        conn = self._mqtt_connection(connection_id)
        configured = {item.topic for item in conn.cfg.subscribe}
        return [
            {**entry.as_dict(), "origin": "config" if entry.key in configured else "run time"}
            for entry in conn.subscriptions
        ]

    async def add_subscription(
        self, connection_id: str, topic_filter: str, *, qos: int | None = None, who: str = SYSTEM
    ) -> list[dict[str, Any]]:
        """Subscribe an ``mqtt`` connection to a topic filter at run time, audited.

        The filter joins the connection's subscription ledger: subscribed now
        if the link is up, again after every reconnect, until
        `remove_subscription` or until a config change rebuilds the
        connection (it is not written to ``connections.json``). Returns the ledger.

        Raises:
            UnknownConnectionError: for a connection that does not exist.
            ActionRefusedError: during panic.
            ValueError: for a connection that is not ``mqtt``, a bad filter or QoS.
        """
        params = {"filter": topic_filter, "qos": qos}
        async with self.auditor.action(who, "subscribe", connection_id, params):
            conn = self._mqtt_connection(connection_id)
            if self.panicked:
                raise ActionRefusedError(
                    "the gateway is in panic: recover it first", connection_id=connection_id
                )
            try:
                conn.subscribe(topic_filter, qos)
            except DeviceError as exc:
                raise ValueError(exc.message) from None
        logger.info("admin subscribe %s %r (by %s)", connection_id, topic_filter, who)
        return self.subscriptions(connection_id)

    async def remove_subscription(
        self, connection_id: str, topic_filter: str, *, who: str = SYSTEM
    ) -> list[dict[str, Any]]:
        """Unsubscribe an ``mqtt`` connection from a filter of its ledger, audited (also in panic).

        Returns the ledger.

        Raises:
            UnknownConnectionError: for a connection that does not exist.
            ValueError: for a connection that is not ``mqtt``.
            KeyError: for a filter that is not in the ledger.
        """
        async with self.auditor.action(who, "unsubscribe", connection_id, {"filter": topic_filter}):
            conn = self._mqtt_connection(connection_id)
            if topic_filter not in conn.subscriptions:
                raise KeyError(topic_filter)
            conn.unsubscribe(topic_filter)
        logger.info("admin unsubscribe %s %r (by %s)", connection_id, topic_filter, who)
        return self.subscriptions(connection_id)

    def _mqtt_connection(self, connection_id: str) -> MqttConnection:
        if connection_id not in self.manager:
            raise UnknownConnectionError(
                f"unknown connection {connection_id!r}", connection_id=connection_id
            )
        conn = self.manager.get_connection(connection_id)
        if not isinstance(conn, MqttConnection):
            kind = conn.type_name if conn is not None else "?"
            raise ValueError(
                f"connection {connection_id!r} is of type {kind!r}: only mqtt connections"
                " have topic subscriptions"
            )
        return conn

    def data_point(self, address: str) -> DataPoint | None:
        """Return the last datapoint at ``address``, or None."""
        return self.manager.router.data.get(address)

    def data_history(self, address: str) -> list[DataPoint]:
        """Return the kept datapoints at ``address``, oldest first."""
        return self.manager.router.data.history(address)

    def bridge_stats(self) -> dict[str, Any]:
        """Return the MQTT bridge's counters, or ``{"enabled": False}`` without a bridge."""
        if self.bridge is None:
            return {"enabled": False}
        return {"enabled": True, **self.bridge.stats()}

    async def bridge_dead_letters(self, limit: int = 100) -> dict[str, Any]:
        """Return the bridge's dead letters, newest first, with their totals."""
        bridge = self.bridge
        if bridge is None:
            return {"enabled": False, "dead_letters": []}
        await bridge.store_dead_letters()
        return {
            "enabled": True,
            "total": bridge.dead_letters.total,
            "dropped": bridge.dead_letters.dropped,
            "dead_letters": await bridge.dead_letters.recent(limit),
        }

    async def query_events(self, **filters: Any) -> list[dict[str, Any]]:
        """Return events and errors from the event log, newest first (see `EventLog.query`).

        Raises:
            LogClosedError: before `start`.
        """
        if self.events is None:
            raise LogClosedError("the event log is not open")
        return await self.events.query(**filters)

    async def query_audit(self, **filters: Any) -> list[dict[str, Any]]:
        """Return audit records, newest first (see `AuditLog.query`).

        Raises:
            LogClosedError: before `start`.
        """
        if self.audit is None:
            raise LogClosedError("the audit log is not open")
        return await self.audit.query(**filters)

    def subscribe_events(
        self, callback: EventCallback, event_type: str = "*"
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of ``event_type`` (``"*"`` = all).

        Returns:
            The unsubscribe function; `stop` unsubscribes what is left.
        """
        return self._until_stop(self.manager.on_event(event_type, callback))

    def subscribe_data(
        self, callback: DataSubscriber, pattern: str = "**", *, changes_only: bool = False
    ) -> Callable[[], None]:
        """Call ``callback(datapoint)`` for what the data space stores at ``pattern``.

        The data space, not the drivers: virtual addresses (``calc.*``) come too.

        Returns:
            The unsubscribe function; `stop` unsubscribes what is left.
        """
        off = self.manager.router.data.subscribe(pattern, callback, changes_only=changes_only)
        return self._until_stop(off)

    def subscribe_health_checks(
        self, callback: Callable[[str, float, bool], None]
    ) -> Callable[[], None]:
        """Call ``callback(connection_id, latency_s, ok)`` after every health check.

        Returns:
            The unsubscribe function; `stop` unsubscribes what is left.
        """
        return self._until_stop(self.manager.on_health_check(callback))

    def stop_with(self, close: Callable[[], Awaitable[None]]) -> None:
        """Have `stop` await ``close()`` first, within its budget, before the connections stop.

        The API server registers its own stop here, so that ``stop`` (SIGTERM)
        closes it before the devices, as one budget.
        """
        self._closers.append(close)

    def _until_stop(self, off: Callable[[], None]) -> Callable[[], None]:
        """Keep ``off`` for `stop`; return it made idempotent."""
        done = False

        def unsubscribe() -> None:
            nonlocal done
            if not done:
                done = True
                off()

        self._unsubscribe.append(unsubscribe)
        return unsubscribe

    async def start(self) -> None:
        """Lock the folder, load it and start everything.

        Raises:
            ConfigError: for a bad folder or file, or another gateway running
                from the folder (`FolderLock`); nothing is left running.
            RouteError: for a bad routing file.
        """
        folder = self.folder = ConfigFolder.find(self.config_dir)
        # Before anything is created or connected: a second gateway on this
        # folder must change nothing of the first's.
        self._lock = FolderLock(folder.root)
        self._lock.acquire()
        if self._cpu_accounting and self._accounting_loop is None:
            self._accounting_loop = asyncio.get_running_loop()
            CpuAccounting.install(self._accounting_loop)
        try:
            await self._start_locked(folder)
        except BaseException:
            await self.stop()
            raise

    async def _start_locked(self, folder: ConfigFolder) -> None:
        # Plugins first: the connection types they provide must be known when
        # connections.json is built.
        if self._registry is None:
            self._registry = DriverRegistry()
        plugins_dir = folder.root / "plugins"
        index = plugins_dir / "index.json"
        self.plugins = PluginManager(
            plugins_dir, self._registry, index=index if index.is_file() else None
        )
        await self.plugins.start()
        loaded = load_folder(
            folder, clock=self._clock, registry=self._registry, gc_policy=self._gc_policy
        )
        self.settings = loaded.settings
        sentry = self.settings.sentry
        if sentry.dsn is not None and self.error_reporter is None:
            try:
                self.error_reporter = SentryReporter(
                    sentry.dsn.get_secret_value(),
                    environment=sentry.environment,
                    sample_rate=sentry.sample_rate,
                )
            except ImportError as exc:
                raise ConfigError(str(exc), path="sentry.dsn") from None
        token_file = folder.resolve(self.settings.api.token_file)
        configured = self.settings.api.token
        try:
            self.token, self.token_origin = resolve_token(
                configured.get_secret_value() if configured else None, token_file
            )
        except ValueError as exc:
            raise ConfigError(
                str(exc), file=str(folder.service or folder.root), path="api.token"
            ) from None
        _remember_service_secrets(self.settings, self.token)
        manager = self._manager = loaded.manager
        # The seed's drivers find the gateway beside the manager (edgelink.appcontext).
        context_with(manager.context, "gateway", self)
        self._add_webhooks(manager)
        self._configure_router(manager)
        self.db = Database(folder.resolve(self.settings.storage.path))
        self.events = EventLog(
            self.db,
            max_rows=self.settings.storage.max_rows,
            max_age_s=self.settings.storage.max_age_s,
        )
        try:
            try:
                await self.events.start()
            except (OSError, sqlite3.Error) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                where = folder.resolve(self.settings.storage.path)
                raise _storage_error(
                    folder, f"cannot open the storage file {where}: {reason}"
                ) from None
            self.audit = AuditLog(
                self.db,
                max_rows=self.settings.storage.audit_max_rows,
                max_age_s=self.settings.storage.audit_max_age_s,
            )
            await self.audit.start()
            self.auditor = Auditor(self.audit)
            self._unsubscribe.append(manager.on_event("*", self._record_event))
            self._unsubscribe.append(
                manager.on_event(EventType.SPAM_SUSPENDED, self._on_spam_suspended)
            )
            handler = ErrorLogHandler(self.events, asyncio.get_running_loop())
            logging.getLogger("edgelink").addHandler(handler)
            self._unsubscribe.append(lambda: logging.getLogger("edgelink").removeHandler(handler))
            await manager.start()
            if self.settings.bridge.connection is not None:
                bridge = self.settings.bridge
                self.bridge = MqttBridge(
                    manager,
                    manager.router,
                    bridge,
                    UplinkBuffer(
                        self.db,
                        max_items=bridge.buffer.max_items,
                        max_age_s=bridge.buffer.max_age_s,
                    ),
                    on_event=self._emit,
                )
                await self.bridge.start()
            if self._watch:
                self._tasks.append(
                    asyncio.get_running_loop().create_task(
                        self._run_watch(), name="edgelink.service.watch"
                    )
                )
            if self.settings.plugins.index is not None:
                # plugins/index.json was read on start; edgelink.json names another index.
                self.plugins.use_index(
                    self.settings.plugins.index, folder.root, self.settings.plugins.index_file
                )
                self.plugins.discover()
            self._tasks.append(
                asyncio.get_running_loop().create_task(
                    self._run_plugin_checks(), name="edgelink.service.plugin_checks"
                )
            )
        except BaseException:
            await self.stop()
            raise
        self.started_at = time.time()
        logger.info("gateway started from %s: %d connections", folder.root, len(manager))

    async def stop(self) -> None:
        """Stop everything within about `STOP_BUDGET_S` seconds (idempotent).

        A second call while one runs (SIGTERM twice) waits for the first, so
        `run` never returns, and ends the loop, under a stop still closing the
        API and the devices.
        """
        async with self._stop_lock:
            await self._stop()

    async def _stop(self) -> None:
        for off in self._unsubscribe:
            off()
        self._unsubscribe.clear()
        tasks, self._tasks = self._tasks, []
        closers, self._closers = self._closers, []
        for task in tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_BUDGET_S):
                await asyncio.gather(*tasks, return_exceptions=True)
                bridge, self.bridge = self.bridge, None
                if bridge is not None:
                    await bridge.stop()
                for close in closers:
                    await close()
                if self._manager is not None:
                    await self._manager.stop()
                # The BLE browser's scan lingers after its last request: end it.
                await close_scanner()
                await self.plugins.disable_all()
        webhooks, self.webhooks = self.webhooks, {}
        for target in webhooks.values():
            with contextlib.suppress(Exception):
                await target.aclose()
        if self.events is not None:
            await self.events.aclose()
        if self.db is not None:
            await self.db.aclose()
        if self._lock is not None:
            self._lock.release()
        if self._accounting_loop is not None:
            CpuAccounting.uninstall(self._accounting_loop)
            self._accounting_loop = None
        self.started_at = None
        self._stopped.set()

    async def run(
        self,
        *,
        install_signals: bool = True,
        after_start: Callable[[Gateway], Awaitable[object]] | None = None,
        on_started: Callable[[Gateway], None] | None = None,
    ) -> None:
        """Start, then serve until SIGTERM/SIGINT (SIGHUP reloads), then stop.

        Args:
            install_signals: Handle SIGTERM, SIGINT and SIGHUP on the loop.
            after_start: Awaited once the gateway runs, before ``on_started``
                (the command line starts the API server here); if it raises,
                the gateway stops and the error propagates.
            on_started: Called once everything runs (e.g. to print the API address).
        """
        await self.start()
        if after_start is not None:
            try:
                await after_start(self)
            except BaseException:
                await self.stop()
                raise
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if install_signals:
            for sig, handler in (
                (signal.SIGTERM, self._request_stop),
                (signal.SIGINT, self._request_stop),
                (signal.SIGHUP, self._request_reload),
            ):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, handler)
                    installed.append(sig)
        # Only now say "running": a SIGTERM sent on reading that line must find
        # the handler in place (before, it could kill the process unstopped).
        if on_started is not None:
            on_started(self)
        try:
            await self._stopped.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.stop()

    def _request_stop(self) -> None:
        logger.info("stop requested")
        self._own_request(self.stop(), "edgelink.service.stop")

    async def _run_plugin_checks(self) -> None:
        """Fetch the plugin index's repository, then check for updates on the schedule.

        The first check runs `PLUGIN_CHECK_DELAY_S` after start, then every
        ``plugins.update_check_hours`` (0: never; on demand only). What a
        check finds is evented: ``plugin_update_available`` per plugin with a
        newer version, ``plugin_check_failed`` per plugin (or the index) that
        could not be checked. Nothing here stops the gateway.
        """
        plugins, clock = self.plugins, self.manager.clock
        try:
            await plugins.refresh_index()
            if plugins.index_error:
                self._emit(EventType.PLUGIN_CHECK_FAILED, plugin=None, error=plugins.index_error)
            hours = self.settings.plugins.update_check_hours
            if hours <= 0:
                return
            await clock.sleep(PLUGIN_CHECK_DELAY_S)
            while True:
                report = await plugins.check_all()
                for name, version in sorted(report["updates"].items()):
                    self._emit(EventType.PLUGIN_UPDATE_AVAILABLE, plugin=name, version=version)
                for name, error in sorted(report["errors"].items()):
                    self._emit(EventType.PLUGIN_CHECK_FAILED, plugin=name, error=error)
                await clock.sleep(hours * 3600.0)
                await plugins.refresh_index()
                if plugins.index_error:
                    self._emit(
                        EventType.PLUGIN_CHECK_FAILED, plugin=None, error=plugins.index_error
                    )
        except asyncio.CancelledError:
            raise
        except Exception:  # a check never takes the gateway down
            logger.exception("plugin update checks stopped")

    def _request_reload(self) -> None:
        logger.info("SIGHUP: reloading %s", self.config_dir)
        self._own_request(self._reload_logged(None), "edgelink.service.reload")

    def _own_request(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a signalled request in a task the gateway keeps until it ends; log its failure."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._requests.add(task)
        task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._requests.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("%s failed", task.get_name(), exc_info=exc)

    async def _reload_logged(self, kinds: set[str] | None) -> None:
        try:
            await self.reload(kinds)
        except Exception:
            logger.exception("reload failed")

    async def _record_event(self, event: Event) -> None:
        if self.events is not None:
            self.events.record(event)

    def _configure_router(self, manager: ConnectionManager) -> None:
        """Event quarantines; add the plugins' targets, now and when a plugin comes or goes.

        The caps were set from ``edgelink.json`` by `load_folder`.
        """
        manager.router.on_quarantine = lambda kind, info: self._emit(kind, **info)
        for endpoint_id, target in self.plugins.targets.items():
            self._plugin_target(endpoint_id, target)
        self.plugins.on_target = self._plugin_target

    def _plugin_target(self, endpoint_id: str, target: Any) -> None:
        """Add a plugin's router target to the running router, or remove it (None)."""
        manager = self._manager
        if manager is None:
            return  # added when the manager is built (`_configure_router`)
        if target is None:
            with contextlib.suppress(KeyError):
                manager.router.remove_target(endpoint_id)
            return
        try:
            manager.router.add_target(endpoint_id, target)
        except (ValueError, TypeError) as exc:
            logger.error("plugin target %s refused: %s", endpoint_id, exc)

    def _emit(self, event_type: str, **data: Any) -> None:
        if self._manager is not None:
            self._manager.events.emit(make_event(event_type, None, time.time(), **data))

    async def reload(self, kinds: set[str] | None = None, *, who: str = SYSTEM) -> dict[str, Any]:
        """Re-read the folder (see `_reload`); audited when ``who`` is a person or token."""
        params = {"kinds": sorted(kinds) if kinds else "all"}
        async with self.auditor.action(who, "reload", None, params) as outcome:
            report = await self._reload(kinds)
            failed = sorted(
                k for k, v in report.items() if isinstance(v, dict) and v.get("ok") is False
            )
            if failed:
                outcome["failed"] = failed
        return report

    async def _reload(self, kinds: set[str] | None = None) -> dict[str, Any]:
        """Re-read the folder (only ``kinds`` of files, or all) and apply what changed.

        A bad file is reported and changes nothing of its kind; good files of
        other kinds still apply. While in panic, connection changes wait for
        `recover` (which reloads).

        Returns:
            The report: per kind, ``ok`` with what changed or ``error`` with the reason.
        """
        async with self._reload_lock:
            folder = self.folder = ConfigFolder.find(self.config_dir)
            wanted = kinds or {"connections", "routing", "edgelink"}
            report: dict[str, Any] = {"at": time.time()}
            if "connections" in wanted:
                report["connections"] = await self._reload_connections(folder)
            if "routing" in wanted:
                report["routing"] = self._reload_routes(folder)
            if "edgelink" in wanted:
                report["edgelink"] = self._reload_service(folder)
            self.last_reload = report
            return report

    async def _reload_connections(self, folder: ConfigFolder) -> dict[str, Any]:
        if self.panicked:
            return {"deferred": "the gateway is in panic; recover applies the new config"}
        try:
            diff = await self.manager.reload(connections_document(folder, self.settings))
        except ConfigError as exc:
            return self._config_failed("connections", exc.in_file(folder.connections))
        self.config_errors.pop("connections", None)
        changes = {
            "added": list(diff.added),
            "removed": list(diff.removed),
            "changed": list(diff.changed),
        }
        self._emit(EventType.CONFIG_RELOADED, file=str(folder.connections), **changes)
        return {"ok": True, **changes}

    def _reload_routes(self, folder: ConfigFolder) -> dict[str, Any]:
        try:
            diff = compile_routes(self.manager.router, folder.routing or NO_ROUTES, self.settings)
        except RouteError as exc:
            return self._config_failed("routing", exc)
        self.config_errors.pop("routing", None)
        changes = {
            "added": list(diff.added),
            "removed": list(diff.removed),
            "changed": list(diff.changed),
        }
        self._emit(
            EventType.CONFIG_RELOADED, file=str(folder.routing or "(no routing.json)"), **changes
        )
        return {"ok": True, **changes}

    async def replace_routes(
        self, document: dict[str, Any], *, who: str = SYSTEM
    ) -> dict[str, Any]:
        """Apply a new route table and write it (see `_replace_routes`); audited.

        The ``routes`` key is required: an empty table must be sent explicitly
        (``{"routes": []}``), so a stray ``{}`` cannot delete every route.

        Raises:
            RouteError: for a bad table or a missing ``routes`` key; nothing changes.
        """
        routes = document.get("routes") if isinstance(document, dict) else None
        params = {"routes": len(routes) if isinstance(routes, list) else None}
        async with self.auditor.action(who, "routes_replace", "routing", params) as outcome:
            if not isinstance(document, dict) or "routes" not in document:
                raise RouteError(
                    "'routes' is required (send {\"routes\": []} for an empty table)",
                    path="routes",
                )
            report = await self._replace_routes(document)
            for key in ("added", "removed", "changed"):
                outcome[key] = report[key]
        return report

    async def _replace_routes(self, document: dict[str, Any]) -> dict[str, Any]:
        """Apply a new route table (atomically) and write it to the folder's routing file.

        Raises:
            RouteError: for a bad table; nothing changes, on disk or in the router.
        """
        async with self._reload_lock:
            diff = compile_routes(self.manager.router, document, self.settings)
            folder = self.folder = ConfigFolder.find(self.config_dir)
            path = folder.routing or folder.root / "routing.json"
            write_atomically(path, _dump_document(path, document))
            self.config_errors.pop("routing", None)
        changes = {
            "added": list(diff.added),
            "removed": list(diff.removed),
            "changed": list(diff.changed),
        }
        self._emit(EventType.CONFIG_RELOADED, file=str(path), **changes)
        return {"ok": True, "file": str(path), **changes}

    async def add_connection_entry(
        self, connection_id: str, entry: dict[str, Any], *, who: str = SYSTEM
    ) -> dict[str, Any]:
        """Add one connection to connections.json and start it (the BLE browser's Connect); audited.

        Raises:
            ActionRefusedError: during panic, or if the id is taken.
            ConfigError: for a bad entry (the path and the reason); nothing changes.
        """
        params = {"type": entry.get("type") if isinstance(entry, dict) else None}

        def add(conns: dict[str, Any]) -> None:
            if connection_id in conns:
                raise ActionRefusedError(f"a connection {connection_id!r} exists already")
            conns[connection_id] = entry

        async with self.auditor.action(who, "connection_add", connection_id, params):
            return await self._edit_connections(add)

    async def add_polled_tag(
        self, connection_id: str, tag: str, *, interval: float = 1.0, who: str = SYSTEM
    ) -> dict[str, Any]:
        """Poll ``tag`` of a connection from now on (the PLC symbol browser's Add); audited.

        The tag joins the connection's first poll group with the same
        ``interval`` in connections.json, or a new group; a tag polled
        already changes nothing. Applied like a hot reload: only that
        connection restarts.

        Raises:
            UnknownConnectionError: for an id not in connections.json.
            ActionRefusedError: during panic.
            ConfigError: for a bad tag or interval; nothing changes.
        """
        outcome: dict[str, Any] = {"already": False}

        def add(conns: dict[str, Any]) -> None:
            entry = conns.get(connection_id)
            if not isinstance(entry, dict):
                raise UnknownConnectionError(f"no connection {connection_id!r} in connections.json")
            groups = entry.setdefault("poll", [])
            if not isinstance(groups, list):
                raise ConfigError("'poll' must be a list", path=f"connections.{connection_id}.poll")
            for group in groups:
                if isinstance(group, dict) and tag in (group.get("tags") or []):
                    outcome["already"] = True
                    return
            for group in groups:
                if isinstance(group, dict) and group.get("interval", 1.0) == interval:
                    group.setdefault("tags", []).append(tag)
                    return
            groups.append({"tags": [tag], "interval": interval})

        params = {"tag": tag, "interval": interval}
        async with self.auditor.action(who, "poll_add", connection_id, params):
            report = await self._edit_connections(add)
        return {**report, **outcome}

    async def _edit_connections(self, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Change connections.json with ``edit(connections)``, validated, atomically, applied.

        The whole file is validated with the change (every driver config too)
        before a byte is written; then it is replaced atomically and applied
        like a hot reload (connections the change did not touch are not).

        Raises:
            ActionRefusedError: during panic.
            ConfigError: for a bad result (the path and the reason); nothing changes.
        """
        if self.panicked:
            raise ActionRefusedError("the gateway is in panic: recover first")
        async with self._reload_lock:
            folder = self.folder = ConfigFolder.find(self.config_dir)
            document = read_document(folder.connections)
            if not isinstance(document, dict):
                raise ConfigError("the top level must be an object", file=str(folder.connections))
            conns = document.setdefault("connections", {})
            if not isinstance(conns, dict):
                raise ConfigError("'connections' must be an object", file=str(folder.connections))
            edit(conns)
            self.manager.check_config(copy.deepcopy(document))
            write_atomically(folder.connections, _dump_document(folder.connections, document))
            return await self._reload_connections(folder)

    async def plugin_action(self, name: str, action: str, *, who: str = SYSTEM) -> dict[str, Any]:
        """Enable, disable, check, update or install a plugin; audited.

        Raises:
            KeyError: for an unknown plugin or action.
            ActionRefusedError: enable, update or install during panic.
            PluginError: with the reason (an update is rolled back first).
        """
        if action not in PLUGIN_ACTIONS:
            raise KeyError(f"unknown plugin action {action!r}; known: {', '.join(PLUGIN_ACTIONS)}")
        async with self.auditor.action(who, f"plugin_{action}", name):
            if self.panicked and action in ("enable", "update", "install"):
                raise ActionRefusedError("the gateway is in panic: recover first")
            plugins = self.plugins
            if action == "enable":
                return await plugins.enable(name)
            if action == "disable":
                return await plugins.disable(name)
            if action == "check":
                return await plugins.check_update(name)
            if action == "update":
                return await plugins.update(name)
            return await plugins.install(name)

    async def configure_plugin(
        self, name: str, config: dict[str, Any], *, who: str = SYSTEM
    ) -> dict[str, Any]:
        """Validate and apply a plugin's config (its config_schema); audited.

        Raises:
            KeyError: for an unknown plugin.
            ConfigError: naming the field and why; nothing changes.
        """
        async with self.auditor.action(who, "plugin_configure", name):
            return self.plugins.configure(name, config)

    async def ads_symbols(self, connection_id: str) -> list[dict[str, Any]]:
        """Upload an ``ads`` connection's symbol table (name, type, size, comment, where).

        Each entry: ``name``, ``type``, ``size``, ``comment``, ``index_group``, ``index_offset``.

        Raises:
            UnknownConnectionError: for an unknown id.
            ActionRefusedError: if the connection is not an ``ads`` one.
            ConnectionLostError: if the PLC is not connected (the cause says why).
        """
        try:
            spec = self.manager.get_spec(connection_id)
        except KeyError:
            raise UnknownConnectionError(f"no connection {connection_id!r}") from None
        if spec.type != "ads":
            raise ActionRefusedError(f"{connection_id!r} is a {spec.type} connection, not ads")
        symbols = await self.manager.execute_with_retry(
            connection_id, lambda conn: conn.list_symbols(), retries=0, timeout=10.0
        )
        return [symbol.as_dict() for symbol in symbols]

    def _add_webhooks(self, manager: ConnectionManager) -> None:
        from edgelink.bridge.webhook import WebhookTarget

        for name, hook in self.settings.webhooks.items():
            target = WebhookTarget(
                name,
                hook.url,
                headers=hook.headers,
                api_key=hook.api_key.get_secret_value() if hook.api_key else None,
                timeout=hook.timeout,
                retries=hook.retries,
                backoff=Backoff(
                    initial=hook.retry_delay,
                    max=max(10.0, hook.retry_delay),
                    max_attempts=None,
                ),
                on_failure=self._webhook_failed,
            )
            manager.router.add_target(f"webhook.{name}", target)
            self.webhooks[name] = target

    def _webhook_failed(self, name: str, error: str, dp: DataPoint) -> None:
        self._emit(EventType.WEBHOOK_FAILED, webhook=name, error=error, address=dp.address)
        if self.events is not None:
            self.events.record_error(
                "webhook_failed", f"webhook {name}: {error}", data={"address": dp.address}
            )

    def _reload_service(self, folder: ConfigFolder) -> dict[str, Any]:
        try:
            new = load_service_settings(folder.service)
        except ConfigError as exc:
            return self._config_failed("edgelink", exc)
        self.config_errors.pop("edgelink", None)
        _remember_service_secrets(new, self.token)
        if new == self.settings:
            return {"ok": True, "changed": False}
        # API address, token, storage and bridge are wired at start: say so
        # rather than half-apply them.
        return {"ok": True, "changed": True, "restart_required": True}

    def _config_failed(self, kind: str, exc: EdgelinkError) -> dict[str, Any]:
        text = str(exc)
        self.config_errors[kind] = text
        logger.error("config %s not applied, the running one stays: %s", kind, text)
        self._emit(EventType.CONFIG_ERROR, kind=kind, error=text)
        if self.events is not None:
            self.events.record_error("config_error", text, exc=exc, data={"kind": kind})
        return {"ok": False, "error": text}

    async def _run_watch(self) -> None:
        from watchfiles import awatch

        folder = self.folder
        assert folder is not None
        # Only the three config files pass the filter: the SQLite file (with
        # its -wal/-shm/-journal), the lock, the token and the temporary files
        # of atomic writes live in this folder too and change all the time.
        async for changes in awatch(
            folder.root,
            debounce=int(RELOAD_DEBOUNCE_S * 1000),
            watch_filter=lambda _change, path: folder.kind_of(path) is not None,
        ):
            kinds = {k for _, path in changes if (k := folder.kind_of(path)) is not None}
            if kinds:
                logger.info("config changed: %s", ", ".join(sorted(kinds)))
                await self._reload_logged(kinds)

    async def instance_action(
        self, connection_id: str, action: str, *, who: str = SYSTEM
    ) -> dict[str, Any]:
        """Do one of `INSTANCE_ACTIONS` to a connection, audited; return its brief status.

        ``reconnect`` brings the link back whatever it is doing (see
        `ConnectionManager.reconnect_connection`). While in panic, actions
        that would bring a link up are refused; stops are remembered so that
        `recover` keeps them.

        Raises:
            ValueError: for an action not in `INSTANCE_ACTIONS`.
            UnknownConnectionError: for a connection that does not exist.
            ActionRefusedError: for a start, restart, resume or reconnect during panic.
        """
        if action not in INSTANCE_ACTIONS:
            raise ValueError(f"unknown action {action!r}; one of {', '.join(INSTANCE_ACTIONS)}")
        async with self.auditor.action(who, action, connection_id) as outcome:
            manager = self.manager
            if connection_id not in manager:
                raise UnknownConnectionError(
                    f"unknown connection {connection_id!r}", connection_id=connection_id
                )
            if self.panicked and action in _STARTING:
                raise ActionRefusedError(
                    "the gateway is in panic: recover it first", connection_id=connection_id
                )
            if action == "start":
                await manager.start_connection(connection_id)
            elif action in ("stop", "disconnect"):
                await manager.stop_connection(connection_id)
            elif action == "restart":
                await manager.restart_connection(connection_id)
            elif action == "kill":
                await manager.kill_connection(connection_id)
            elif action == "resume":
                await manager.resume(connection_id)
            else:
                outcome["done"] = await manager.reconnect_connection(connection_id)
            if self.panicked:
                self._panic_orders[connection_id] = "stopped" if action in _STOPPING else "running"
            status = manager.get_status(connection_id)
            brief = {k: status[k] for k in ("status", "reason", "desired")}
            outcome["status"] = brief["status"]
        logger.info("admin %s %s (by %s)", action, connection_id, who)
        return {"connection_id": connection_id, "action": action, **outcome, **brief}

    async def set_connection_setting(
        self, connection_id: str, key: str, value: Any, *, who: str = SYSTEM
    ) -> dict[str, Any]:
        """Set one setting of one connection in ``connections.json``; validated, written, applied.

        The file is read as it is, the connection's ``settings.<key>`` set to
        ``value`` and the whole document validated as a reload validates it
        (the settings' types and bounds, the driver's own config). Only then
        is the file replaced atomically and the change applied: settings that
        apply live (``spam_max_pps``, `edgelink.manager.LIVE_SETTINGS`) keep the connection
        running, others restart it. Audited with ``who``.

        Raises:
            UnknownConnectionError: for a connection that does not exist.
            ActionRefusedError: during panic (connection changes wait for recover).
            ConfigError: for an unknown key or a bad value, naming the file and
                ``connections.<id>.settings.<key>``; the file and the running
                connection are unchanged.
            OSError: if the file cannot be written; nothing is applied.
        """
        async with self.auditor.action(
            who, "set_setting", connection_id, {"setting": key, "value": value}
        ) as outcome:
            manager = self.manager
            if connection_id not in manager:
                raise UnknownConnectionError(
                    f"unknown connection {connection_id!r}", connection_id=connection_id
                )
            if self.panicked:
                raise ActionRefusedError(
                    "the gateway is in panic: recover it first", connection_id=connection_id
                )
            report = await self._set_connection_setting(connection_id, key, value)
            outcome["applied"] = report["applied"]
        logger.info("admin set %s.%s = %r (by %s)", connection_id, key, report["value"], who)
        return report

    async def _set_connection_setting(self, cid: str, key: str, value: Any) -> dict[str, Any]:
        where = f"connections.{cid}.settings.{key}"
        async with self._reload_lock:
            folder = self.folder = ConfigFolder.find(self.config_dir)
            path = folder.connections
            original = path.read_text(encoding="utf-8")
            document = read_document(path)
            conns = document.get("connections") if isinstance(document, dict) else None
            entry = conns.get(cid) if isinstance(conns, dict) else None
            if not isinstance(entry, dict):
                raise ConfigError(
                    f"connection {cid!r} is not an object under 'connections' in this file",
                    file=str(path),
                    path=f"connections.{cid}",
                )
            field = ConnectionSettings.model_fields.get(key)
            if field is None:
                raise ConfigError(
                    f"unknown setting {key!r}; one of {', '.join(ConnectionSettings.model_fields)}",
                    file=str(path),
                    path=where,
                )
            if isinstance(value, bool) and field.annotation is not bool:
                raise ConfigError(
                    f"{str(value).lower()} is not a valid {key}", file=str(path), path=where
                )
            settings = entry.get("settings")
            if settings is not None and not isinstance(settings, dict):
                raise ConfigError("must be an object", file=str(path), path=f"{where}.settings")
            entry["settings"] = {**(settings or {}), key: value}
            try:
                spec = load_config(copy.deepcopy(document)).specs()[cid]
            except ConfigError as exc:
                raise exc.in_file(path) from None
            typed = getattr(spec.settings, key)
            entry["settings"][key] = typed
            write_atomically(path, _dump_document(path, document))
            try:
                diff = await self.manager.reload(with_bridge_will(document, self.settings))
            except ConfigError as exc:
                # The driver's own check refused the connection: the old file returns.
                write_atomically(path, original)
                raise exc.in_file(path) from None
            except BaseException:
                write_atomically(path, original)
                raise
            self.config_errors.pop("connections", None)
        applied = "live" if cid in diff.retuned else "restarted" if cid in diff.changed else "same"
        changes = {"added": diff.added, "removed": diff.removed, "changed": diff.changed}
        self._emit(EventType.CONFIG_RELOADED, file=str(path), **changes)
        return {
            "connection_id": cid,
            "key": key,
            "value": typed,
            "applied": applied,
            "file": str(path),
        }

    async def enable_route(self, route_id: str, *, who: str = SYSTEM) -> dict[str, Any]:
        """Let a route quarantined as poison run again, audited; return its stats.

        Raises:
            KeyError: for an unknown route.
        """
        async with self.auditor.action(who, "enable_route", route_id) as outcome:
            stats = self.manager.router.enable_route(route_id)
            outcome["state"] = stats.get("state")
        return stats

    async def enable_source(self, source_id: str, *, who: str = SYSTEM) -> dict[str, Any] | None:
        """Route a quarantined source's datapoints again, audited; return its old quarantine."""
        async with self.auditor.action(who, "enable_source", source_id) as outcome:
            was = self.manager.router.enable_source(source_id)
            outcome["was_quarantined"] = was is not None
        return was

    async def release_quarantine(
        self, connection_id: str, tag: str | None = None, *, who: str = SYSTEM
    ) -> dict[str, Any]:
        """Poll a connection's quarantined (poison) tags again, audited.

        Raises:
            KeyError: for an unknown connection or a tag that is not quarantined.
        """
        async with self.auditor.action(
            who, "release_quarantine", connection_id, {"tag": tag}
        ) as outcome:
            released = await self.manager.release_quarantine(connection_id, tag)
            outcome["released"] = released
        logger.info("admin release quarantine %s %s (by %s)", connection_id, released, who)
        quarantined = self.manager.get_status(connection_id)["quarantined"]
        return {"connection_id": connection_id, "released": released, "quarantined": quarantined}

    async def panic(self, *, reason: str = Reason.PANIC, by: str = "api") -> dict[str, Any]:
        """Stop every device connection now (see `_panic`); audited with ``by`` as who."""
        async with self.auditor.action(by, "panic", None, {"reason": reason}) as outcome:
            info = await self._panic(reason=reason, by=by)
            outcome["stopped"] = info.get("stopped")
        return info

    async def _panic(self, *, reason: str, by: str) -> dict[str, Any]:
        """Stop every device connection now; keep the API up. Idempotent.

        Nothing starts again (no reload, no admin start) until `recover`.
        """
        if self.panicked:
            return dict(self.panic_info or {})
        manager = self.manager
        self.panicked = True
        running = [cid for cid, st in manager.get_status().items() if st["desired"] == "running"]
        self._panic_stopped = running
        self._panic_orders = {}
        self.panic_info = {"at": time.time(), "reason": reason, "by": by, "stopped": len(running)}
        logger.critical("PANIC (%s, by %s): stopping %d connections", reason, by, len(running))
        manager.router.pause()
        if self.bridge is not None:
            self.bridge.pause()
        sups = [manager.get_supervisor(cid) for cid in manager.connections]
        await asyncio.gather(*(sup.stop(reason=Reason.PANIC, graceful=False) for sup in sups))
        # The seed: panic disables plugins (recover enables what was enabled).
        self.panic_info["plugins_disabled"] = await self.plugins.disable_all()
        self._emit(EventType.PANIC, **self.panic_info)
        if self.events is not None:
            self.events.record_error("panic", f"panic by {by}: {reason}", data=self.panic_info)
        return dict(self.panic_info)

    async def recover(self, *, by: str = "api") -> dict[str, Any]:
        """Leave panic (see `_recover`); audited with ``by`` as who."""
        async with self.auditor.action(by, "recover") as outcome:
            report = await self._recover(by=by)
            for key in ("recovered", "started", "kept_stopped"):
                if key in report:
                    outcome[key] = report[key]
        return report

    async def _recover(self, *, by: str) -> dict[str, Any]:
        """Leave panic: reload the folder and start what was running before.

        What an admin stopped since the panic stays stopped (and what an admin
        started stays running): the admin's later order wins over the snapshot.
        """
        if not self.panicked:
            return {"recovered": False, "reason": "not in panic"}
        self.panicked = False
        await self.plugins.start()
        report = await self.reload()
        manager = self.manager
        manager.router.resume()
        if self.bridge is not None:
            self.bridge.resume()
        started = 0
        orders, self._panic_orders = self._panic_orders, {}
        wanted = [cid for cid in self._panic_stopped if orders.get(cid) != "stopped"]
        wanted += [cid for cid, order in orders.items() if order == "running" and cid not in wanted]
        kept_stopped = sorted(cid for cid, order in orders.items() if order == "stopped")
        for cid in wanted:
            if cid in manager and manager.get_spec(cid).enabled:
                await manager.start_connection(cid)
                started += 1
        self._panic_stopped = []
        info = {"by": by, "started": started, "kept_stopped": kept_stopped, "reload": report}
        self._emit(EventType.RECOVERED, by=by, started=started)
        logger.warning("recovered from panic (by %s): %d connections started", by, started)
        return {"recovered": True, **info}


def _dump_document(path: Path, document: Any) -> str:
    """Return a config document as the text of ``path`` (YAML by suffix, else JSON)."""
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        return str(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _remember_service_secrets(settings: ServiceSettings, token: str) -> None:
    """Teach the log redaction the API token and the webhooks' URLs, headers and keys."""
    hooks = [
        {
            "url": hook.url,
            "headers": hook.headers,
            "api_key": hook.api_key.get_secret_value() if hook.api_key else None,
        }
        for hook in settings.webhooks.values()
    ]
    remember_secrets(collect_secrets({"token": token, "webhooks": hooks}))


@dataclass(frozen=True, slots=True)
class LoadedFolder:
    """A config folder validated as `Gateway.start` needs it, nothing started.

    ``manager`` holds every connection's driver (built, not connected) and
    the compiled routes; a gateway starts it, ``edgelink check`` drops it.
    """

    folder: ConfigFolder
    settings: ServiceSettings
    manager: ConnectionManager


def load_folder(
    folder: ConfigFolder | str | os.PathLike[str],
    *,
    clock: Clock | None = None,
    registry: DriverRegistry | None = None,
    gc_policy: str | None = None,
) -> LoadedFolder:
    """Validate a config folder the one way `Gateway.start` and ``edgelink check`` both do.

    Reads ``edgelink.json``, checks the storage path, builds every
    connection's driver (its own config validation and tag checks, no I/O),
    checks the bridge's connection and compiles every route, with
    ``webhook.<name>`` targets checked against the declared webhooks. It
    writes, opens and connects nothing.

    Raises:
        ConfigError: naming the file, the JSON path and the reason.
        RouteError: the same, for ``routing.json``.
    """
    if not isinstance(folder, ConfigFolder):
        folder = ConfigFolder.find(folder)
    settings = load_service_settings(folder.service)
    _check_storage(folder, settings)
    document = connections_document(folder, settings)
    try:
        manager = ConnectionManager.from_config(
            document, clock=clock, registry=registry, gc_policy=gc_policy
        )
    except ConfigError as exc:
        raise exc.in_file(folder.connections) from None
    _check_bridge(folder, settings, manager)
    compile_routes(manager.router, folder.routing or NO_ROUTES, settings)
    return LoadedFolder(folder, settings, manager)


def connections_document(folder: ConfigFolder, settings: ServiceSettings) -> Any:
    """Read connections.json; give the bridge's broker connection its last will.

    The document is validated once, where it is used (`ConnectionManager.from_config`
    or `reload`); its callers name connections.json in what that raises.

    Raises:
        ConfigError: naming connections.json, for a file that cannot be read or parsed.
    """
    return with_bridge_will(read_document(folder.connections), settings)


def with_bridge_will(document: Any, settings: ServiceSettings) -> Any:
    """Give the bridge's broker connection in a connections document its last will (in place)."""
    bridge = settings.bridge
    conns = document.get("connections") if isinstance(document, dict) else None
    entry = conns.get(bridge.connection) if isinstance(conns, dict) and bridge.connection else None
    if isinstance(entry, dict) and entry.get("type") == "mqtt":
        config = entry.setdefault("config", {})
        if isinstance(config, dict):
            config.setdefault("will", bridge_will(bridge.base_topic))
    return document


def compile_routes(
    router: Router, source: str | os.PathLike[str] | dict[str, Any], settings: ServiceSettings
) -> RouteTableDiff:
    """Load a route table into ``router`` after checking its ``webhook.*`` targets.

    A ``webhook.<name>`` target must name a webhook of ``edgelink.json``: the
    router alone would take it for a virtual address and deliver nowhere.

    The router's expression caps, quarantine thresholds and per-address bounds
    are set from ``edgelink.json`` first, so the table compiles under the caps it runs with.

    Raises:
        RouteError: naming the file, the JSON path and the reason; the old table stays.
    """
    rs = settings.router
    router.configure(
        limits=ExprLimits(
            **rs.model_dump(
                exclude={"quarantine_after", "quarantine_window", "max_addresses", "max_plans"}
            )
        ),
        quarantine_after=rs.quarantine_after,
        quarantine_window=rs.quarantine_window,
        max_addresses=rs.max_addresses,
        max_plans=rs.max_plans,
    )
    config, file = load_routing(source)
    declared = {f"webhook.{name}" for name in settings.webhooks}
    errors: list[tuple[str, str]] = []
    for i, spec in enumerate(config.routes):
        for j, target in enumerate(spec.targets):
            if not target.startswith("webhook.") or "{" in target:
                continue  # a templated target is known only per datapoint
            if resolve_endpoint(target, declared)[0] is None:
                path = f"routes[{i}].to" if isinstance(spec.to, str) else f"routes[{i}].to[{j}]"
                errors.append(
                    (
                        path,
                        f"route {spec.id!r}: unknown target {target!r}: "
                        "no such webhook under 'webhooks' in edgelink.json",
                    )
                )
    if errors:
        path, message = errors[0]
        raise RouteError(message, file=file, path=path, errors=errors)
    return router.load_routes(source)


def _check_storage(folder: ConfigFolder, settings: ServiceSettings) -> None:
    """Refuse a storage path that cannot be a file (the database opens later, at start)."""
    path = folder.resolve(settings.storage.path)
    reason = None
    if path.is_dir():
        reason = "is a directory, not a database file"
    else:
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            reason = f"{parent} is not a directory"
        elif not os.access(parent, os.W_OK | os.X_OK):
            reason = f"{parent} is not writable"
    if reason is not None:
        raise _storage_error(folder, f"storage file {path}: {reason}")


def _storage_error(folder: ConfigFolder, message: str) -> ConfigError:
    return ConfigError(message, file=str(folder.service or folder.root), path="storage.path")


def _check_bridge(
    folder: ConfigFolder, settings: ServiceSettings, manager: ConnectionManager
) -> None:
    cid = settings.bridge.connection
    if cid is None:
        return
    if cid not in manager:
        reason = "is not a connection of connections.json"
    elif manager.get_spec(cid).type != "mqtt":
        reason = "must be an mqtt connection"
    else:
        return
    raise ConfigError(
        f"bridge.connection {cid!r} {reason}",
        file=str(folder.service or "edgelink.json"),
        path="bridge.connection",
    )


def _reads_its_device(conn: AnyConnection) -> bool:
    """Whether a driver has a ``read`` of its own (the write's answer can be read back)."""
    own = type(conn).read
    return own is not Connection.read and own is not SyncConnection.read
