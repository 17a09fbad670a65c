"""``edgelink doctor``: a self-test of one installation, from its config folder.

`run_doctor` reads the folder as ``edgelink run`` does and checks, each step
under its own timeout so the whole run is bounded:

- per connection: the host resolves, the real driver connects (within its
  ``connect_timeout``), a health check passes, the first polled tag reads, the
  latency of each step; and how long a pulled cable would go unnoticed
  (health checks, ``data_timeout``, TCP keepalive), warned above a threshold;
- the bridge: its broker connection reachable, every polled address's topic
  (from the bridge's own topic function) a valid MQTT topic;
- the routes: they compile, and each route's ``from`` names a source that exists;
- storage: the SQLite folder writable, files 0600, the folder not world-writable;
- the instance lock: whether a gateway already runs on the folder;
- the clock: a time zone set, the system clock synchronized (when detectable).

With ``faults=True`` it also puts a `FaultProxy` between a supervised
connection and each TCP device and checks that a drop, a stall and a
half-open link are detected and recovered within the configured limits
(intervals are shortened for the test; the report says how).

The doctor never writes to the folder (a probe file for the storage check is
removed at once) and uses its own MQTT client id, so a running gateway's
broker session is not taken over.

Example:
    report = await run_doctor("/etc/edgelink")
    print(report.verdict, report.exit_code)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from edgelink.config import ConnectionSpec, load_config, read_document
from edgelink.connection import SyncConnection
from edgelink.errors import ConfigError, RouteError
from edgelink.manager import ConnectionManager
from edgelink.registry import DriverRegistry
from edgelink.router.address import parse_pattern, resolve_endpoint, split_levels
from edgelink.router.datapoint import DataPoint
from edgelink.router.engine import Router
from edgelink.service.config import ConfigFolder, ServiceSettings, load_service_settings
from edgelink.settings import ConnectionSettings
from edgelink.state import ConnectionState

__all__ = ["LOCK_FILES", "Check", "DoctorReport", "Verdict", "print_report", "run_doctor"]

T = TypeVar("T")

#: Lock files a running gateway may hold in its config folder (PID inside).
LOCK_FILES = ("edgelink.lock", ".edgelink.lock")
#: Seconds a host name may take to resolve.
DNS_TIMEOUT_S = 5.0
#: Seconds a disconnect may take before the doctor moves on.
CLOSE_TIMEOUT_S = 2.0
#: Connections probed at once.
PROBE_CONCURRENCY = 16
#: Fault drills run at once (each holds a proxy and a supervised connection for seconds).
DRILL_CONCURRENCY = 8
#: Topics shown per kind of problem in a report line.
SHOWN = 3
#: Driver types whose TCP link gets the keepalive options of DESIGN section 3.
TCP_TYPES = frozenset({"tcp", "modbus_tcp", "mqtt", "http"})
#: Caps on the settings of the supervised connection a fault run uses: so that a
#: run takes seconds, whatever the real intervals are.
FAULT_CAPS: dict[str, float] = {
    "health_check_interval": 1.0,
    "health_check_timeout": 0.5,
    "connect_timeout": 1.0,
    "request_timeout": 1.0,
    "reconnect_initial_delay": 0.1,
    "reconnect_max_delay": 0.5,
    "data_timeout": 3.0,
}
#: Added to every computed limit of a fault run: scheduling on a busy gateway.
FAULT_MARGIN_S = 0.5
#: Longest a fault run's poll interval may be (data_timeout needs data).
FAULT_POLL_CAP_S = 0.5


class Verdict(enum.StrEnum):
    """The outcome of one check; ``skip`` = does not apply here."""

    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


_RANK = {Verdict.SKIP: 0, Verdict.PASS: 1, Verdict.WARN: 2, Verdict.FAIL: 3}


@dataclass(frozen=True, slots=True)
class Check:
    """One check's result.

    Attributes:
        section: ``connection``, ``bridge``, ``routes``, ``storage``, ``lock``,
            ``clock`` or ``faults``.
        subject: What was checked: a connection id, a route id, a path.
        name: The check, e.g. ``connect`` or ``half_open``.
        verdict: pass, warn, fail or skip.
        detail: What was found, in words.
        advice: What to do about a warn or fail.
        latency_ms: How long the step took, where that is the point.
        data: Figures for machines (seconds, counts).
    """

    section: str
    subject: str
    name: str
    verdict: Verdict
    detail: str
    advice: str | None = None
    latency_ms: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the check as JSON-ready data."""
        return {
            "section": self.section,
            "subject": self.subject,
            "name": self.name,
            "verdict": str(self.verdict),
            "detail": self.detail,
            "advice": self.advice,
            "latency_ms": self.latency_ms,
            "data": self.data,
        }


@dataclass(slots=True)
class DoctorReport:
    """Every check of one doctor run.

    ``exit_code`` is 1 when any check failed, else 0 (warnings do not fail).
    """

    folder: str
    checks: list[Check] = field(default_factory=list)
    duration_s: float = 0.0
    faults: bool = False

    @property
    def verdict(self) -> Verdict:
        """The worst verdict of all checks (pass for none)."""
        worst = max((c.verdict for c in self.checks), key=_RANK.__getitem__, default=Verdict.PASS)
        return Verdict.PASS if worst is Verdict.SKIP else worst

    @property
    def exit_code(self) -> int:
        """1 if any check failed, else 0."""
        return 1 if self.verdict is Verdict.FAIL else 0

    def find(self, section: str, subject: str, name: str) -> Check | None:
        """Return the check of that section, subject and name, or None."""
        for check in self.checks:
            if (check.section, check.subject, check.name) == (section, subject, name):
                return check
        return None

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        counts = {str(v): 0 for v in Verdict}
        for check in self.checks:
            counts[str(check.verdict)] += 1
        return {
            "folder": self.folder,
            "verdict": str(self.verdict),
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
            "faults": self.faults,
            "summary": counts,
            "checks": [c.to_dict() for c in self.checks],
        }


async def run_doctor(
    folder: str | os.PathLike[str],
    *,
    faults: bool = False,
    registry: DriverRegistry | None = None,
    max_detect_s: float = 60.0,
) -> DoctorReport:
    """Check the installation of a config folder; see the module docstring.

    Args:
        folder: The config folder (as for ``edgelink run``).
        faults: Also run the fault drills (drop, stall, half-open) per TCP device.
        registry: Driver types (default: built-ins and installed plugins).
        max_detect_s: A pulled cable noticed later than this is a warning.

    Returns:
        The report; it never raises for a device or broker that misbehaves.

    Raises:
        ConfigError: for a missing folder or a bad config file (as ``run`` would
            refuse it), naming the file, the JSON path and the reason.
    """
    started = time.monotonic()
    cfg = ConfigFolder.find(folder)
    service = load_service_settings(cfg.service)
    document = read_document(cfg.connections)
    specs = _load_specs(cfg, document, registry)
    registry = registry or DriverRegistry()
    report = DoctorReport(str(cfg.root), faults=faults)
    semaphore = asyncio.Semaphore(PROBE_CONCURRENCY)

    async def probe(spec: ConnectionSpec) -> list[Check]:
        async with semaphore:
            return await _probe_connection(spec, registry, max_detect_s)

    per_connection = await asyncio.gather(*(probe(s) for s in specs.values()))
    for checks in per_connection:
        report.checks.extend(checks)
    report.checks.extend(_check_bridge(service, specs, report, registry))
    report.checks.extend(_check_routes(cfg, service, specs))
    report.checks.extend(_check_storage(cfg, service))
    report.checks.append(_check_lock(cfg.root))
    # timedatectl is a subprocess (up to 3 s): off the loop.
    report.checks.extend(await asyncio.to_thread(_check_clock))
    if faults:
        report.checks.extend(await _run_drills(specs, report, registry))
    report.duration_s = time.monotonic() - started
    return report


async def _run_drills(
    specs: dict[str, ConnectionSpec], report: DoctorReport, registry: DriverRegistry
) -> list[Check]:
    """Fault drills for every enabled TCP connection that passed its health check."""
    checks: list[Check] = []
    drills: list[ConnectionSpec] = []
    for spec in specs.values():
        cid = spec.connection_id
        health = report.find("connection", cid, "health")
        if not spec.enabled:
            continue
        if _tcp_target(spec) is None:
            why = f"{spec.type}: no TCP link the fault proxy can sit in"
        elif health is None or health.verdict is not Verdict.PASS:
            why = "the connection checks failed: fix them first"
        else:
            drills.append(spec)
            continue
        checks.append(Check("faults", cid, "drills", Verdict.SKIP, why))
    semaphore = asyncio.Semaphore(DRILL_CONCURRENCY)

    async def drill(spec: ConnectionSpec) -> list[Check]:
        async with semaphore:
            return await _fault_drills(spec, registry)

    results = await asyncio.gather(*(drill(s) for s in drills))
    for found in results:
        checks.extend(found)
    return checks


def _load_specs(
    cfg: ConfigFolder, document: Any, registry: DriverRegistry | None
) -> dict[str, ConnectionSpec]:
    """Validate connections.json and every driver's config, exactly as ``run`` does."""
    try:
        config = load_config(document)
        # Building the manager builds every driver: a bad driver config fails here.
        ConnectionManager.from_config(document, registry=registry)
    except ConfigError as exc:
        raise ConfigError(
            exc.message,
            file=str(cfg.connections),
            path=exc.path,
            errors=exc.errors,
            connection_id=exc.connection_id,
        ) from None
    return config.specs()


async def _timed(timeout: float, factory: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    """Await ``factory()`` within ``timeout``; return the result and the milliseconds taken."""
    t0 = time.perf_counter()
    async with asyncio.timeout(timeout):
        result = await factory()
    return result, (time.perf_counter() - t0) * 1000.0


def _driver_call(driver: Any, method: str, *args: Any) -> Callable[[], Awaitable[Any]]:
    fn = getattr(driver, method)
    if isinstance(driver, SyncConnection):
        return lambda: asyncio.to_thread(fn, *args)
    return lambda: fn(*args)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _endpoint(spec: ConnectionSpec) -> tuple[str, int | None] | None:
    """The host (and port) a connection talks to, if it has one."""
    cfg = spec.config
    base_url = cfg.get("base_url")
    if isinstance(base_url, str):
        parts = urlsplit(base_url)
        if parts.hostname:
            default = 443 if parts.scheme == "https" else 80
            return parts.hostname, parts.port or default
    host = cfg.get("host")
    if isinstance(host, str) and host:
        port = cfg.get("port")
        return host, port if isinstance(port, int) else None
    return None


async def _probe_connection(
    spec: ConnectionSpec, registry: DriverRegistry, max_detect_s: float
) -> list[Check]:
    checks = await _probe_link(spec, registry)
    checks.append(_half_open_check(spec, max_detect_s))
    return checks


async def _probe_link(spec: ConnectionSpec, registry: DriverRegistry) -> list[Check]:
    cid = spec.connection_id
    s = spec.settings
    checks: list[Check] = []
    if not spec.enabled:
        return [Check("connection", cid, "connect", Verdict.SKIP, "disabled")]
    where = _endpoint(spec)
    if where is not None:
        host, port = where
        try:
            infos, ms = await _timed(
                DNS_TIMEOUT_S,
                lambda: asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
            )
        except (OSError, TimeoutError) as exc:
            checks.append(
                Check(
                    "connection",
                    cid,
                    "resolve",
                    Verdict.FAIL,
                    f"{host} does not resolve: {_describe(exc)}",
                    "check the host name and the gateway's DNS (/etc/resolv.conf)",
                )
            )
            return checks
        addresses = sorted({str(info[4][0]) for info in infos})
        checks.append(
            Check(
                "connection",
                cid,
                "resolve",
                Verdict.PASS,
                f"{host} -> {', '.join(addresses[:SHOWN])}",
                latency_ms=round(ms, 2),
                data={"addresses": addresses},
            )
        )
    config = _doctor_config(spec)
    driver = registry.create(cid, spec.type, config)
    try:
        try:
            ok, ms = await _timed(s.connect_timeout, _driver_call(driver, "connect"))
            if ok is False:
                raise ConnectionError("connect() returned False")
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            checks.append(
                Check(
                    "connection",
                    cid,
                    "connect",
                    Verdict.FAIL,
                    f"cannot connect within connect_timeout {s.connect_timeout:g} s: "
                    f"{_describe(exc)}",
                    "is the device on and reachable from here (address, port, firewall)?",
                )
            )
            return checks
        checks.append(
            Check(
                "connection",
                cid,
                "connect",
                Verdict.PASS,
                f"connected in {ms:.1f} ms",
                latency_ms=round(ms, 2),
            )
        )
        checks.append(await _probe_health(spec, driver))
        tag = next((t for group in spec.poll for t in group.tags), None)
        if tag is not None:
            checks.append(await _probe_read(spec, driver, tag))
    finally:
        with contextlib.suppress(Exception):
            await _timed(CLOSE_TIMEOUT_S, _driver_call(driver, "disconnect"))
    return checks


def _doctor_config(spec: ConnectionSpec) -> dict[str, Any]:
    """The driver config the doctor uses: no last will, an MQTT client id of its own."""
    config = dict(spec.config)
    if spec.type == "mqtt":
        config.pop("will", None)
        base = config.get("client_id") or spec.connection_id
        config["client_id"] = f"{base}-doctor-{os.getpid()}"
    return config


async def _probe_health(spec: ConnectionSpec, driver: Any) -> Check:
    cid = spec.connection_id
    timeout = spec.settings.health_check_timeout
    try:
        ok, ms = await _timed(timeout, _driver_call(driver, "health_check"))
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return Check(
            "connection",
            cid,
            "health",
            Verdict.FAIL,
            f"health check failed within {timeout:g} s: {_describe(exc)}",
            "the link opens but the device does not answer: is it the right device and port?",
        )
    if not ok:
        return Check(
            "connection",
            cid,
            "health",
            Verdict.FAIL,
            "health check answered unhealthy",
            "the device says it is not well; look at it",
            latency_ms=round(ms, 2),
        )
    return Check(
        "connection",
        cid,
        "health",
        Verdict.PASS,
        f"healthy, {ms:.1f} ms",
        latency_ms=round(ms, 2),
    )


async def _probe_read(spec: ConnectionSpec, driver: Any, tag: str) -> Check:
    cid = spec.connection_id
    timeout = spec.settings.request_timeout
    try:
        value, ms = await _timed(timeout, _driver_call(driver, "read", tag))
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return Check(
            "connection",
            cid,
            "read",
            Verdict.FAIL,
            f"reading {tag!r} failed within request_timeout {timeout:g} s: {_describe(exc)}",
            "check the tag's spelling and address in the poll group",
            data={"tag": tag},
        )
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return Check(
        "connection",
        cid,
        "read",
        Verdict.PASS,
        f"{tag} = {shown} in {ms:.1f} ms",
        latency_ms=round(ms, 2),
        data={"tag": tag},
    )


def _half_open_check(spec: ConnectionSpec, max_detect_s: float) -> Check:
    """Explain how long a pulled cable (no FIN, no RST) would go unnoticed."""
    s = spec.settings
    cfg = spec.config
    parts: list[str] = []
    bounds: list[float] = []
    data: dict[str, Any] = {}
    if s.health_check_interval is not None:
        bound = s.health_check_failures * (s.health_check_interval + s.health_check_timeout)
        bounds.append(bound)
        data["health_check_s"] = bound
        parts.append(
            f"health checks every {s.health_check_interval:g} s x failures "
            f"{s.health_check_failures} + timeout {s.health_check_timeout:g} s: "
            f"noticed within ~{bound:g} s"
        )
    if s.data_timeout is not None:
        bounds.append(s.data_timeout)
        data["data_timeout_s"] = s.data_timeout
        parts.append(f"the data watchdog fires after {s.data_timeout:g} s without data")
    keepalive: float | None = None
    if spec.type in TCP_TYPES:
        keepalive = float(
            cfg.get("keepalive_idle", 10)
            + cfg.get("keepalive_interval", 5) * cfg.get("keepalive_count", 3)
        )
        data["tcp_keepalive_s"] = keepalive
        data["tcp_user_timeout_s"] = float(cfg.get("tcp_user_timeout", 15.0))
        parts.append(
            f"TCP keepalive would notice an idle dead link after {keepalive:g} s "
            f"(unacknowledged data after {data['tcp_user_timeout_s']:g} s)"
        )
    detect = min(bounds) if bounds else None
    data["detect_s"] = detect
    text = "if the cable is pulled: " + "; ".join(parts) if parts else "nothing would notice"
    cid = spec.connection_id
    if detect is None:
        return Check(
            "connection",
            cid,
            "half_open",
            Verdict.WARN,
            text + "; no health check and no data_timeout: a hung device (which TCP cannot "
            "see) would never be noticed",
            "set health_check_interval (and data_timeout for polled devices)",
            data=data,
        )
    if detect > max_detect_s:
        return Check(
            "connection",
            cid,
            "half_open",
            Verdict.WARN,
            f"{text}; that is over {max_detect_s:g} s",
            "shorten health_check_interval or set data_timeout",
            data=data,
        )
    return Check("connection", cid, "half_open", Verdict.PASS, text, data=data)


#: What MQTT forbids in a topic name (wildcards, NUL) or we refuse (a leading ``$``).
_BAD_TOPIC = re.compile(r"[#+\x00]")
MAX_TOPIC_BYTES = 65535


def topic_problem(topic: str) -> str | None:
    """Return why ``topic`` is not a publishable MQTT topic name, or None if it is."""
    if not topic:
        return "empty"
    if _BAD_TOPIC.search(topic):
        return "has a wildcard (+ #) or NUL"
    if topic.startswith("$"):
        return "starts with '$' (reserved for the broker)"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if size > MAX_TOPIC_BYTES:
        return f"longer than {MAX_TOPIC_BYTES} bytes"
    return None


def _check_bridge(
    service: ServiceSettings,
    specs: dict[str, ConnectionSpec],
    report: DoctorReport,
    registry: DriverRegistry,
) -> list[Check]:
    bridge_cfg = service.bridge
    cid = bridge_cfg.connection
    if cid is None:
        return [Check("bridge", "bridge", "broker", Verdict.SKIP, "no bridge configured")]
    if cid not in specs or specs[cid].type != "mqtt":
        return [
            Check(
                "bridge",
                cid,
                "broker",
                Verdict.FAIL,
                f"bridge.connection {cid!r} is not an mqtt connection of connections.json",
                "name one of the mqtt connections in edgelink.json bridge.connection",
            )
        ]
    checks: list[Check] = []
    connect = report.find("connection", cid, "connect")
    health = report.find("connection", cid, "health")
    if connect is None or connect.verdict is not Verdict.PASS:
        why = connect.detail if connect is not None else "not tested"
        checks.append(
            Check(
                "bridge",
                cid,
                "broker",
                Verdict.FAIL,
                f"broker not reachable: {why}",
                "start the broker or fix host/port; until then datapoints wait in the buffer",
            )
        )
    else:
        ok = health is not None and health.verdict is Verdict.PASS
        checks.append(
            Check(
                "bridge",
                cid,
                "broker",
                Verdict.PASS if ok else Verdict.FAIL,
                f"broker reachable ({connect.detail})"
                if ok
                else f"broker connected but unhealthy: {health.detail if health else '?'}",
                latency_ms=connect.latency_ms,
            )
        )
    checks.append(_check_topics(service, specs, registry))
    return checks


def _check_topics(
    service: ServiceSettings, specs: dict[str, ConnectionSpec], registry: DriverRegistry
) -> Check:
    from edgelink.bridge.mqtt import MqttBridge
    from edgelink.store import Database, UplinkBuffer

    manager = ConnectionManager(registry=registry)
    bridge = MqttBridge(manager, manager.router, service.bridge, UplinkBuffer(Database(":memory:")))
    cid = service.bridge.connection or "bridge"
    bad: dict[str, list[str]] = {}
    count = 0
    now = time.time()
    for spec in specs.values():
        for group in spec.poll:
            for tag in group.tags:
                count += 1
                source = spec.connection_id
                dp = DataPoint(f"{source}.{tag}", None, now, "good", source, None)
                try:
                    topic = bridge.topic_for(dp)
                except Exception as exc:  # noqa: BLE001 - a refused topic is the finding
                    problem: str | None = _describe(exc)
                else:
                    problem = topic_problem(topic)
                if problem is not None:
                    bad.setdefault(problem, []).append(dp.address)
    base_problem = topic_problem(service.bridge.base_topic)
    if base_problem is not None:
        bad.setdefault(f"base_topic {base_problem}", []).append(service.bridge.base_topic)
    if bad:
        total = sum(len(v) for v in bad.values())
        reasons = "; ".join(
            f"{why}: {', '.join(addrs[:SHOWN])}{' ...' if len(addrs) > SHOWN else ''}"
            for why, addrs in bad.items()
        )
        return Check(
            "bridge",
            cid,
            "topics",
            Verdict.FAIL,
            f"{total} of {count} polled addresses have no valid topic: {reasons}",
            "rename the tags or connection ids, or update edgelink (topic encoding)",
            data={"addresses": count, "invalid": total},
        )
    return Check(
        "bridge",
        cid,
        "topics",
        Verdict.PASS,
        f"all {count} polled addresses map to valid topics",
        data={"addresses": count, "invalid": 0},
    )


def _check_routes(
    cfg: ConfigFolder, service: ServiceSettings, specs: dict[str, ConnectionSpec]
) -> list[Check]:
    if cfg.routing is None:
        return [Check("routes", "routing", "compile", Verdict.SKIP, "no routing file")]
    router = Router()
    try:
        router.load_routes(cfg.routing)
    except RouteError as exc:
        return [
            Check(
                "routes",
                cfg.routing.name,
                "compile",
                Verdict.FAIL,
                str(exc),
                "fix the route (edgelink run would refuse this file)",
            )
        ]
    routes = router.routes
    checks = [
        Check(
            "routes",
            cfg.routing.name,
            "compile",
            Verdict.PASS,
            f"{len(routes)} routes compile",
            data={"routes": len(routes)},
        )
    ]
    endpoints = set(specs) | {f"webhook.{name}" for name in service.webhooks}
    for route in routes:
        sources = route["from"] if isinstance(route["from"], list) else [route["from"]]
        missing = [p for p in sources if not _pattern_has_source(p, endpoints)]
        rid = str(route["id"])
        if missing:
            checks.append(
                Check(
                    "routes",
                    rid,
                    "sources",
                    Verdict.WARN,
                    f"'from' {', '.join(missing)} matches no connection or declared endpoint",
                    "a typo in the id? (a virtual source fed by route_data is fine)",
                )
            )
        else:
            checks.append(
                Check("routes", rid, "sources", Verdict.PASS, f"from {', '.join(sources)}")
            )
    return checks


def _pattern_has_source(pattern: str, endpoints: Iterable[str]) -> bool:
    """Return whether a ``from`` pattern can match data of some endpoint.

    Exact: its endpoint exists. With wildcards: its literal head (before the
    first wildcard) names an endpoint, lies inside one's id, or is empty.
    """
    endpoints = set(endpoints)
    parsed = parse_pattern(pattern)
    if parsed.is_exact:
        return resolve_endpoint(pattern, endpoints)[0] is not None
    tokens, _ = split_levels(pattern)
    head_tokens: list[str] = []
    for tok, kind in zip(tokens, parsed.kinds, strict=True):
        if kind != 0:
            break
        head_tokens.append(tok)
    head = "".join(head_tokens)[1:]
    if not head:
        return bool(endpoints)
    if head in endpoints or resolve_endpoint(head, endpoints)[0] is not None:
        return True
    return any(ep.startswith(head + ".") or ep.startswith(head + "/") for ep in endpoints)


def _check_storage(cfg: ConfigFolder, service: ServiceSettings) -> list[Check]:
    checks: list[Check] = []
    root = cfg.root
    mode = root.stat().st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        checks.append(
            Check(
                "storage",
                str(root),
                "folder",
                Verdict.WARN,
                f"the config folder is world-writable ({stat.filemode(mode)})",
                f"chmod o-w {root}: anyone could change the connections",
            )
        )
    else:
        checks.append(
            Check("storage", str(root), "folder", Verdict.PASS, f"mode {stat.filemode(mode)}")
        )
    db = cfg.resolve(service.storage.path)
    checks.append(_check_db(db))
    token_file = cfg.resolve(service.api.token_file)
    if token_file.exists():
        checks.append(_check_private(token_file, "token_file"))
    return checks


def _check_db(db: Path) -> Check:
    parent = db.parent
    if not parent.is_dir():
        return Check(
            "storage",
            str(db),
            "database",
            Verdict.PASS if os.access(parent.parent, os.W_OK) else Verdict.FAIL,
            f"{parent} does not exist yet; it is created at start",
        )
    if db.exists():
        if not os.access(db, os.R_OK | os.W_OK):
            return Check(
                "storage",
                str(db),
                "database",
                Verdict.FAIL,
                "the SQLite file is not writable by this user",
                f"run as the file's owner or chown {db}",
            )
        return _check_private(db, "database")
    # Probe that a 0600 file can be made there, then remove it.
    probe = parent / f".edgelink-doctor-{os.getpid()}.tmp"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        return Check(
            "storage",
            str(db),
            "database",
            Verdict.FAIL,
            f"cannot create files in {parent}: {exc.strerror or exc}",
            "make the folder writable for the gateway's user or set storage.path",
        )
    try:
        os.write(fd, b"edgelink doctor")
        created = stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            probe.unlink()
    return Check(
        "storage",
        str(db),
        "database",
        Verdict.PASS,
        f"{parent} is writable; files are created with mode {created:04o}",
    )


def _check_private(path: Path, name: str) -> Check:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return Check(
            "storage",
            str(path),
            name,
            Verdict.WARN,
            f"mode {mode:04o}: readable by others",
            f"chmod 600 {path}",
        )
    return Check("storage", str(path), name, Verdict.PASS, f"writable, mode {mode:04o}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def _lock_pid(text: str) -> int | None:
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("pid"), int):
            return int(data["pid"])
        if isinstance(data, int):
            return data
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


def _check_lock(root: Path) -> Check:
    for name in LOCK_FILES:
        path = root / name
        if not path.exists():
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")[:200]
        except OSError as exc:
            return Check(
                "lock",
                str(path),
                "instance",
                Verdict.WARN,
                f"cannot read the lock file: {exc.strerror or exc}",
            )
        pid = _lock_pid(text)
        if pid is None:
            return Check(
                "lock",
                str(path),
                "instance",
                Verdict.WARN,
                "the lock file holds no PID",
                "if no gateway runs on this folder, remove it",
            )
        if pid != os.getpid() and _pid_alive(pid):
            return Check(
                "lock",
                str(path),
                "instance",
                Verdict.WARN,
                f"a gateway runs on this folder (PID {pid}): a second edgelink run is refused",
                "expected if you check a running gateway; else stop PID "
                f"{pid} before starting another",
                data={"pid": pid, "alive": True},
            )
        return Check(
            "lock",
            str(path),
            "instance",
            Verdict.PASS,
            f"stale lock of PID {pid} (not running): the next run takes it over",
            data={"pid": pid, "alive": False},
        )
    return Check("lock", str(root), "instance", Verdict.PASS, "free (no lock file)")


def _check_clock() -> list[Check]:
    checks: list[Check] = []
    tz_env = os.environ.get("TZ")
    localtime = Path("/etc/localtime")
    if tz_env:
        checks.append(Check("clock", "timezone", "timezone", Verdict.PASS, f"TZ={tz_env}"))
    elif localtime.exists():
        zone = os.path.realpath(localtime).split("zoneinfo/")[-1]
        checks.append(
            Check("clock", "timezone", "timezone", Verdict.PASS, f"{zone} ({time.tzname[0]})")
        )
    else:
        checks.append(
            Check(
                "clock",
                "timezone",
                "timezone",
                Verdict.WARN,
                "no time zone set (no TZ, no /etc/localtime): local times are UTC",
                "set TZ or link /etc/localtime to your zone",
            )
        )
    synced = _clock_synchronized()
    if synced is True:
        checks.append(Check("clock", "system", "sync", Verdict.PASS, "system clock synchronized"))
    elif synced is False:
        checks.append(
            Check(
                "clock",
                "system",
                "sync",
                Verdict.WARN,
                "the system clock is not synchronized",
                "enable NTP (timedatectl set-ntp true): timestamps of data and events drift",
            )
        )
    else:
        checks.append(
            Check(
                "clock",
                "system",
                "sync",
                Verdict.WARN,
                "unknown whether the clock is synchronized (no timedatectl answer, "
                "no /run/systemd/timesync)",
                "make sure NTP (or chrony) keeps the clock right",
            )
        )
    return checks


def _clock_synchronized() -> bool | None:
    if Path("/run/systemd/timesync/synchronized").exists():
        return True
    exe = shutil.which("timedatectl")
    if exe is None:
        return None
    try:
        proc = subprocess.run(  # noqa: S603 - a fixed command, no shell
            [exe, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=3.0,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    answer = proc.stdout.strip().lower()
    if proc.returncode != 0 or answer not in ("yes", "no"):
        return None
    return answer == "yes"


def _tcp_target(spec: ConnectionSpec) -> tuple[str, int] | None:
    """The (host, port) a fault proxy would stand in for, or None."""
    if spec.type not in ("tcp", "modbus_tcp", "mqtt", "http"):
        return None
    if spec.type == "http":
        base_url = spec.config.get("base_url")
        if not isinstance(base_url, str) or not base_url.startswith("http://"):
            return None  # https names its host in the certificate: no proxy in between
    if spec.type == "mqtt" and spec.config.get("tls"):
        return None
    where = _endpoint(spec)
    if where is None:
        return None
    host, port = where
    if port is None:
        port = 1883 if spec.type == "mqtt" else 502 if spec.type == "modbus_tcp" else None
    return (host, port) if port is not None else None


def _fault_settings(s: ConnectionSettings) -> tuple[dict[str, Any], list[str]]:
    """Settings for a fault drill: the user's, capped by `FAULT_CAPS`; and what changed."""
    data = s.model_dump()
    changed: list[str] = []
    for key, cap in FAULT_CAPS.items():
        value = data.get(key)
        if value is not None and value > cap:
            data[key] = cap
            changed.append(f"{key} {value:g}->{cap:g} s")
    data["reconnect_max_attempts"] = None
    data["spam_max_pps"] = None
    # The drills drop the link on purpose, three times in a row: flap
    # dampening would (rightly) hold a real device down after that.
    data["flap_dampening"] = False
    data["reconnect_jitter"] = min(data["reconnect_jitter"], 0.2)
    return data, changed


def _via_proxy(spec: ConnectionSpec, port: int) -> dict[str, Any]:
    config = _doctor_config(spec)
    if spec.type == "http":
        parts = urlsplit(str(config["base_url"]))
        config["base_url"] = urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))
    else:
        config["host"] = "127.0.0.1"
        config["port"] = port
    return config


async def _wait_until(predicate: Callable[[], bool], timeout: float) -> float | None:
    """Return the seconds until ``predicate()`` held, or None after ``timeout``."""
    t0 = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            return None
        await asyncio.sleep(0.01)


async def _fault_drills(spec: ConnectionSpec, registry: DriverRegistry) -> list[Check]:
    from edgelink.testing.fault_proxy import FaultMode, FaultProxy

    target = _tcp_target(spec)
    assert target is not None
    cid = spec.connection_id
    settings, changed = _fault_settings(spec.settings)
    s = ConnectionSettings.model_validate(settings)
    if s.health_check_interval is not None:
        detect_limit = s.health_check_failures * (s.health_check_interval + s.health_check_timeout)
    elif s.data_timeout is not None and spec.poll:
        detect_limit = s.data_timeout + FAULT_POLL_CAP_S
    else:
        return [
            Check(
                "faults",
                cid,
                "drills",
                Verdict.WARN,
                "no health check and no data_timeout: a stall or half-open link is never "
                "noticed, so there is nothing to drill",
                "set health_check_interval",
            )
        ]
    detect_limit += FAULT_MARGIN_S
    # After the fault is lifted: at most one backoff delay, then one attempt
    # (connect and its first health check).
    recover_limit = (
        s.reconnect_max_delay * (1 + s.reconnect_jitter)
        + s.connect_timeout
        + s.health_check_timeout
        + FAULT_MARGIN_S
    )
    note = "settings for the drill: " + (
        "shortened " + ", ".join(changed) if changed else "as configured"
    )
    poll = [
        {"tags": list(g.tags), "interval": min(g.interval, FAULT_POLL_CAP_S)} for g in spec.poll
    ]
    checks = [
        Check(
            "faults",
            cid,
            "drills",
            Verdict.PASS,
            f"{note}; detection limit {detect_limit:.2f} s, recovery limit {recover_limit:.2f} s",
            data={"shortened": changed},
        )
    ]
    async with FaultProxy(target[0], target[1], connect_timeout=s.connect_timeout) as proxy:
        manager = ConnectionManager(registry=registry, **settings)
        manager.add_connection(cid, spec.type, _via_proxy(spec, proxy.port), poll=poll)
        try:
            await manager.start()

            def connected() -> bool:
                return manager.get_state(cid) is ConnectionState.CONNECTED

            def lost() -> bool:
                return not connected()

            for fault in ("drop", "stall", "half_open"):
                base = {"detect_limit_s": round(detect_limit, 3)}
                base["recover_limit_s"] = round(recover_limit, 3)
                if await _wait_until(connected, recover_limit + s.connect_timeout) is None:
                    checks.append(
                        Check(
                            "faults",
                            cid,
                            fault,
                            Verdict.FAIL,
                            "could not connect through the fault proxy; drill not run",
                            "fix the connection checks above first",
                            data=base,
                        )
                    )
                    break
                accepted = proxy.accepted
                if fault == "drop":
                    await proxy.drop_all()
                elif fault == "stall":
                    proxy.mode = FaultMode.STALL
                else:
                    proxy.mode = FaultMode.HALF_OPEN
                    await proxy.drop_all()
                detected = await _wait_until(lost, detect_limit + 1.0)
                if detected is None and fault == "drop" and proxy.accepted > accepted:
                    # The driver opened a new link by itself (a per-request client).
                    proxy.mode = FaultMode.PASS
                    checks.append(
                        Check(
                            "faults",
                            cid,
                            fault,
                            Verdict.PASS,
                            "the driver re-opened the link by itself, no outage seen",
                            data=base,
                        )
                    )
                    continue
                if detected is None:
                    proxy.mode = FaultMode.PASS
                    checks.append(
                        Check(
                            "faults",
                            cid,
                            fault,
                            Verdict.FAIL,
                            f"{fault} not detected within {detect_limit + 1.0:.1f} s",
                            "set a health check; check that the driver's health check "
                            "sends a real request",
                            data=base,
                        )
                    )
                    continue
                lied = False
                if fault != "drop":
                    # While the fault lasts, an attempt must not claim to be connected.
                    hold = s.connect_timeout + s.health_check_timeout + 0.2
                    lied = await _wait_until(connected, hold) is not None
                proxy.mode = FaultMode.PASS
                recovered = await _wait_until(connected, recover_limit + 2.0)
                data = {**base, "detected_s": round(detected, 3)}
                if recovered is not None:
                    data["recovered_s"] = round(recovered, 3)
                checks.append(_drill_verdict(cid, fault, data, lied))
        finally:
            await manager.stop()
    return checks


def _drill_verdict(cid: str, fault: str, data: dict[str, Any], lied: bool) -> Check:
    detected = data["detected_s"]
    recovered = data.get("recovered_s")
    problems: list[str] = []
    if detected > data["detect_limit_s"]:
        problems.append(f"detected late ({detected:.2f} s > {data['detect_limit_s']:.2f} s)")
    if lied:
        problems.append("reported connected while the link was broken")
    if recovered is None:
        problems.append("did not recover")
    elif recovered > data["recover_limit_s"]:
        problems.append(f"recovered late ({recovered:.2f} s > {data['recover_limit_s']:.2f} s)")
    measured = f"detected in {detected:.2f} s" + (
        f", recovered {recovered:.2f} s after the fault ended" if recovered is not None else ""
    )
    if problems:
        return Check(
            "faults",
            cid,
            fault,
            Verdict.FAIL,
            f"{measured}: {'; '.join(problems)}",
            "look at the connection's health check and timeouts",
            data=data,
        )
    return Check("faults", cid, fault, Verdict.PASS, measured, data=data)


_STYLE = {
    Verdict.PASS: "green",
    Verdict.WARN: "yellow",
    Verdict.FAIL: "bold red",
    Verdict.SKIP: "dim",
}


def print_report(report: DoctorReport, file: IO[str] | None = None) -> None:
    """Print the report as a table (rich), with a summary line."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file)
    table = Table(title=f"edgelink doctor: {report.folder}", show_lines=False)
    for column in ("", "section", "subject", "check", "finding", "advice"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        style = _STYLE[check.verdict]
        table.add_row(
            f"[{style}]{check.verdict.upper()}[/]",
            check.section,
            check.subject,
            check.name,
            check.detail,
            check.advice or "",
        )
    console.print(table)
    counts = report.to_dict()["summary"]
    console.print(
        f"[{_STYLE[report.verdict]}]{report.verdict.upper()}[/]: "
        f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail, "
        f"{counts['skip']} skip in {report.duration_s:.1f} s",
        highlight=False,
    )
