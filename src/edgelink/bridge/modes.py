"""The bridge's payload modes: per datapoint or per poll group, deadband, rate limit.

The default (``bridge.mode: "datapoint"``, no deadband, no rate limit, no
rules) is not handled here at all: the bridge then turns each datapoint into
its message directly (`MqttBridge._point_message`), as it always did. When
anything else is configured, `PayloadModes` sits between the data space and
the bridge's memory queue:

- **policy**: the first rule of ``bridge.modes`` whose ``match`` (a glob on
  the connection id) and ``tags`` (a glob on the tag) match an address decides
  its mode, deadband, heartbeat and minimum interval; what the rule leaves out
  comes from the ``bridge`` section. Resolved once per address and kept with
  its state.
- **deadband** (report by exception): a value goes out when it moved by at
  least ``max(absolute, percent * |last sent| / 100)`` from the last value
  that went out (a number; anything else when it differs), when its quality
  changed (a stale or bad update always goes out), or when the last one went
  out ``heartbeat_s`` ago or longer (checked when a value arrives: a source
  that stops delivering is marked stale, which goes out). Held-back values
  are counted in ``suppressed``.
- **group**: what one connection delivers in one event-loop turn (the good
  values of one poll round come as one batch, in one turn, with one
  timestamp; so do the stale updates of a lost link) becomes one message to
  ``{base}/{source}`` (`encode_group_topic`)::

      {"ts": 1733356800.1, "quality": "good", "values": {"hr:0": 1, "hr:1": 2}}

  ``ts`` is the newest timestamp of the group and ``quality`` the worst
  (``bad`` > ``stale`` > ``uncertain`` > ``good``); a tag that is not good or
  whose ``ts`` differs has an entry in ``"tags"`` with its own ``ts``,
  ``quality`` and, when known, ``reason`` and ``since``.
- **rate limit** (``min_interval_s``): per topic (a datapoint's, or a group's),
  at most one message per interval; a message that comes sooner waits, a newer
  one replaces it (a group: merged, the newer value of a tag wins) and is
  counted in ``coalesced``; it goes out when its interval has passed. One timer
  (`Clock.call_later`) serves every waiting topic.

Everything kept per address or per group is bounded by ``bridge.state_items``
(least recently used first, counted in ``mode_state_evicted``); a state with a
message waiting is sent on eviction, never dropped.
"""

from __future__ import annotations

import fnmatch
import heapq
import json
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgelink.bridge.topics import TopicError, encode_group_topic
from edgelink.router.datapoint import DataPoint, quality_detail

if TYPE_CHECKING:
    import asyncio

    from edgelink.bridge.settings import BridgeSettings, ModeRule
    from edgelink.clock import Clock, TimerHandle
    from edgelink.router.wire import WireEncoder

__all__ = ["PayloadModes", "Policy"]

#: Qualities from best to worst: a group's quality is its worst tag's.
_RANK = {"good": 0, "uncertain": 1, "stale": 2, "bad": 3}
#: Integers this large or larger are not plain (int-to-text has a digit limit).
_BIG = 10**300


class Policy:
    """How one address goes to the broker (resolved once from the settings)."""

    __slots__ = ("absolute", "banded", "group", "heartbeat", "interval", "percent")

    def __init__(
        self,
        *,
        group: bool,
        absolute: float | None,
        percent: float | None,
        heartbeat: float | None,
        interval: float,
    ) -> None:
        self.group = group
        self.banded = absolute is not None or percent is not None
        self.absolute = absolute or 0.0
        self.percent = percent or 0.0
        self.heartbeat = heartbeat
        self.interval = interval

    def __repr__(self) -> str:
        mode = "group" if self.group else "datapoint"
        return (
            f"<Policy {mode} band={self.absolute if self.banded else None}/{self.percent}% "
            f"heartbeat={self.heartbeat} interval={self.interval}>"
        )

    def passes(self, value: Any, quality: str, last: _Point, now: float) -> bool:
        """Whether a value goes out past the deadband (see the module docstring)."""
        if last.quality is None or quality != last.quality:
            return True
        if self.heartbeat is not None and now - last.sent_at >= self.heartbeat:
            return True
        prev = last.value
        kind, prev_kind = type(value), type(prev)
        if (kind is int or kind is float) and (prev_kind is int or prev_kind is float):
            band = self.absolute
            if self.percent:
                band = max(band, abs(prev) * self.percent / 100.0)
            moved = abs(value - prev)
            return bool(moved >= band) if band > 0 else bool(moved != 0)
        try:
            return bool(value != prev)
        except Exception:  # noqa: BLE001 - a value with an odd __ne__ counts as changed
            return True


class _Point:
    """What the modes keep per address: its policy, deadband and rate-limit state."""

    __slots__ = ("due", "last_at", "pending", "policy", "quality", "sent_at", "tag", "value")

    def __init__(self, policy: Policy, tag: str) -> None:
        self.policy = policy
        self.tag = tag  # the address without its source (`DataPoint.tag`, computed once)
        self.value: Any = None
        self.quality: str | None = None  # None: nothing went out yet
        self.sent_at = 0.0  # when the deadband last let a value through
        self.last_at = -1e18  # when the rate limit last let a message out
        self.pending: DataPoint | None = None  # waiting for its interval
        self.due = 0.0  # a timer entry is waiting (0: none)


class _Group:
    """What the modes keep per grouped connection: its topic and rate-limit state."""

    __slots__ = ("due", "interval", "last_at", "pending", "source", "topic")

    def __init__(self, source: str, topic: str | None, interval: float) -> None:
        self.source = source
        self.topic = topic  # None: the connection id has no valid topic
        self.interval = interval
        self.last_at = -1e18
        self.pending: dict[str, DataPoint] | None = None
        self.due = 0.0


def _plain(value: Any) -> bool:
    """Whether ``value`` is a JSON scalar `json.dumps` writes as it is (the common case)."""
    kind = type(value)
    if kind is float:
        return bool(value - value == 0.0)  # NaN and infinities are not JSON
    if kind is int:
        return bool(-_BIG < value < _BIG)
    return kind is str or kind is bool or value is None


class PayloadModes:
    """Turns datapoints into messages by mode (see the module docstring).

    Args:
        settings: The bridge section (mode, deadband, heartbeat, rate limit, rules).
        base: The base topic.
        clock: The clock for heartbeats and rate limits (its ``call_later`` is the one timer).
        loop: The event loop (a group is closed at the end of its loop turn).
        encoder: The bridge's encoder (a value with no JSON form goes out as bad).
        point_message: The bridge's per-datapoint message (topic cache, dead letters).
        emit: Puts a ``(topic, payload)`` at the end of the bridge's pipeline.
        dead_letter: ``dead_letter(topic, payload, why)`` for a group with no valid topic.
    """

    def __init__(
        self,
        settings: BridgeSettings,
        base: str,
        *,
        clock: Clock,
        loop: asyncio.AbstractEventLoop,
        encoder: WireEncoder,
        point_message: Callable[[DataPoint], tuple[str, bytes] | None],
        emit: Callable[[str, bytes], None],
        dead_letter: Callable[[str, bytes, str], None],
    ) -> None:
        self._settings = settings
        self._base = base
        self._clock = clock
        self._loop = loop
        self._encoder = encoder
        self._point_message = point_message
        self._emit = emit
        self._dead_letter = dead_letter
        self._default = self._policy_of(None)
        self._rules = [
            (
                re.compile(fnmatch.translate(rule.match)),
                None if rule.tags == "*" else re.compile(fnmatch.translate(rule.tags)),
                self._policy_of(rule),
            )
            for rule in settings.modes
        ]
        self.max_items = settings.state_items
        self._points: OrderedDict[str, _Point] = OrderedDict()
        self._groups: OrderedDict[str, _Group] = OrderedDict()
        self._turn: dict[str, dict[str, DataPoint]] = {}  # this loop turn's groups
        self._timers: list[tuple[float, int, _Point | _Group]] = []  # (due, seq, state)
        self._timer_seq = 0
        self._timer: TimerHandle | None = None
        self._timer_at = 0.0
        self.suppressed = 0
        self.coalesced = 0
        self.groups = 0
        self.evicted = 0

    def __repr__(self) -> str:
        return (
            f"<PayloadModes points={len(self._points)} groups={len(self._groups)}/"
            f"{self.max_items} suppressed={self.suppressed} coalesced={self.coalesced}>"
        )

    def stats(self) -> dict[str, Any]:
        """Counters for the bridge's stats."""
        return {
            "suppressed": self.suppressed,
            "coalesced": self.coalesced,
            "group_messages": self.groups,
            "mode_state": len(self._points) + len(self._groups),
            "mode_state_evicted": self.evicted,
        }

    def policy(self, source: str, tag: str) -> Policy:
        """Return the policy of ``source.tag``: the first matching rule's, else the defaults.

        One `Policy` per rule, shared by the addresses it matches.
        """
        for source_re, tags_re, policy in self._rules:
            if source_re.match(source) and (tags_re is None or tags_re.match(tag)):
                return policy
        return self._default

    def _policy_of(self, rule: ModeRule | None) -> Policy:
        s = self._settings
        mode, deadband, heartbeat, interval = s.mode, s.deadband, s.heartbeat_s, s.min_interval_s
        if rule is not None:
            mode = rule.mode or mode
            deadband = rule.deadband or deadband
            heartbeat = rule.heartbeat_s or heartbeat
            interval = rule.min_interval_s if rule.min_interval_s is not None else interval
        return Policy(
            group=mode == "group",
            absolute=deadband.absolute if deadband else None,
            percent=deadband.percent if deadband else None,
            heartbeat=heartbeat,
            interval=interval,
        )

    # ------------------------------------------------------------ per datapoint

    def message(self, dp: DataPoint) -> tuple[str, bytes] | None:
        """Return the message of ``dp`` to send now, or None (held back, grouped, waiting)."""
        address = dp.address
        points = self._points
        state = points.get(address)
        if state is None:
            tag = dp.tag
            state = _Point(self.policy(dp.source, tag), tag)
            if len(points) >= self.max_items:
                self._evict_point()
            points[address] = state
        else:
            points.move_to_end(address)
        policy = state.policy
        if policy.banded:
            now = self._clock.monotonic()
            if not policy.passes(dp.value, dp.quality, state, now):
                self.suppressed += 1
                return None
            state.value, state.quality, state.sent_at = dp.value, dp.quality, now
        if policy.group:
            group = self._turn.get(dp.source)
            if group is None:
                if not self._turn:
                    # The group closes at the end of this loop turn: the rest of
                    # the poll round is delivered synchronously before then.
                    self._loop.call_soon(self.end_turn)
                group = self._turn[dp.source] = {}
            group[state.tag] = dp
            return None
        if policy.interval:
            now = self._clock.monotonic()
            if state.pending is None and now - state.last_at >= policy.interval:
                state.last_at = now
            else:
                if state.pending is not None:
                    self.coalesced += 1
                state.pending = dp
                if not state.due:
                    self._arm(state, state.last_at + policy.interval)
                return None
        return self._point_message(dp)

    def _evict_point(self) -> None:
        _, old = self._points.popitem(last=False)
        self.evicted += 1
        if old.pending is not None:
            dp, old.pending = old.pending, None
            self._send_point(dp)

    def _send_point(self, dp: DataPoint) -> None:
        message = self._point_message(dp)
        if message is not None:
            self._emit(message[0], message[1])

    # ------------------------------------------------------------ groups

    def end_turn(self) -> None:
        """Close this loop turn's groups: each goes out, or waits for its interval."""
        turn, self._turn = self._turn, {}
        if not turn:
            return
        now = self._clock.monotonic()
        groups = self._groups
        for source, values in turn.items():
            group = groups.get(source)
            if group is None:
                group = self._new_group(source, next(iter(values.values())))
            else:
                groups.move_to_end(source)
            if group.interval:
                if group.pending is None and now - group.last_at >= group.interval:
                    group.last_at = now
                else:
                    if group.pending is None:
                        group.pending = values
                    else:
                        group.pending.update(values)
                        self.coalesced += 1
                    if not group.due:
                        self._arm(group, group.last_at + group.interval)
                    continue
            self._send_group(group, values)

    def _new_group(self, source: str, first: DataPoint) -> _Group:
        try:
            topic: str | None = encode_group_topic(self._base, source)
        except TopicError:
            topic = None
        group = _Group(source, topic, self.policy(source, first.tag).interval)
        if len(self._groups) >= self.max_items:
            _, old = self._groups.popitem(last=False)
            self.evicted += 1
            if old.pending is not None:
                values, old.pending = old.pending, None
                self._send_group(old, values)
        self._groups[source] = group
        return group

    def _send_group(self, group: _Group, values: dict[str, DataPoint]) -> None:
        payload = self.group_payload(group.source, values)
        self.groups += 1
        if group.topic is None:
            try:
                encode_group_topic(self._base, group.source)
            except TopicError as exc:
                shown = f"{self._base}/{group.source}"[:1000]
                self._dead_letter(shown, payload, str(exc))
            return
        self._emit(group.topic, payload)

    def group_payload(self, source: str, values: dict[str, DataPoint]) -> bytes:
        """Return the JSON of one group: ``{"ts", "quality", "values"[, "tags"]}``."""
        ts = max(dp.ts for dp in values.values())
        out: dict[str, Any] = {}
        tags: dict[str, dict[str, Any]] = {}
        for tag, dp in values.items():
            value = dp.value
            if not _plain(value):
                value = self._json_value(dp, tags)  # None and a bad entry if it has no JSON
            out[tag] = value
            if (dp.quality != "good" or dp.ts != ts) and tag not in tags:
                tags[tag] = {"ts": dp.ts, "quality": dp.quality, **quality_detail(dp.metadata)}
        worst = "good"
        for entry in tags.values():
            if _RANK.get(entry["quality"], 3) > _RANK[worst]:
                worst = entry["quality"]
        body: dict[str, Any] = {"ts": ts, "quality": worst, "values": out}
        if tags:
            body["tags"] = tags
        return self._encoder.encode(body, source).encode()

    def _json_value(self, dp: DataPoint, tags: dict[str, dict[str, Any]]) -> Any:
        """A value that is not a plain scalar: its JSON form, or None and a bad entry in tags."""
        text = self._encoder.encode({"value": dp.value}, dp.address)
        decoded = json.loads(text)
        if "error" in decoded:
            tags[dp.tag] = {"ts": dp.ts, "quality": "bad", "error": decoded["error"]}
            return None
        return decoded["value"]

    # ------------------------------------------------------------ the one timer

    def _arm(self, state: _Point | _Group, due: float) -> None:
        """Note that ``state`` sends its waiting message at ``due`` (one timer for all)."""
        state.due = due
        self._timer_seq += 1
        timers = self._timers
        heapq.heappush(timers, (due, self._timer_seq, state))
        if len(timers) > 2 * self.max_items:
            # Entries of states evicted (and sent) meanwhile: keep the timers bounded.
            self._timers = timers = [e for e in timers if e[2].pending is not None]
            heapq.heapify(timers)
        if self._timer is None or due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            self._timer = self._clock.call_later(
                max(0.0, due - self._clock.monotonic()), self._on_timer
            )

    def _on_timer(self) -> None:
        self._timer = None
        timers = self._timers
        now = self._clock.monotonic()
        while timers and timers[0][0] <= now:
            _, _, state = heapq.heappop(timers)
            state.due = 0.0
            self._release(state, now)
        if timers:
            self._timer_at = timers[0][0]
            self._timer = self._clock.call_later(max(0.0, self._timer_at - now), self._on_timer)

    def _release(self, state: _Point | _Group, now: float) -> None:
        """Send what ``state`` holds back for its interval (nothing if it was sent on eviction)."""
        if state.pending is None:
            return
        state.last_at = now
        if isinstance(state, _Point):
            dp, state.pending = state.pending, None
            self._send_point(dp)
        else:
            values, state.pending = state.pending, None
            self._send_group(state, values)

    def flush(self) -> None:
        """Send everything waiting now (the bridge stops): this turn's groups, then the timers."""
        self.end_turn()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        timers, self._timers = self._timers, []
        now = self._clock.monotonic()
        for _, _, state in sorted(timers, key=lambda entry: entry[:2]):
            state.due = 0.0
            self._release(state, now)
