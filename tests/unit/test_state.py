"""Tests of the state table and the state machine."""

from __future__ import annotations

import threading

import pytest

from edgelink.state import (
    TRANSITIONS,
    ConnectionState,
    Health,
    IllegalTransitionError,
    StateMachine,
    Transition,
    can_transition,
)

S = ConnectionState
ALL = list(ConnectionState)

ALLOWED = {
    (S.DISCONNECTED, S.CONNECTING),
    (S.CONNECTING, S.CONNECTED),
    (S.CONNECTING, S.RECONNECTING),
    (S.CONNECTING, S.SLEEPING),
    (S.CONNECTING, S.ERROR),
    (S.CONNECTING, S.SUSPENDED),
    (S.CONNECTING, S.DISCONNECTED),
    (S.CONNECTED, S.RECONNECTING),
    (S.CONNECTED, S.SLEEPING),
    (S.CONNECTED, S.ERROR),
    (S.CONNECTED, S.SUSPENDED),
    (S.CONNECTED, S.DISCONNECTED),
    (S.RECONNECTING, S.CONNECTED),
    (S.RECONNECTING, S.SLEEPING),
    (S.RECONNECTING, S.ERROR),
    (S.RECONNECTING, S.SUSPENDED),
    (S.RECONNECTING, S.DISCONNECTED),
    (S.SLEEPING, S.CONNECTED),
    (S.SLEEPING, S.RECONNECTING),
    (S.SLEEPING, S.ERROR),
    (S.SLEEPING, S.SUSPENDED),
    (S.SLEEPING, S.DISCONNECTED),
    (S.ERROR, S.CONNECTING),
    (S.ERROR, S.DISCONNECTED),
    (S.SUSPENDED, S.CONNECTING),
    (S.SUSPENDED, S.CONNECTED),
    (S.SUSPENDED, S.DISCONNECTED),
}


def test_states_are_lowercase_strenums() -> None:
    """Test that states and health values are the lowercase strings of DESIGN."""
    assert [str(s) for s in S] == [
        "disconnected",
        "connecting",
        "connected",
        "reconnecting",
        "sleeping",
        "error",
        "suspended",
    ]
    assert S("connected") is S.CONNECTED
    assert [str(h) for h in Health] == ["unknown", "healthy", "degraded", "unhealthy"]


@pytest.mark.parametrize("old", ALL)
@pytest.mark.parametrize("new", ALL)
def test_transition_table(old: ConnectionState, new: ConnectionState) -> None:
    """Test that exactly the documented transitions are allowed."""
    assert can_transition(old, new) == ((old, new) in ALLOWED)
    assert set(TRANSITIONS) == set(ALL)


@pytest.mark.parametrize(("old", "new"), sorted({(a, b) for a in ALL for b in ALL} - ALLOWED))
def test_illegal_transition_raises_and_keeps_state(
    old: ConnectionState, new: ConnectionState
) -> None:
    """Test that an illegal transition raises and leaves state and history alone."""
    sm = StateMachine(clock=lambda: 1.0)
    # Walk a legal path to ``old`` first.
    routes = {
        S.DISCONNECTED: [],
        S.CONNECTING: [S.CONNECTING],
        S.CONNECTED: [S.CONNECTING, S.CONNECTED],
        S.RECONNECTING: [S.CONNECTING, S.RECONNECTING],
        S.SLEEPING: [S.CONNECTING, S.SLEEPING],
        S.ERROR: [S.CONNECTING, S.ERROR],
        S.SUSPENDED: [S.CONNECTING, S.SUSPENDED],
    }
    for step in routes[old]:
        sm.transition(step)
    before = list(sm.history)
    with pytest.raises(IllegalTransitionError, match=f"{old} -> {new}"):
        sm.transition(new, reason="bug")
    assert sm.state is old
    assert list(sm.history) == before


def test_transition_stamps_time_reason_and_notifies() -> None:
    """Test that a transition records time and reason and calls the listener once."""
    now = [10.0]
    seen: list[Transition] = []
    sm = StateMachine(clock=lambda: now[0], listener=seen.append)
    sm.transition(S.CONNECTING, reason="start")
    now[0] = 12.5
    rec = sm.transition(S.RECONNECTING, reason="refused")
    assert (rec.old, rec.new, rec.ts, rec.reason) == (S.CONNECTING, S.RECONNECTING, 12.5, "refused")
    assert sm.since == 12.5
    assert sm.reason == "refused"
    assert [t.new for t in seen] == [S.CONNECTING, S.RECONNECTING]
    assert rec.as_dict() == {
        "from": "connecting",
        "to": "reconnecting",
        "ts": 12.5,
        "reason": "refused",
    }


def test_history_is_bounded() -> None:
    """Test that the transition history keeps only the newest entries."""
    sm = StateMachine(clock=lambda: 0.0, history=3)
    sm.transition(S.CONNECTING)
    for _ in range(5):
        sm.transition(S.CONNECTED)
        sm.transition(S.RECONNECTING)
    assert len(sm.history) == 3
    assert sm.history[-1].new is S.RECONNECTING


def test_concurrent_transitions_never_break_the_table() -> None:
    """Test that threads racing on transitions only ever make legal ones."""
    sm = StateMachine(clock=lambda: 0.0, history=100_000)
    sm.transition(S.CONNECTING)
    errors = []

    def flip() -> None:
        for _ in range(2000):
            try:
                if sm.state is S.CONNECTED:
                    sm.transition(S.RECONNECTING)
                else:
                    sm.transition(S.CONNECTED)
            except IllegalTransitionError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=flip) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rec in sm.history:
        assert can_transition(rec.old, rec.new)
    # Racing threads see stale reads and get refused: never a silent bad change.
    assert all(isinstance(e, IllegalTransitionError) for e in errors)
