"""Tests of the supervisor's pure policy: what follows an attempt, a loss, a health check."""

from __future__ import annotations

import pytest

from edgelink.backoff import Backoff
from edgelink.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    DeviceSleepError,
    classify,
)
from edgelink.state import ConnectionState, Reason
from edgelink.supervisor.policy import (
    Decision,
    Lost,
    Next,
    Wait,
    WaitKind,
    after_attempt_failed,
    after_health_error,
    after_health_failure,
    after_loss,
    wait_before_attempt,
)

S = ConnectionState
REFUSED = ConnectionRefusedError("refused")
TIMEOUT = ConnectTimeout("no connection within 5 s")
SLEEPING = DeviceSleepError("asleep")
AUTH = AuthError("bad password")
CONFIG = ConfigError("bad register")


def _backoff(max_attempts: int | None = 3) -> Backoff:
    return Backoff(initial=1.0, multiplier=2.0, max=60.0, jitter=0.0, max_attempts=max_attempts)


@pytest.mark.parametrize(
    ("state", "attempts", "error", "in_cooldown", "auto_reconnect", "max_attempts", "expected"),
    [
        # The first connect of a start is no counted reconnect attempt.
        (S.CONNECTING, 0, REFUSED, False, True, 3,
         Decision(Next.RETRY, S.RECONNECTING, Reason.REFUSED, 0)),
        (S.CONNECTING, 0, REFUSED, False, False, 3,
         Decision(Next.FAIL, S.ERROR, Reason.REFUSED, 0)),
        (S.CONNECTING, 0, TIMEOUT, False, True, 3,
         Decision(Next.RETRY, S.RECONNECTING, classify(TIMEOUT).reason, 0)),
        # Reconnect attempts count, up to reconnect_max_attempts.
        (S.RECONNECTING, 0, REFUSED, False, True, 3,
         Decision(Next.RETRY, S.RECONNECTING, Reason.REFUSED, 1, counted=True)),
        (S.RECONNECTING, 1, REFUSED, False, True, 3,
         Decision(Next.RETRY, S.RECONNECTING, Reason.REFUSED, 2, counted=True)),
        (S.RECONNECTING, 2, REFUSED, False, True, 3,
         Decision(Next.SUSPEND, S.SUSPENDED, Reason.MAX_ATTEMPTS, 3, counted=True)),
        (S.RECONNECTING, 500, REFUSED, False, True, None,
         Decision(Next.RETRY, S.RECONNECTING, Reason.REFUSED, 501, counted=True)),
        (S.RECONNECTING, 0, REFUSED, False, False, 3,
         Decision(Next.FAIL, S.ERROR, Reason.REFUSED, 1, counted=True)),
        (S.SLEEPING, 0, REFUSED, False, True, 3,
         Decision(Next.RETRY, S.RECONNECTING, Reason.REFUSED, 1, counted=True)),
        # The probe after a suspension's cooldown failed: stay suspended, uncounted.
        (S.SUSPENDED, 3, REFUSED, True, True, 3,
         Decision(Next.PROBE_FAILED, S.SUSPENDED, Reason.MAX_ATTEMPTS, 3)),
        (S.SUSPENDED, 3, REFUSED, True, False, 3,
         Decision(Next.PROBE_FAILED, S.SUSPENDED, Reason.MAX_ATTEMPTS, 3)),
        # A sleeping device and a permanent error win everywhere.
        (S.CONNECTING, 0, SLEEPING, False, False, 3,
         Decision(Next.SLEEP, S.SLEEPING, Reason.DEVICE_SLEEP, 0)),
        (S.SUSPENDED, 3, SLEEPING, True, True, 3,
         Decision(Next.SLEEP, S.SLEEPING, Reason.DEVICE_SLEEP, 3)),
        (S.RECONNECTING, 2, AUTH, False, True, 3,
         Decision(Next.FAIL, S.ERROR, classify(AUTH).reason, 2)),
        (S.SUSPENDED, 3, CONFIG, True, True, 3,
         Decision(Next.FAIL, S.ERROR, classify(CONFIG).reason, 3)),
    ],
)  # fmt: skip
def test_after_attempt_failed(
    state: ConnectionState,
    attempts: int,
    error: BaseException,
    in_cooldown: bool,
    auto_reconnect: bool,
    max_attempts: int | None,
    expected: Decision,
) -> None:
    """Test the decision after a failed connect attempt, for each branch."""
    decision = after_attempt_failed(
        state,
        attempts,
        classify(error),
        in_cooldown=in_cooldown,
        auto_reconnect=auto_reconnect,
        backoff=_backoff(max_attempts),
    )
    assert decision == expected


@pytest.mark.parametrize(
    ("lost", "auto_reconnect", "expected"),
    [
        (Lost(Reason.CONNECTION_LOST), True,
         Decision(Next.RETRY, S.RECONNECTING, Reason.CONNECTION_LOST, 2, flap=True)),
        (Lost(Reason.TX_DROP, fast=True), True,
         Decision(Next.RETRY, S.RECONNECTING, Reason.TX_DROP, 2, flap=True)),
        (Lost(Reason.ADMIN_RECONNECT), True,
         Decision(Next.RETRY, S.RECONNECTING, Reason.ADMIN_RECONNECT, 2)),
        (Lost(Reason.CONNECTION_LOST), False,
         Decision(Next.FAIL, S.ERROR, Reason.CONNECTION_LOST, 2)),
        (Lost(Reason.DEVICE_SLEEP, sleep=True), False,
         Decision(Next.SLEEP, S.SLEEPING, Reason.DEVICE_SLEEP, 2)),
        (Lost(Reason.AUTH, permanent=True), True,
         Decision(Next.FAIL, S.ERROR, Reason.AUTH, 2)),
    ],
)  # fmt: skip
def test_after_loss(lost: Lost, auto_reconnect: bool, expected: Decision) -> None:
    """Test the decision after a link that was up is lost; attempts are left alone."""
    assert after_loss(lost, 2, auto_reconnect=auto_reconnect) == expected


@pytest.mark.parametrize(
    ("state", "attempts", "in_cooldown", "fast", "cooldown", "hold", "expected"),
    [
        (S.CONNECTING, 0, False, False, 30.0, 0.0, Wait(WaitKind.NONE)),
        (S.RECONNECTING, 0, False, False, 30.0, 0.0, Wait(WaitKind.BACKOFF, 1.0, 1)),
        (S.RECONNECTING, 3, False, False, 30.0, 0.0, Wait(WaitKind.BACKOFF, 8.0, 4)),
        (S.RECONNECTING, 3, False, True, 30.0, 0.0, Wait(WaitKind.NONE)),
        # Flapping holds the fast path down too.
        (S.RECONNECTING, 3, False, True, 30.0, 7.5, Wait(WaitKind.HOLD_DOWN, 7.5)),
        (S.RECONNECTING, 0, False, False, 30.0, 7.5, Wait(WaitKind.HOLD_DOWN, 7.5)),
        (S.SLEEPING, 0, False, False, 30.0, 7.5, Wait(WaitKind.SLEEP_PROBE, 120.0)),
        (S.SLEEPING, 0, False, True, 30.0, 0.0, Wait(WaitKind.NONE)),
        (S.SUSPENDED, 10, True, False, 30.0, 7.5, Wait(WaitKind.COOLDOWN, 30.0)),
        (S.SUSPENDED, 10, True, False, None, 0.0, Wait(WaitKind.END)),
        (S.SUSPENDED, 10, False, False, None, 0.0, Wait(WaitKind.NONE)),
    ],
)
def test_wait_before_attempt(
    state: ConnectionState,
    attempts: int,
    in_cooldown: bool,
    fast: bool,
    cooldown: float | None,
    hold: float,
    expected: Wait,
) -> None:
    """Test the wait before the next attempt: cooldown, hold-down, backoff, sleep probe."""
    wait = wait_before_attempt(
        state,
        attempts,
        in_cooldown=in_cooldown,
        fast=fast,
        cooldown=cooldown,
        hold_down=lambda: hold,
        backoff=_backoff(),
        sleep_probe_interval=120.0,
    )
    assert wait == expected


def test_hold_down_is_asked_only_while_reconnecting() -> None:
    """Test that the flap damper is not consulted in a state it does not govern."""

    def hold_down() -> float:
        raise AssertionError("asked")

    for state, in_cooldown in ((S.CONNECTING, False), (S.SLEEPING, False), (S.SUSPENDED, True)):
        wait_before_attempt(
            state,
            0,
            in_cooldown=in_cooldown,
            fast=False,
            cooldown=1.0,
            hold_down=hold_down,
            backoff=_backoff(),
            sleep_probe_interval=1.0,
        )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (SLEEPING, Lost(Reason.DEVICE_SLEEP, SLEEPING, sleep=True)),
        (AUTH, Lost(classify(AUTH).reason, AUTH, permanent=True)),
        (REFUSED, None),
        (TIMEOUT, None),
    ],
)
def test_after_health_error(error: BaseException, expected: Lost | None) -> None:
    """Test that only a sleeping device or a permanent error ends the link at once."""
    assert after_health_error(classify(error), error) == expected


@pytest.mark.parametrize(
    ("failures", "error", "link_open", "expected_reason"),
    [
        (1, None, True, None),
        (2, REFUSED, True, None),
        (3, None, True, Reason.HEALTH_CHECK_FAILED),
        (3, ConnectError("gone"), True, Reason.HEALTH_CHECK_FAILED),
        (4, TimeoutError(), True, Reason.HALF_OPEN),
        (3, TimeoutError(), False, Reason.TIMEOUT),
    ],
)
def test_after_health_failure(
    failures: int, error: BaseException | None, link_open: bool, expected_reason: str | None
) -> None:
    """Test that ``health_check_failures`` failed checks in a row lose the link, and why."""
    lost = after_health_failure(
        failures,
        3,
        error,
        classify(error) if error is not None else None,
        is_connected=lambda: link_open,
    )
    if expected_reason is None:
        assert lost is None
    else:
        assert lost == Lost(expected_reason, error)
