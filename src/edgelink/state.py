"""Connection states, health, and the one table of allowed transitions.

Pure: no I/O. `StateMachine.transition` is the only way a state changes: it takes
a lock, checks the table, stamps the time, records the cause and calls the
listener that emits ``state_change``. An illegal transition is a bug and raises.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ConnectionState",
    "Health",
    "IllegalTransitionError",
    "Reason",
    "SUSPENDED_BY_SPAM",
    "StateMachine",
    "TRANSITIONS",
    "Transition",
    "can_transition",
    "status_code",
]


class ConnectionState(enum.StrEnum):
    """Where one connection is in its life."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    SLEEPING = "sleeping"
    ERROR = "error"
    SUSPENDED = "suspended"


class Health(enum.StrEnum):
    """How well a connected link answers, apart from its state."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


class Reason(enum.StrEnum):
    """The machine-readable ``reason`` of a status, a transition or an event.

    A `StrEnum`: each member is equal to its string, so JSON, logs and
    comparisons with plain strings (``status["reason"] == "refused"``) stay
    the same. A driver or the router may still give a reason not listed here.
    """

    # Asked for by a person or the service: a disconnect for one of these is no loss.
    START = "start"
    ADMIN_STOP = "admin_stop"
    ADMIN_RESTART = "admin_restart"
    ADMIN_RECONNECT = "admin_reconnect"
    RESTART = "restart"
    SHUTDOWN = "shutdown"
    REMOVED = "removed"
    KILLED = "killed"
    PANIC = "panic"
    SUPERVISOR_RESTARTED = "supervisor_restarted"
    # Failover moved the link back to the preferred endpoint (docs/failover.md).
    FAILBACK = "failback"
    # The link was lost, or could not be made.
    LOST = "lost"
    CONNECTION_LOST = "connection_lost"
    CONNECT_FAILED = "connect_failed"
    ERROR = "error"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    HALF_OPEN = "half_open"
    HEALTH_CHECK_FAILED = "health_check_failed"
    DATA_TIMEOUT = "data_timeout"
    TX_DROP = "tx_drop"
    CONNECTION_RESET = "connection_reset"
    PROTOCOL_ERROR = "protocol_error"
    DEVICE_SLEEP = "device_sleep"
    DEVICE_RESET_FAILED = "device_reset_failed"
    # Retrying cannot help, or the supervisor stopped trying.
    AUTH = "auth"
    PERMANENT = "permanent"
    MAX_ATTEMPTS = "max_attempts"
    FLAPPING = "flapping"
    SPAM = "spam"
    # One tag or route, not the link.
    POISON = "poison"
    READ_FAILED = "read_failed"
    READ_CRASHED = "read_crashed"


S = ConnectionState

#: The Edge OS seed's status of a connection spam protection suspended.
SUSPENDED_BY_SPAM = "SUSPENDED_BY_SPAM"


def status_code(state: ConnectionState, reason: str | None) -> str:
    """The seed's upper-case status: ``CONNECTED``, ..., ``SUSPENDED_BY_SPAM`` for a spam trip."""
    if state is S.SUSPENDED and reason == Reason.SPAM:
        return SUSPENDED_BY_SPAM
    return state.name


#: The allowed transitions. Anything not listed is a bug.
TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    S.DISCONNECTED: frozenset({S.CONNECTING}),
    S.CONNECTING: frozenset(
        {S.CONNECTED, S.RECONNECTING, S.SLEEPING, S.ERROR, S.SUSPENDED, S.DISCONNECTED}
    ),
    S.CONNECTED: frozenset({S.RECONNECTING, S.SLEEPING, S.ERROR, S.SUSPENDED, S.DISCONNECTED}),
    S.RECONNECTING: frozenset({S.CONNECTED, S.SLEEPING, S.ERROR, S.SUSPENDED, S.DISCONNECTED}),
    S.SLEEPING: frozenset({S.CONNECTED, S.RECONNECTING, S.ERROR, S.SUSPENDED, S.DISCONNECTED}),
    S.ERROR: frozenset({S.CONNECTING, S.DISCONNECTED}),
    # A suspended connection probes in place after its cooldown: success goes
    # straight to connected; resume() starts over through connecting.
    S.SUSPENDED: frozenset({S.CONNECTING, S.CONNECTED, S.DISCONNECTED}),
}


def can_transition(old: ConnectionState, new: ConnectionState) -> bool:
    """Return True if the table allows ``old -> new``."""
    return new in TRANSITIONS[old]


class IllegalTransitionError(RuntimeError):
    """A transition that the table does not allow was attempted: a bug in edgelink."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded state change with its cause."""

    old: ConnectionState
    new: ConnectionState
    ts: float
    reason: str | None

    def as_dict(self) -> dict[str, object]:
        """Return the transition as a JSON-friendly dict."""
        return {"from": str(self.old), "to": str(self.new), "ts": self.ts, "reason": self.reason}


class StateMachine:
    """Holds one connection's state and its recent history.

    Thread-safe: `transition` may be called from any thread. The listener is
    called outside the lock with the recorded `Transition`.

    Example:
        >>> sm = StateMachine(clock=lambda: 0.0)
        >>> sm.transition(ConnectionState.CONNECTING, reason="start").new
        <ConnectionState.CONNECTING: 'connecting'>
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        listener: Callable[[Transition], None] | None = None,
        history: int = 20,
    ) -> None:
        self._clock = clock
        self._listener = listener
        self._lock = threading.Lock()
        self._state = ConnectionState.DISCONNECTED
        self._reason: str | None = None
        self._since = clock()
        self.history: deque[Transition] = deque(maxlen=history)

    @property
    def state(self) -> ConnectionState:
        """The current state."""
        return self._state

    @property
    def reason(self) -> str | None:
        """The machine-readable reason of the last transition."""
        return self._reason

    @property
    def since(self) -> float:
        """Wall-clock time of the last transition."""
        return self._since

    def transition(self, new: ConnectionState, *, reason: str | None = None) -> Transition:
        """Move to ``new`` and notify the listener.

        Raises:
            IllegalTransitionError: if the table does not allow the change.
        """
        with self._lock:
            old = self._state
            if not can_transition(old, new):
                raise IllegalTransitionError(f"illegal transition {old} -> {new} ({reason})")
            rec = Transition(old, new, self._clock(), reason)
            self._state = new
            self._reason = reason
            self._since = rec.ts
            self.history.append(rec)
        if self._listener is not None:
            self._listener(rec)
        return rec

    def set_reason(self, reason: str | None) -> None:
        """Update the reason without changing the state (e.g. a new failure cause)."""
        with self._lock:
            self._reason = reason
