"""`edgelink.ui.points`: what the data and MQTT pages show for one point, escaped."""

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
