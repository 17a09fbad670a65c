"""Failover: a connection with alternate endpoints moves to the next one, and comes back.

A connection may list ``endpoints`` (docs/failover.md): the preferred one
first, then alternates. `Endpoints` keeps which one is active and what each
last did; the supervisor asks it before each connect attempt which config to
use (`Endpoints.prepare`, which re-points the one driver object through the
driver-neutral `edgelink.connection.Connection.use_endpoint`) and tells it of
each failed attempt (`Endpoints.attempt_failed`):

- the active endpoint is left after ``failover_after`` failed attempts, or at
  once after a *hard* failure (`is_hard_failure`: refused, host or network
  unreachable): the peer said there is nobody, retrying it first helps no one;
- the next endpoint is tried at once (no backoff between endpoints); the
  backoff applies per *round*, a pass over every endpoint: retries of one
  endpoint and the start of the next round wait ``backoff.delay(round)``;
- ``reconnect_max_attempts`` counts every failed attempt on any endpoint, so
  suspension comes after that many attempts over the set, as for one endpoint.

Failback: while connected to an alternate, the preferred endpoint is probed
every ``failback_probe_interval`` by a driver of its own (a real connect and
health check, with the driver's ``probe_overrides``: no subscriptions, never
reporting data, closed after each probe). Once the probes have succeeded for
``failback_after`` seconds without a failure in between, and no failback
happened within ``failback_holdoff`` (the hysteresis: a flapping primary
causes at most one failback per window), the supervisor is asked to drop the
link (`WakeableLink` ``failback()``); its next attempt goes to the preferred
endpoint. The old link is closed before the new one opens: there are never
two links carrying data for one connection.

`Endpoints` is also a `edgelink.supervisor.specs.LinkObserver` (it starts and
stops the failback probe on ``on_link_up`` / ``on_link_down``); the manager
chains it with fleet recovery (`edgelink.supervisor.specs.LinkObservers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final, Protocol

from edgelink._tasks import cancel_and_wait
from edgelink.clock import Clock
from edgelink.connection import AnyConnection, DriverAdapter
from edgelink.errors import ConfigError, Verdict
from edgelink.redact import redact_text
from edgelink.settings import ConnectionSettings
from edgelink.state import Reason
from edgelink.supervisor.policy import WaitKind, describe
from edgelink.supervisor.specs import WakeableLink

__all__ = [
    "ENDPOINT_INDEX",
    "ENDPOINT_LABEL",
    "Endpoint",
    "Endpoints",
    "FailbackLink",
    "Switch",
    "check_endpoints",
    "endpoint_configs",
    "endpoint_label",
    "is_hard_failure",
    "make_probe",
]

logger = logging.getLogger("edgelink.supervisor")

#: Datapoint metadata key: the label of the endpoint the value came from.
ENDPOINT_LABEL: Final = "endpoint"
#: Datapoint metadata key: that endpoint's index in ``endpoints`` (0: preferred).
ENDPOINT_INDEX: Final = "endpoint_index"
#: OS errors that say the endpoint cannot be reached at all.
_UNREACHABLE: Final = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH})

#: ``probe() -> bool``: one real connect and health check of the preferred endpoint.
Probe = Callable[[], Awaitable[bool]]


class FailbackLink(Protocol):
    """The supervisor as failover sees it."""

    @property
    def connection_id(self) -> str:
        """The connection's id."""

    def failback(self) -> None:
        """Drop the link (closed first) and connect again at once: to the preferred endpoint."""


def is_hard_failure(exc: BaseException, verdict: Verdict) -> bool:
    """Return True if a failed attempt means "nobody there": fail over at once.

    Hard: the peer refused the connection (``classify`` reason ``refused``), or
    an `OSError` along the cause chain says the host or network is
    unreachable. A timeout, a reset or a failed health check is not hard: the
    endpoint may be slow or restarting, so it gets ``failover_after`` tries.
    """
    if verdict.reason == Reason.REFUSED:
        return True
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _UNREACHABLE:
            return True
        cur = cur.__cause__ or getattr(cur, "cause", None)
    return False


def endpoint_label(config: Mapping[str, Any], index: int) -> str:
    """Return how an endpoint is shown: its ``name``, else its address, else ``#<index>``.

    Example:
        >>> endpoint_label({"host": "10.0.0.7", "port": 502}, 0)
        '10.0.0.7:502'
        >>> endpoint_label({"port": "/dev/ttyUSB1"}, 1)
        '/dev/ttyUSB1'
    """
    name = config.get(NAME_KEY)
    if isinstance(name, str) and name:
        return name
    host, port = config.get("host"), config.get("port")
    if isinstance(host, str) and host:
        return f"{host}:{port}" if isinstance(port, int) else host
    url = config.get("base_url")
    if isinstance(url, str) and url:
        return redact_text(url)
    if isinstance(port, str) and port:
        return port
    net_id = config.get("ams_net_id")
    if isinstance(net_id, str) and net_id:
        return net_id
    return f"#{index}"


#: An ``endpoints`` entry's own key: the endpoint's label, not a driver field.
NAME_KEY: Final = "name"


def endpoint_configs(
    config: Mapping[str, Any], endpoints: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Return each endpoint's whole driver config: ``config`` with the entry's fields over it.

    No ``endpoints``: the one config, as it is (the single-endpoint form).
    """
    if not endpoints:
        return [dict(config)]
    return [{**config, **{k: v for k, v in entry.items() if k != NAME_KEY}} for entry in endpoints]


def check_endpoints(
    connection_id: str,
    type_name: str,
    endpoints: Sequence[Mapping[str, Any]],
    fields: frozenset[str] | None,
    configs: Sequence[Mapping[str, Any]],
) -> None:
    """Check the shape of a connection's ``endpoints``; the driver checks each config after.

    Args:
        connection_id: The connection.
        type_name: Its driver type.
        endpoints: The entries as written.
        fields: The driver's ``endpoint_fields`` (None: any key).
        configs: `endpoint_configs` of them.

    Raises:
        ConfigError: naming ``connections.<id>.endpoints[<i>].<field>`` and why,
            for every bad entry at once.
    """
    where = f"connections.{connection_id}.endpoints"
    errors: list[tuple[str, str]] = []
    if fields is not None and not fields:
        errors.append((where, f"a {type_name} connection has no endpoint to fail over"))
    else:
        allowed = ", ".join(sorted(fields)) if fields is not None else ""
        for i, entry in enumerate(endpoints):
            name = entry.get(NAME_KEY)
            if NAME_KEY in entry and not (isinstance(name, str) and name):
                errors.append((f"{where}[{i}].{NAME_KEY}", "must be a non-empty string"))
            keys = [k for k in entry if k != NAME_KEY]
            if fields is not None:
                errors.extend(
                    (
                        f"{where}[{i}].{key}",
                        f"{key!r} is not an endpoint field of {type_name}; "
                        f"an endpoint may set: {allowed}",
                    )
                    for key in keys
                    if key not in fields
                )
            if i and not keys:
                errors.append(
                    (
                        f"{where}[{i}]",
                        "an alternate endpoint must set a field that differs from config"
                        + (f" ({allowed})" if allowed else ""),
                    )
                )
            for j in range(i):
                if configs[j] == configs[i] and (i == 0 or keys):
                    errors.append((f"{where}[{i}]", f"is the same endpoint as endpoints[{j}]"))
                    break
    if errors:
        path, message = errors[0]
        raise ConfigError(message, path=path, errors=errors, connection_id=connection_id)


@dataclass(slots=True)
class Endpoint:
    """One endpoint of a connection and what it last did."""

    index: int
    label: str
    #: The driver's whole config for this endpoint.
    config: dict[str, Any]
    #: ``ok``, or the reason of the last failure (``refused``, ``timeout``...).
    last_result: str | None = None
    last_error: str | None = None
    #: Wall-clock time of the last result.
    last_at: float | None = None
    #: Where the last result came from: ``link`` (an attempt) or ``probe`` (failback).
    last_source: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the status entry of this endpoint."""
        return {
            "index": self.index,
            "label": self.label,
            "last_result": self.last_result,
            "last_error": self.last_error,
            "last_at": self.last_at,
            "last_source": self.last_source,
        }


@dataclass(frozen=True, slots=True)
class Switch:
    """A move from one endpoint to another: what the ``failover``/``failback`` event says."""

    kind: str
    old: Endpoint
    new: Endpoint
    reason: str
    attempts: int
    #: The failure was hard (refused, unreachable): no more tries on that endpoint.
    hard: bool = False

    def event_data(self) -> dict[str, Any]:
        """Return the fields of the event."""
        return {
            "from_endpoint": self.old.label,
            "from_index": self.old.index,
            "to_endpoint": self.new.label,
            "to_index": self.new.index,
            "reason": self.reason,
            "attempts": self.attempts,
            "hard": self.hard,
        }


class Endpoints:
    """The endpoints of one connection: which is active, when to move, when to come back.

    Example:
        eps = Endpoints("plc_1", [Endpoint(0, "a", cfg_a), Endpoint(1, "b", cfg_b)],
                        settings, clock=clock, probe=probe)
        sup = Supervisor(driver, settings, ..., endpoints=eps,
                         observer=LinkObservers(fleet, eps))

    Runs on the event loop; the supervisor calls it from its main task.
    """

    __slots__ = (
        "_applied",
        "_clock",
        "_failing_back",
        "_healthy_since",
        "_last_failback",
        "_link",
        "_on_active",
        "_pending_failback",
        "_probe",
        "_probe_task",
        "_round_start",
        "_skip_wait",
        "_tries",
        "active",
        "connection_id",
        "endpoints",
        "failbacks",
        "failovers",
        "link_metadata",
        "probes",
        "rounds",
        "settings",
    )

    def __init__(
        self,
        connection_id: str,
        endpoints: Sequence[Endpoint],
        settings: ConnectionSettings,
        *,
        clock: Clock,
        probe: Probe | None = None,
        on_active: Callable[[Endpoints], None] | None = None,
    ) -> None:
        if len(endpoints) < 2:
            raise ValueError("failover needs two endpoints or more")
        self.connection_id = connection_id
        self.endpoints = tuple(endpoints)
        self.settings = settings
        self._clock = clock
        self._probe = probe
        #: Called when the endpoint of a new link differs from the last one (fleet regrouping).
        self._on_active = on_active
        #: The index of the endpoint attempts go to.
        self.active = 0
        #: The index the driver was last pointed at (0: as constructed).
        self._applied = 0
        #: Failed attempts on the active endpoint since it became active.
        self._tries = 0
        #: Full passes over the set that failed since the last success.
        self.rounds = 0
        #: The endpoint the current round started at.
        self._round_start = 0
        #: The next attempt follows a switch inside a round: no backoff wait.
        self._skip_wait = False
        self._pending_failback: str | None = None
        #: The attempt under way is the failback's: if it fails, go back at once.
        self._failing_back = False
        self._healthy_since: float | None = None
        self._last_failback: float | None = None
        self._link: FailbackLink | None = None
        self._probe_task: asyncio.Task[None] | None = None
        #: ``{endpoint, endpoint_index}`` of the current link: one dict per link,
        #: shared by its datapoints' metadata (read-only).
        self.link_metadata: dict[str, Any] = {
            ENDPOINT_LABEL: self.endpoints[0].label,
            ENDPOINT_INDEX: 0,
        }
        self.failovers = 0
        self.failbacks = 0
        self.probes = 0

    def __repr__(self) -> str:
        return (
            f"<Endpoints {self.connection_id} active={self.active_endpoint.label} "
            f"failovers={self.failovers} failbacks={self.failbacks}>"
        )

    @property
    def active_endpoint(self) -> Endpoint:
        """The endpoint attempts go to."""
        return self.endpoints[self.active]

    # -- asked by the supervisor's main task -----------------------------------

    def prepare(self, connection: AnyConnection) -> Switch | None:
        """Point ``connection`` at the active endpoint before an attempt (the link is closed).

        Returns:
            The failback that takes effect now, if one was asked for (the
            supervisor emits ``failback``); else None.
        """
        switch = None
        if self._pending_failback is not None:
            old = self.active_endpoint
            self.active = 0
            self._tries = 0
            self._skip_wait = False
            self._round_start = 0
            self.failbacks += 1
            self._last_failback = self._clock.monotonic()
            switch = Switch("failback", old, self.endpoints[0], self._pending_failback, 0)
            self._pending_failback = None
            self._failing_back = True
            if self._on_active is not None:
                self._on_active(self)
        if self._applied != self.active:
            connection.use_endpoint(self.active_endpoint.config)
            self._applied = self.active
        return switch

    def attempt_failed(
        self, error: BaseException, verdict: Verdict, attempts: int
    ) -> Switch | None:
        """Record a failed attempt on the active endpoint; return the failover it causes, if any.

        Args:
            error: What the attempt raised.
            verdict: Its `classify` verdict.
            attempts: The supervisor's failed-attempt count after this one.
        """
        ep = self.active_endpoint
        self._record(ep, verdict.reason, describe(error), "link")
        self._tries += 1
        # A failed failback goes back to the link that worked at once.
        hard = is_hard_failure(error, verdict) or self._failing_back
        self._failing_back = False
        if not hard and self._tries < self.settings.failover_after:
            self._skip_wait = False
            return None
        old = ep
        self.active = (self.active + 1) % len(self.endpoints)
        self._tries = 0
        self.failovers += 1
        if self.active == self._round_start:
            # A full pass over the set failed: the next round waits its backoff.
            self.rounds += 1
            self._skip_wait = False
        else:
            self._skip_wait = True
        if self._on_active is not None:
            self._on_active(self)
        return Switch("failover", old, self.active_endpoint, verdict.reason, attempts, hard=hard)

    def wait_attempts(self) -> int | None:
        """Return the attempt count the next backoff is computed from, or None for no wait.

        None right after a switch inside a round (the next endpoint is tried at
        once); else the number of failed rounds since the link was last up, so
        the delay grows per pass over the set, not per attempt: retries of one
        endpoint in the first round wait ``reconnect_initial_delay`` each.
        """
        if self._skip_wait:
            return None
        return self.rounds

    def attempt_ok(self) -> None:
        """The attempt on the active endpoint worked: the link is up."""
        ep = self.active_endpoint
        self._record(ep, "ok", None, "link")
        self._failing_back = False
        self._tries = 0
        self.rounds = 0
        self._round_start = self.active
        self._skip_wait = False
        if self.link_metadata[ENDPOINT_INDEX] != self.active:
            self.link_metadata = {ENDPOINT_LABEL: ep.label, ENDPOINT_INDEX: ep.index}
            if self._on_active is not None:
                self._on_active(self)

    def reset(self) -> None:
        """Start over at the preferred endpoint (restart, resume)."""
        self._pending_failback = None
        if self.active != 0:
            self.active = 0
        self._tries = 0
        self.rounds = 0
        self._round_start = 0
        self._skip_wait = False

    def _record(self, ep: Endpoint, result: str, error: str | None, source: str) -> None:
        ep.last_result = result
        ep.last_error = error
        ep.last_at = self._clock.time()
        ep.last_source = source

    def status(self) -> dict[str, Any]:
        """Return the ``endpoints`` part of the connection's status."""
        active = self.active_endpoint
        return {
            "active": active.label,
            "active_index": active.index,
            "preferred": self.endpoints[0].label,
            "failovers": self.failovers,
            "failbacks": self.failbacks,
            "failback": self.settings.failback,
            "probes": self.probes,
            "healthy_since": self._healthy_since,
            "list": [ep.as_dict() for ep in self.endpoints],
        }

    # -- LinkObserver: the failback probe runs while an alternate carries the link --

    def on_wait(self, link: WakeableLink, kind: WaitKind, delay: float) -> None:
        """Waits are no concern of failover."""

    def on_wait_end(self, link: WakeableLink) -> None:
        """Waits are no concern of failover."""

    def attach(self, link: FailbackLink) -> None:
        """Bind the supervisor whose link a failback drops (it calls this itself)."""
        self._link = link

    def on_link_up(self, link: WakeableLink, failed_attempts: int) -> None:
        """Start probing the preferred endpoint if the link is up on an alternate."""
        if self.active == 0 or not self.settings.failback or self._probe is None:
            return
        self._stop_probe()
        self._healthy_since = None
        self._probe_task = asyncio.get_running_loop().create_task(
            self._run_failback_probe(), name=f"edgelink[{self.connection_id}].failback"
        )

    def on_link_down(self, link: WakeableLink, reason: str) -> None:
        """Stop probing: the link is gone (the next one decides again)."""
        self._stop_probe()

    def _stop_probe(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def close(self) -> None:
        """End the probe task and wait for it (the connection is removed or stopped)."""
        task, self._probe_task = self._probe_task, None
        if task is not None and not task.done():
            await cancel_and_wait(task, timeout=self.settings.connect_timeout + 1.0)

    async def _run_failback_probe(self) -> None:
        s = self.settings
        probe = self._probe
        assert probe is not None  # on_link_up checked it
        clock = self._clock
        preferred = self.endpoints[0]
        while True:
            await clock.sleep(s.failback_probe_interval)
            try:
                ok = await probe()
                error = None if ok else "health check failed"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed probe is a result, not a crash
                ok, error = False, describe(exc)
            now = clock.monotonic()
            self.probes += 1
            self._record(preferred, "ok" if ok else "probe_failed", error, "probe")
            if not ok:
                if self._healthy_since is not None:
                    logger.debug("%s: preferred endpoint probe failed", self.connection_id)
                self._healthy_since = None
                continue
            if self._healthy_since is None:
                self._healthy_since = now
            # (A microsecond of slack: probe times are sums of float intervals.)
            if now - self._healthy_since < s.failback_after - 1e-6:
                continue
            last = self._last_failback
            if last is not None and now - last < s.failback_holdoff:
                continue  # hysteresis: at most one failback per window
            link = self._link
            if link is None:
                return
            self._pending_failback = (
                f"preferred healthy {now - self._healthy_since:g} s (probed {self.probes} times)"
            )
            self._probe_task = None
            link.failback()
            return


def make_probe(
    build: Callable[[], AnyConnection], executor: Executor | None, *, timeout: float
) -> Probe:
    """Return a `Probe` that builds a fresh driver with ``build()`` for each probe.

    The driver is attached to nobody, so whatever it might report goes
    nowhere; it is connected, health-checked within ``timeout`` seconds and
    disconnected again, whatever happened.

    A probe never passes the manager's connect admission
    (``max_concurrent_connects``): it neither takes nor waits for a slot
    meant for real connects (a fleet coming back after an outage must not
    queue behind probes, nor a probe behind it), and it is no attempt of the
    connection: no ``reconnect_*`` event, no change of its attempt count, its
    stats or its fleet group. At most one probe per connection is in flight,
    so probes are bounded by the number of connections. The failback that
    follows is an ordinary attempt and does pass the admission.
    """

    async def probe() -> bool:
        adapter = DriverAdapter(build(), executor)
        try:
            async with asyncio.timeout(timeout):
                await adapter.connect()
                return await adapter.health_check()
        finally:
            # Shielded: a cancelled probe must still release its socket.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(adapter.disconnect())

    return probe
