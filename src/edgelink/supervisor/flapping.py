"""Flap dampening glue: a link that keeps going up and down is held down and quieted.

The penalty arithmetic is `edgelink.dampening.FlapDamper`; here it meets the
state machine (hold-down, the ``flapping`` flag and its events) and the
event coalescing of a flapping link.
"""

from __future__ import annotations

import logging
from typing import Any

from edgelink.events import EventType
from edgelink.state import ConnectionState, Health
from edgelink.supervisor.health import SupervisorHealth

logger = logging.getLogger("edgelink.supervisor")

S = ConnectionState


class SupervisorFlapping(SupervisorHealth):
    """Flap dampening of a link (a part of `edgelink.supervisor.Supervisor`)."""

    __slots__ = ()

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
