"""What a supervisor does next: after a connect attempt, a lost link, a health check.

Pure functions and frozen records, no I/O, no clock, no events: the
lifecycle (`edgelink.supervisor.lifecycle`) and the health checks
(`edgelink.supervisor.health`) ask these functions and carry out the answer.
The table in ``tests/unit/test_supervisor_policy.py`` covers every branch.

Example:
    >>> from edgelink.backoff import Backoff
    >>> from edgelink.errors import classify
    >>> d = after_attempt_failed(
    ...     ConnectionState.RECONNECTING,
    ...     2,
    ...     classify(ConnectionRefusedError()),
    ...     in_cooldown=False,
    ...     auto_reconnect=True,
    ...     backoff=Backoff(max_attempts=3),
    ... )
    >>> d.next, d.state, d.attempts
    (<Next.SUSPEND: 'suspend'>, <ConnectionState.SUSPENDED: 'suspended'>, 3)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from edgelink.backoff import Backoff
from edgelink.errors import Action, Verdict
from edgelink.events import EventType
from edgelink.redact import redact_text
from edgelink.state import ConnectionState, Reason

__all__ = [
    "COALESCED_WHILE_FLAPPING",
    "NOT_A_FLAP",
    "RESTING",
    "Decision",
    "Lost",
    "Next",
    "Wait",
    "WaitKind",
    "after_attempt_failed",
    "after_health_error",
    "after_health_failure",
    "after_loss",
    "describe",
    "wait_before_attempt",
]

S = ConnectionState

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

#: Losses that are no flap: a person (or failback to the preferred endpoint) asked for them.
NOT_A_FLAP = frozenset({Reason.ADMIN_RECONNECT, Reason.FAILBACK})


def describe(exc: BaseException) -> str:
    """Return ``exc`` as status text: its class and its (redacted) message."""
    text = redact_text(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class Lost:
    """Why a link that was up is gone, and what kind of loss it is."""

    reason: str
    error: BaseException | None = None
    #: Reconnect at once with ``fast_path_timeout`` (a TX drop).
    fast: bool = False
    #: The device sleeps: probe at ``sleep_probe_interval``.
    sleep: bool = False
    #: Retrying cannot help: state ``error``.
    permanent: bool = False


class Next(enum.StrEnum):
    """What the main task does after an attempt failed or a link was lost."""

    #: Back off (or take the fast path), then try again: ``reconnecting``.
    RETRY = "retry"
    #: The device sleeps: probe at ``sleep_probe_interval``.
    SLEEP = "sleep"
    #: ``reconnect_max_attempts`` reached: ``suspended``, probe after ``suspend_cooldown``.
    SUSPEND = "suspend"
    #: The probe after a cooldown failed: stay ``suspended``, the next cooldown doubles.
    PROBE_FAILED = "probe_failed"
    #: Retrying cannot help or is off: ``error``, the main task ends.
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of `after_attempt_failed` and `after_loss`."""

    next: Next
    #: The state to go to.
    state: ConnectionState
    #: The status reason to record.
    reason: str
    #: Failed reconnect attempts after this one.
    attempts: int
    #: True if this was a counted reconnect attempt (``reconnect_failed`` goes out).
    counted: bool = False
    #: True if the loss adds a flap penalty.
    flap: bool = False


def after_attempt_failed(
    state: ConnectionState,
    attempts: int,
    verdict: Verdict,
    *,
    in_cooldown: bool,
    auto_reconnect: bool,
    backoff: Backoff,
) -> Decision:
    """Decide what follows a failed connect attempt made in ``state``.

    Args:
        state: The state the attempt was made in.
        attempts: Failed reconnect attempts before this one.
        verdict: The `classify` verdict of the attempt's error.
        in_cooldown: The attempt was the probe after a suspension's cooldown.
        auto_reconnect: The setting of that name.
        backoff: The reconnect policy (only its ``max_attempts`` is asked).

    Returns:
        The decision; ``attempts`` grows only for a counted reconnect attempt
        (the first connect of a start is none).
    """
    reason = verdict.reason
    if verdict.action is Action.SLEEP:
        return Decision(Next.SLEEP, S.SLEEPING, Reason.DEVICE_SLEEP, attempts)
    if verdict.action is Action.PERMANENT:
        return Decision(Next.FAIL, S.ERROR, reason, attempts)
    if in_cooldown:
        return Decision(Next.PROBE_FAILED, S.SUSPENDED, Reason.MAX_ATTEMPTS, attempts)
    if state is S.CONNECTING:
        # The first connect is not a reconnect attempt: the retries that
        # follow it wait initial, initial*multiplier, ... like after a loss.
        if not auto_reconnect:
            return Decision(Next.FAIL, S.ERROR, reason, attempts)
        return Decision(Next.RETRY, S.RECONNECTING, reason, attempts)
    attempts += 1
    if not auto_reconnect:
        return Decision(Next.FAIL, S.ERROR, reason, attempts, counted=True)
    if backoff.exhausted(attempts):
        return Decision(Next.SUSPEND, S.SUSPENDED, Reason.MAX_ATTEMPTS, attempts, counted=True)
    return Decision(Next.RETRY, S.RECONNECTING, reason, attempts, counted=True)


def after_loss(lost: Lost, attempts: int, *, auto_reconnect: bool) -> Decision:
    """Decide what follows the loss of a link that was up.

    Whether the next attempt takes the fast path is decided by the caller:
    ``lost.fast``, or a fast reconnect requested while the loss was handled.
    """
    if lost.permanent:
        return Decision(Next.FAIL, S.ERROR, lost.reason, attempts)
    if lost.sleep:
        return Decision(Next.SLEEP, S.SLEEPING, Reason.DEVICE_SLEEP, attempts)
    if not auto_reconnect:
        return Decision(Next.FAIL, S.ERROR, lost.reason, attempts)
    return Decision(
        Next.RETRY, S.RECONNECTING, lost.reason, attempts, flap=lost.reason not in NOT_A_FLAP
    )


class WaitKind(enum.StrEnum):
    """What the main task waits for before its next connect attempt."""

    #: No wait: the first attempt, the fast path, or a probe right after a loss.
    NONE = "none"
    #: Suspended: wait ``suspend_cooldown`` (doubling), then probe.
    COOLDOWN = "cooldown"
    #: Flapping: held down until the flap penalty decays.
    HOLD_DOWN = "hold_down"
    #: Reconnecting: the backoff delay of the next attempt.
    BACKOFF = "backoff"
    #: Sleeping: ``sleep_probe_interval``.
    SLEEP_PROBE = "sleep_probe"
    #: Suspended with no cooldown probe: nothing more to do, the main task ends.
    END = "end"


@dataclass(frozen=True, slots=True)
class Wait:
    """The answer of `wait_before_attempt`."""

    kind: WaitKind
    delay: float = 0.0
    #: The number of the attempt that follows (``BACKOFF`` only).
    attempt: int = 0


def wait_before_attempt(
    state: ConnectionState,
    attempts: int,
    *,
    in_cooldown: bool,
    fast: bool,
    cooldown: float | None,
    hold_down: Callable[[], float],
    backoff: Backoff,
    sleep_probe_interval: float,
) -> Wait:
    """Decide the wait before the next connect attempt.

    Args:
        state: The current state.
        attempts: Failed reconnect attempts so far.
        in_cooldown: Suspended after ``reconnect_max_attempts``.
        fast: The next attempt takes the fast path (no backoff, no sleep probe).
        cooldown: The current suspend cooldown (None: no probe).
        hold_down: Returns the flap hold-down left (asked only while reconnecting).
        backoff: The reconnect policy (its jitter is drawn only for ``BACKOFF``).
        sleep_probe_interval: The setting of that name.
    """
    if in_cooldown:
        if cooldown is None:
            return Wait(WaitKind.END)
        return Wait(WaitKind.COOLDOWN, cooldown)
    if state is S.RECONNECTING and (hold := hold_down()) > 0:
        # Flapping: held down until the penalty decays, fast path or not.
        return Wait(WaitKind.HOLD_DOWN, hold)
    if not fast and state is S.RECONNECTING:
        attempt = attempts + 1
        return Wait(WaitKind.BACKOFF, backoff.delay(attempt), attempt)
    if not fast and state is S.SLEEPING:
        return Wait(WaitKind.SLEEP_PROBE, sleep_probe_interval)
    return Wait(WaitKind.NONE)


def after_health_error(verdict: Verdict, exc: BaseException) -> Lost | None:
    """Return the loss a health check that raised ``exc`` means at once, or None.

    A sleeping device and a permanent error end the link now; any other error
    is a failed check, counted by `after_health_failure`.
    """
    if verdict.action is Action.SLEEP:
        return Lost(Reason.DEVICE_SLEEP, exc, sleep=True)
    if verdict.action is Action.PERMANENT:
        return Lost(verdict.reason, exc, permanent=True)
    return None


def after_health_failure(
    failures: int,
    threshold: int,
    error: BaseException | None,
    verdict: Verdict | None,
    *,
    is_connected: Callable[[], bool],
) -> Lost | None:
    """Return the loss ``failures`` failed checks in a row mean, or None (degraded only).

    Args:
        failures: Failed checks in a row, this one included.
        threshold: ``health_check_failures``.
        error: What the check raised (None: it returned False).
        verdict: The `classify` verdict of ``error`` (None without one).
        is_connected: Whether the link still looks open (asked only for a timeout).
    """
    if failures < threshold:
        return None
    if verdict is not None and verdict.action is Action.TIMEOUT:
        # No answer while the socket looks open: half open.
        return Lost(Reason.HALF_OPEN if is_connected() else Reason.TIMEOUT, error)
    return Lost(Reason.HEALTH_CHECK_FAILED, error)
