"""Fleet-aware recovery: a link that comes back cuts its siblings' backoff short.

When a switch, a gateway or a whole site goes away, every connection behind
it fails together and backs off on its own schedule; after the outage each
would wait out its own (by then seconds-long) delay. Here connections are put
in *recovery groups* (the rules are in ``docs/recovery.md`` and
`recovery_group_key`); when one member reaches ``connected`` after at least
one failed attempt, the siblings that are waiting out a backoff (or a
suspension's cooldown) are woken to try now, spread over a window so that the
herd stays bounded:

- the woken siblings are shuffled into one manager-wide queue, and one pacer
  wakes them one per slot of ``window / k`` (``window = max(fleet_wake_window,
  k / fleet_wake_rate)``), at a random point of the slot: at most ``rate x 0.1
  s + 1`` attempts start per 100 ms, also when wakes overlap (another group
  back, or this one back in parts: they queue) and when the loop runs late
  (the pacer does not catch up in a burst); every attempt still passes the
  manager's connect admission;
- a connection is woken at most once per ``fleet_wake_holdoff``: a member
  that is still down costs the group one extra attempt per holdoff, however
  many siblings come back;
- a woken attempt is an ordinary attempt: a failure counts once and the next
  backoff follows from the attempt counter as before; only a success resets it
  (after ``stable_after``, as always).

While two or more members of a group wait out a backoff, one of them is
woken every ``fleet_probe_interval`` (or every longest backoff / members
waiting, if that is longer: never more often than those members would try at
their longest backoff), so the group notices within about an interval that
its path is back, whatever point of their backoff the members have reached.

Hold-downs of flapping links and the probes of sleeping devices are not cut
short: they are about that one device, not about the path to it.

`FleetRecovery` is the `edgelink.supervisor.specs.LinkObserver` the manager
gives every supervisor; it knows nothing of the manager and is driven by the
supervisors' hooks and the injectable clock.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import random
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from edgelink.clock import Clock, TimerHandle
from edgelink.supervisor.policy import WaitKind
from edgelink.supervisor.specs import WakeableLink

__all__ = [
    "WAKEABLE",
    "FleetRecovery",
    "recovery_endpoint",
    "recovery_group_key",
]

#: The waits a sibling's recovery cuts short.
WAKEABLE: Final = frozenset({WaitKind.BACKOFF, WaitKind.COOLDOWN})
#: IPv6 addresses are grouped by this prefix in ``subnet`` scope (one site's LAN).
IPV6_SUBNET_PREFIX: Final = 64
#: Groups listed by `FleetRecovery.snapshot`, the largest first.
SNAPSHOT_GROUPS: Final = 20


def _host_key(host: str, *, scope: str, prefix: int) -> str:
    text = host.strip().strip("[]").lower()
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        # A name: grouped by the name (resolving it would be I/O at config time,
        # and names behind one load balancer are one path anyway).
        return f"host:{text}"
    if scope == "subnet":
        bits = prefix if address.version == 4 else IPV6_SUBNET_PREFIX
        return f"subnet:{ipaddress.ip_network(f'{address}/{bits}', strict=False)}"
    return f"host:{address}"


def recovery_endpoint(cfg: Any, config: Mapping[str, Any]) -> tuple[str, str] | None:
    """Return where a driver's link goes, as ``(kind, address)``, or None if nowhere.

    ``cfg`` is the driver's validated config model (None for a driver that
    reads its dict itself), ``config`` the raw dict. A ``host`` is a network
    peer (``("host", host)``); an ``http`` driver's ``base_url`` gives its
    host; a ``port`` that is a path (serial, Modbus RTU) is a line
    (``("line", path)``). Anything else (a simulated or in-process driver) has
    no endpoint and is in no group.
    """

    def field(name: str) -> Any:
        return getattr(cfg, name, None) if cfg is not None else config.get(name)

    host = field("host")
    if isinstance(host, str) and host.strip():
        return ("host", host)
    url = field("base_url")
    if isinstance(url, str):
        try:
            name = urlsplit(url).hostname
        except ValueError:
            name = None
        if name:
            return ("host", name)
    port = field("port")
    if isinstance(port, str) and port.strip():
        return ("line", port)
    return None


def recovery_group_key(
    endpoint: tuple[str, str] | None,
    *,
    enabled: bool = True,
    group: str | None = None,
    scope: str = "host",
    subnet_prefix: int = 24,
) -> str | None:
    """Return the recovery group of a connection, or None for none.

    Example:
        >>> recovery_group_key(("host", "10.0.0.7"), scope="subnet")
        'subnet:10.0.0.0/24'
        >>> recovery_group_key(("host", "10.0.0.7"))
        'host:10.0.0.7'
        >>> recovery_group_key(None, group="hall-3")
        'group:hall-3'

    Args:
        endpoint: What `recovery_endpoint` found.
        enabled: ``fleet_recovery``; False: in no group.
        group: ``recovery_group``: a name that overrides the endpoint.
        scope: ``recovery_scope``: ``host`` or ``subnet``.
        subnet_prefix: ``recovery_subnet_prefix``, for IPv4 in ``subnet`` scope.
    """
    if not enabled:
        return None
    if group:
        return f"group:{group}"
    if endpoint is None:
        return None
    kind, address = endpoint
    if kind == "host":
        return _host_key(address, scope=scope, prefix=subnet_prefix)
    return f"{kind}:{address}"


class _Group:
    """One recovery group: who is in it, who is up, who waits, who is about to be woken."""

    __slots__ = (
        "in_backoff",
        "key",
        "last_wake_at",
        "members",
        "pending",
        "probe",
        "probe_since",
        "probes",
        "up",
        "waiting",
        "wakes",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.members = 0
        #: Members whose link is up.
        self.up: set[str] = set()
        #: connection id -> the link, its wait and how long, while it waits a wakeable wait.
        self.waiting: dict[str, tuple[WakeableLink, WaitKind, float]] = {}
        #: How many of them wait out a backoff (the probe's candidates).
        self.in_backoff = 0
        #: connection id -> the ticket of its place in the wake-up queue.
        self.pending: dict[str, int] = {}
        self.wakes = 0
        self.last_wake_at: float | None = None
        #: The probe timer, while members wait out a backoff.
        self.probe: TimerHandle | None = None
        #: Monotonic time of the last probe (or since members back off together).
        self.probe_since: float | None = None
        self.probes = 0


class FleetRecovery:
    """Wakes the waiting siblings of a link that came back (see the module docstring).

    Example:
        fleet = FleetRecovery(clock, on_wake=print)
        fleet.join("plc_1", "host:10.0.0.7")
        supervisor = Supervisor(..., observer=fleet)

    Args:
        clock: The clock the wake-up slots are timed on.
        rate: Woken attempts per second at most (``fleet_wake_rate``).
        window: The shortest window a wake is spread over, s (``fleet_wake_window``).
        holdoff: A connection is woken at most once per this, s (``fleet_wake_holdoff``).
        probe_interval: While no member is up, one member in backoff is woken
            at most this often, s (``fleet_probe_interval``); None: no probes.
        on_wake: Called once per wake with its record (the manager emits ``fleet_wake``).
        rng: The random source (injectable for exact tests).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        rate: float = 400.0,
        window: float = 0.3,
        holdoff: float = 1.0,
        probe_interval: float | None = 0.25,
        on_wake: Callable[[dict[str, Any]], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self.configure(rate=rate, window=window, holdoff=holdoff, probe_interval=probe_interval)
        self._on_wake = on_wake
        self._rng = rng or random.Random()
        self._groups: dict[str, _Group] = {}
        self._group_of: dict[str, _Group] = {}
        #: connection id -> monotonic time it was last woken (bounded by the members).
        self._woken_at: dict[str, float] = {}
        #: Siblings to wake, in order: (group, connection id, ticket, gap after it).
        self._queue: collections.deque[tuple[_Group, str, int, float]] = collections.deque()
        self._tickets = 0
        self._pacer: TimerHandle | None = None
        #: Monotonic start of the pacer's current slot.
        self._beat = 0.0
        #: Monotonic time the queue is expected to be through (the ``delay`` of a wake).
        self._slots_end = float("-inf")
        #: Wakes (one per recovery that woke anyone), siblings woken, and wake-ups
        #: held back by the holdoff.
        self.wakes = 0
        self.woken = 0
        self.held_back = 0
        #: Members woken as a down group's probe.
        self.probes = 0

    def configure(
        self, *, rate: float, window: float, holdoff: float, probe_interval: float | None
    ) -> None:
        """Set the spread, the holdoff and the probe pace (the manager's settings; a reload too)."""
        if rate <= 0 or window < 0 or holdoff < 0 or (probe_interval or 1) <= 0:
            raise ValueError(
                f"bad fleet wake settings: rate={rate} window={window} {holdoff=} {probe_interval=}"
            )
        self.rate = rate
        self.window = window
        self.holdoff = holdoff
        self.probe_interval = probe_interval

    @property
    def clock(self) -> Clock:
        """The clock the wake-ups and probes are timed on."""
        return self._clock

    def __repr__(self) -> str:
        return f"<FleetRecovery groups={len(self._groups)} wakes={self.wakes} woken={self.woken}>"

    def join(self, connection_id: str, key: str | None) -> None:
        """Put a connection in group ``key`` (None: in none). A second join moves it."""
        self.leave(connection_id)
        if key is None:
            return
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key)
        group.members += 1
        self._group_of[connection_id] = group

    def leave(self, connection_id: str) -> None:
        """Take a connection out of its group (removed or reconfigured)."""
        group = self._group_of.pop(connection_id, None)
        self._woken_at.pop(connection_id, None)
        if group is None:
            return
        self._forget_wait(group, connection_id)
        group.up.discard(connection_id)
        group.members -= 1
        if group.members <= 0:
            if group.probe is not None:
                group.probe.cancel()
                group.probe = None
            del self._groups[group.key]

    def group_of(self, connection_id: str) -> str | None:
        """Return the recovery group of a connection, or None."""
        group = self._group_of.get(connection_id)
        return group.key if group is not None else None

    # -- LinkObserver -------------------------------------------------------

    def on_wait(self, link: WakeableLink, kind: WaitKind, delay: float) -> None:
        """Note a link waiting before its next attempt (only wakeable waits count)."""
        if kind not in WAKEABLE:
            return
        cid = link.connection_id
        group = self._group_of.get(cid)
        if group is None:
            return
        self._forget_wait(group, cid)
        group.waiting[cid] = (link, kind, delay)
        if kind is not WaitKind.BACKOFF:
            return
        group.in_backoff += 1
        if group.probe is None and group.in_backoff > 1 and self.probe_interval is not None:
            if group.probe_since is None:
                group.probe_since = self._clock.monotonic()
            self._arm_probe(group, self.probe_interval)

    def on_wait_end(self, link: WakeableLink) -> None:
        """Forget the wait (and a wake-up still to come for it)."""
        group = self._group_of.get(link.connection_id)
        if group is not None:
            self._forget_wait(group, link.connection_id)

    def on_link_down(self, link: WakeableLink, reason: str) -> None:
        """A member's link is gone (lost, stopped or suspended)."""
        group = self._group_of.get(link.connection_id)
        if group is not None:
            group.up.discard(link.connection_id)

    def on_link_up(self, link: WakeableLink, failed_attempts: int) -> None:
        """A member is back after failing: wake its waiting siblings, spread out."""
        cid = link.connection_id
        group = self._group_of.get(cid)
        if group is None:
            return
        group.up.add(cid)
        if failed_attempts < 1 or not group.waiting:
            return
        now = self._clock.monotonic()
        woken_at = self._woken_at
        holdoff = self.holdoff
        candidates: list[str] = []
        held = 0
        for sibling in group.waiting:
            if sibling == cid or sibling in group.pending:
                continue
            last = woken_at.get(sibling)
            if last is not None and now - last < holdoff:
                held += 1
                continue
            candidates.append(sibling)
        self.held_back += held
        if not candidates:
            return
        rng = self._rng
        rng.shuffle(candidates)
        count = len(candidates)
        window = max(self.window, count / self.rate)
        gap = window / count
        # One queue and one pacer for the manager: a wake that comes while
        # earlier ones still queue (another group back, or this one back in
        # parts) goes after them, so wakes that overlap never exceed the rate.
        start = max(0.0, self._slots_end - now)
        self._slots_end = now + start + window
        queue = self._queue
        for sibling in candidates:
            woken_at[sibling] = now
            ticket = self._tickets = self._tickets + 1
            group.pending[sibling] = ticket
            queue.append((group, sibling, ticket, gap))
        if self._pacer is None:
            self._beat = now
            self._pacer = self._clock.call_later(gap * rng.random(), self._run_pacer)
        self.wakes += 1
        group.wakes += 1
        group.last_wake_at = self._clock.time()
        if self._on_wake is not None:
            self._on_wake(
                {
                    "group": group.key,
                    "count": count,
                    "trigger": cid,
                    "window": round(window, 4),
                    "delay": round(start, 4),
                    "held_back": held,
                }
            )

    def _run_pacer(self) -> None:
        """Wake the next sibling in the queue; come back at a random point of the next slot.

        Slots are one gap long, back to back, one wake-up each: at most
        ``rate x 0.1 s + 1`` per 100 ms. A loop that ran past the next slot
        starts the slots again from now rather than catching up in a burst.
        """
        self._pacer = None
        queue = self._queue
        gap = 0.0
        while queue:
            group, cid, ticket, gap = queue.popleft()
            if group.pending.get(cid) != ticket:
                continue  # its wait ended already, or it left the group
            del group.pending[cid]
            entry = group.waiting.get(cid)
            if entry is not None and entry[0].wake():
                self.woken += 1
            break
        if queue:
            now = self._clock.monotonic()
            self._beat = max(self._beat + gap, now)
            delay = self._beat - now + gap * self._rng.random()
            self._pacer = self._clock.call_later(delay, self._run_pacer)

    def close(self) -> None:
        """Cancel every timer (the manager stops); the counters stay."""
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None
        self._queue.clear()
        for group in self._groups.values():
            group.pending.clear()
            if group.probe is not None:
                group.probe.cancel()
                group.probe = None
            group.probe_since = None

    def _arm_probe(self, group: _Group, delay: float) -> None:
        group.probe = self._clock.call_later(delay, functools.partial(self._probe, group))

    def _probe(self, group: _Group) -> None:
        """Wake one member of those in backoff, if it is time; then look again later.

        Members back off together: one of them is tried every so often, so that
        the group learns within about an interval that its path is back,
        whatever point of their backoff the members are at; never more often
        than those members would try at their longest backoff.
        """
        group.probe = None
        interval = self.probe_interval
        if group.in_backoff < 2 or interval is None or group.probe_since is None:
            group.probe_since = None  # the next wait in backoff starts again
            return
        candidates: list[WakeableLink] = []
        longest = 0.0
        for cid, (link, kind, delay) in group.waiting.items():
            if kind is WaitKind.BACKOFF:
                longest = max(longest, delay)
                if cid not in group.pending:
                    candidates.append(link)
        pace = max(interval, longest / group.in_backoff)
        now = self._clock.monotonic()
        due = group.probe_since + pace
        if now < due:
            self._arm_probe(group, min(interval, due - now))
            return
        group.probe_since = now
        if candidates and self._rng.choice(candidates).wake():
            self.probes += 1
            group.probes += 1
        self._arm_probe(group, interval)

    @staticmethod
    def _forget_wait(group: _Group, connection_id: str) -> None:
        entry = group.waiting.pop(connection_id, None)
        if entry is not None and entry[1] is WaitKind.BACKOFF:
            group.in_backoff -= 1
        # Its place in the wake-up queue is skipped by the pacer.
        group.pending.pop(connection_id, None)

    def snapshot(self) -> dict[str, Any]:
        """Return the counters and the largest groups, for the status."""
        largest = sorted(self._groups.values(), key=lambda g: (-g.members, g.key))
        return {
            "groups": len(self._groups),
            "wakes": self.wakes,
            "woken": self.woken,
            "held_back": self.held_back,
            "probes": self.probes,
            "largest": [
                {
                    "group": g.key,
                    "members": g.members,
                    "up": len(g.up),
                    "waiting": len(g.waiting),
                    "probes": g.probes,
                    "wakes": g.wakes,
                    "last_wake_at": g.last_wake_at,
                }
                for g in largest[:SNAPSHOT_GROUPS]
            ],
        }
