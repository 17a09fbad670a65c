"""The doctor's pure rules: topic validity, route sources, the pulled-cable explanation, the lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgelink.config import ConnectionSpec, load_config
from edgelink.service.doctor import (
    Verdict,
    _check_lock,
    _half_open_check,
    _pattern_has_source,
    topic_problem,
)


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("smarthome/dev/temperature", None),
        ("smarthome/dev/status#/power", "wildcard"),
        ("smarthome/+/x", "wildcard"),
        ("smarthome/a\x00b", "NUL"),
        ("$SYS/x", "'$'"),
        ("", "empty"),
        ("a" * 65536, "65535"),
    ],
)
def test_topic_problem(topic: str, problem: str | None) -> None:
    """Test that topic_problem names what MQTT forbids in a topic name."""
    found = topic_problem(topic)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("plc_1.temp", True),
        ("plc_1.MAIN.temp", True),
        ("plc_2.temp", False),
        ("plc_1.*", True),
        ("*.temp", True),
        ("plc.**", True),  # plc.bms is an endpoint inside the head
        ("bt.bms_001.voltage", True),
        ("bt.bms_002.*", False),
        ("webhook.alerts.x", True),
    ],
)
def test_pattern_has_source(pattern: str, expected: bool) -> None:
    """Test that a route's from pattern counts as sourced only when an endpoint can feed it."""
    endpoints = {"plc_1", "plc.bms", "bt.bms_001", "webhook.alerts"}
    assert _pattern_has_source(pattern, endpoints) is expected


def spec(settings: dict[str, object], ctype: str = "tcp") -> ConnectionSpec:
    doc = {"connections": {"d": {"type": ctype, "config": {"port": 1}, "settings": settings}}}
    return load_config(doc).specs()["d"]


def test_half_open_explains_the_pulled_cable_with_the_figures() -> None:
    """Test that the defaults read 30 s x 1 + 5 s = ~35 s, keepalive 25 s, and pass."""
    check = _half_open_check(spec({}), 60.0)
    assert check.verdict is Verdict.PASS
    assert "every 30 s x failures 1 + timeout 5 s: noticed within ~35 s" in check.detail
    assert "TCP keepalive would notice an idle dead link after 25 s" in check.detail
    assert check.data["detect_s"] == 35.0


def test_half_open_warns_when_slow_or_blind() -> None:
    """Test that detection over the threshold, or no health check nor data_timeout, is a warn."""
    slow = _half_open_check(spec({"health_check_interval": 100, "health_check_failures": 3}), 60)
    assert slow.verdict is Verdict.WARN and "315 s" in slow.detail
    blind = _half_open_check(spec({"health_check_interval": None}), 60.0)
    assert blind.verdict is Verdict.WARN and "never be noticed" in blind.detail
    watched = _half_open_check(spec({"health_check_interval": None, "data_timeout": 10}), 60)
    assert watched.verdict is Verdict.PASS and "after 10 s without data" in watched.detail


def test_lock_live_stale_garbage_and_absent(tmp_path: Path) -> None:
    """Test the lock check: a live PID warns, a dead one is stale, garbage warns, none is free."""
    assert _check_lock(tmp_path).detail == "free (no lock file)"
    lock = tmp_path / "edgelink.lock"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    lock.write_text(f'{{"pid": {child.pid}}}')
    stale = _check_lock(tmp_path)
    assert stale.verdict is Verdict.PASS and "stale" in stale.detail
    lock.write_text(f"{os.getppid()}\n")
    live = _check_lock(tmp_path)
    assert live.verdict is Verdict.WARN and str(os.getppid()) in live.detail
    lock.write_text("nonsense")
    assert _check_lock(tmp_path).verdict is Verdict.WARN
