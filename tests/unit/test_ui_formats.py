"""What the UI pages show, formatted: a data point's row (escaped), an isolated card's limits."""

from __future__ import annotations

import pytest

pytest.importorskip("nicegui")

from edgelink.router.datapoint import DataPoint
from edgelink.ui.points import MAX_VALUE_CHARS, format_age, format_value, point_row


def test_a_row_escapes_what_devices_and_brokers_send() -> None:
    """Test that an address, a name and a value with markup reach the page as text."""
    evil = '<img src=x onerror="alert(1)">'
    dp = DataPoint('broker.t"<b>', evil, 99.0, "good", "broker")
    row = point_row('broker.t"<b>', 't"<b>', dp, now=100.0)
    assert "<img" not in row and "<b>" not in row
    assert 'data-address="broker.t&quot;&lt;b&gt;"' in row
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in row
    assert "<td>1.0 s</td>" in row


def test_a_forgotten_point_and_long_values() -> None:
    """Test the row of a point gone from the data space and a value cut at its limit."""
    assert "(forgotten)" in point_row("a.b", "b", None, now=0.0)
    long = format_value("x" * 500)
    assert len(long) == MAX_VALUE_CHARS and long.endswith("…")
    assert format_value(21.5) == "21.5" and format_value({"a": 1}) == '{"a":1}'
    assert format_age(None, 5.0) == "-" and format_age(0.0, 7200.0) == "2.0 h"


def test_an_isolated_card_says_its_process_limits_and_their_state() -> None:
    """Test the card's limits line for an isolated instance, and none in process."""
    from edgelink.ui.pages.instances import limits_of

    assert limits_of({"isolation": "in_process", "pid": None}) == ""
    figures = {
        "isolation": "process",
        "pid": 4711,
        "priority": "high",
        "nice": -5,
        "max_memory_mb": 256.0,
        "max_cpu_share": 0.1,
        "cpu_limit": "duty_cycle",
        "memory_throttled": True,
        "restarts": 2,
    }
    assert limits_of(figures) == (
        "process pid 4711 · priority high (nice -5) · RAM ≤ 256 MB · CPU ≤ 10 % (duty_cycle)"
        " · RAM throttled · restarts 2"
    )
    assert limits_of({"isolation": "process", "throttled": True}) == (
        "process (not running) · paused (CPU share)"
    )
