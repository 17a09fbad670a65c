"""The web UI's login parts without a browser: settings, argon2 users, sessions, tickets, throttle."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

argon2 = pytest.importorskip("argon2", reason="the ui extra is not installed")

from edgelink.errors import ConfigError  # noqa: E402
from edgelink.service.config import load_service_settings  # noqa: E402
from edgelink.service.resources import ATTRIBUTED_BY_PROCESS, instance_resources  # noqa: E402
from edgelink.service.token import kept_secret  # noqa: E402
from edgelink.ui.auth import (  # noqa: E402
    FREE_FAILURES,
    Identity,
    LoginThrottle,
    Sessions,
    Tickets,
    verify_login,
)

TOKEN = "admin-token-0123456789abcdef"
# Cheap parameters: the tests check the logic, not argon2's cost.
HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def settings_with(**ui: object):
    return load_service_settings({"ui": ui}).ui


def test_ui_settings_default_on_and_validated() -> None:
    """Test the ui section: on by default; a plain password or a bad name is a ConfigError."""
    ui = load_service_settings(None).ui
    assert ui.enabled is True
    assert ui.users == {}
    with pytest.raises(ConfigError, match=r"ui\.users\.bob\.password_hash.*not an argon2 hash"):
        load_service_settings({"ui": {"users": {"bob": {"password_hash": "hunter2"}}}})
    with pytest.raises(ConfigError, match="user name 'a b'"):
        load_service_settings({"ui": {"users": {"a b": {"password_hash": HASHER.hash("x")}}}})
    with pytest.raises(ConfigError, match=r"ui\.session_hours"):
        load_service_settings({"ui": {"session_hours": 0}})
    with pytest.raises(ConfigError, match=r"ui\.colour"):
        load_service_settings({"ui": {"colour": "red"}})


def test_login_with_the_token_or_an_argon2_user() -> None:
    """Test the token, a user's password, and that wrong ones (or unknown users) are refused."""
    ui = settings_with(users={"alice": {"password_hash": HASHER.hash("s3cret-pass")}})
    token = verify_login(ui, TOKEN, "", TOKEN)
    assert token is not None
    assert token.name == "token"
    assert token.who.startswith("token:")
    assert TOKEN not in token.who
    assert verify_login(ui, TOKEN, "", TOKEN + "x") is None
    assert verify_login(ui, TOKEN, "", "") is None
    assert verify_login(ui, TOKEN, "alice", "s3cret-pass") == Identity("user:alice", "alice")
    assert verify_login(ui, TOKEN, "alice", "wrong") is None
    # The admin token is no password of a user, and unknown users never log in.
    assert verify_login(ui, TOKEN, "alice", TOKEN) is None
    assert verify_login(ui, TOKEN, "mallory", "s3cret-pass") is None


def test_sessions_expire_are_dropped_and_bounded() -> None:
    """Test a session's life: live until expiry, gone after logout, oldest evicted when full."""
    sessions = Sessions(lifetime_s=100.0, max_sessions=3)
    who = Identity("token:ab", "token")
    first = sessions.create(who, now=0.0)
    assert len(first.sid) >= 40
    assert sessions.get(first.sid, now=99.0) == first
    assert sessions.get(first.sid, now=100.0) is None
    assert sessions.get(first.sid, now=0.0) is None  # dropped when found expired
    second = sessions.create(who, now=0.0)
    sessions.drop(second.sid)
    assert sessions.get(second.sid, now=1.0) is None
    made = [sessions.create(who, now=0.0) for _ in range(5)]
    assert len(sessions) == 3
    assert sessions.evicted == 2
    assert sessions.get(made[0].sid, now=1.0) is None
    assert sessions.get(made[-1].sid, now=1.0) == made[-1]
    assert sessions.get(None, now=1.0) is None
    assert sessions.get("forged", now=1.0) is None


def test_tickets_are_single_use_short_lived_and_bounded() -> None:
    """Test that a ticket redeems once, not after 30 s, and that pending ones are bounded."""
    tickets = Tickets(max_tickets=2)
    who = Identity("user:alice", "alice")
    ticket = tickets.issue(who, now=0.0)
    assert tickets.redeem(ticket, now=29.0) == who
    assert tickets.redeem(ticket, now=29.0) is None
    late = tickets.issue(who, now=0.0)
    assert tickets.redeem(late, now=31.0) is None
    oldest = tickets.issue(who, now=0.0)
    tickets.issue(who, now=0.0)
    tickets.issue(who, now=0.0)
    assert tickets.evicted == 1
    assert tickets.redeem(oldest, now=1.0) is None


def test_throttle_slows_repeated_failures_per_client_and_is_bounded() -> None:
    """Test free failures, then doubling waits up to 60 s; success and time forget; bounded."""
    throttle = LoginThrottle(max_clients=2)
    waits = [throttle.failed("1.2.3.4", now=0.0) for _ in range(FREE_FAILURES + 8)]
    assert waits[:FREE_FAILURES] == [0.0] * FREE_FAILURES
    assert waits[FREE_FAILURES : FREE_FAILURES + 4] == [1.0, 2.0, 4.0, 8.0]
    assert waits[-1] == 60.0
    assert throttle.retry_after("1.2.3.4", now=10.0) == 50.0
    assert throttle.retry_after("5.6.7.8", now=10.0) == 0.0  # another client is not slowed
    throttle.succeeded("1.2.3.4")
    assert throttle.retry_after("1.2.3.4", now=10.0) == 0.0
    for _ in range(FREE_FAILURES + 1):
        throttle.failed("9.9.9.9", now=0.0)
    assert throttle.retry_after("9.9.9.9", now=0.5) == 0.5
    assert throttle.retry_after("9.9.9.9", now=LoginThrottle.FORGET_AFTER_S + 1) == 0.0
    for client in ("a", "b", "c"):
        throttle.failed(client, now=0.0)
    assert len(throttle) == 2
    assert throttle.evicted >= 1


def test_kept_secret_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    """Test the UI's storage secret file: made 0600 on first use, then read back."""
    path = tmp_path / ".edgelink_ui_secret"
    secret, origin = kept_secret(path)
    assert origin == "generated"
    assert len(secret) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert kept_secret(path) == (secret, "file")


def test_instance_resources_never_invent_what_a_process_owns() -> None:
    """Test the seed's dict of an in-process connection: OS figures None, driver counters kept."""
    status = {
        "connection_id": "plc",
        "status": "connected",
        "connected_at": 100.0,
        "last_error": "timeout",
        "stats": {"packets_sent": 7, "packets_received": 9, "errors": 2},
    }
    figures = instance_resources(status, now=160.0)
    assert all(figures[key] is None for key in ATTRIBUTED_BY_PROCESS)
    assert figures["network_packets_sent"] == 7
    assert figures["network_packets_recv"] == 9
    assert figures["uptime_seconds"] == 60.0
    assert figures["error_count"] == 2
    assert figures["last_error"] == "timeout"
    down = instance_resources({**status, "status": "reconnecting"}, now=160.0)
    assert down["uptime_seconds"] is None
