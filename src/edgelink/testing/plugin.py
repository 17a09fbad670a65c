"""pytest plugin of edgelink's test kit: fixtures for a manual clock and loopback peers."""

from __future__ import annotations

import pytest

from edgelink.testing.clock import ManualClock


@pytest.fixture
def manual_clock() -> ManualClock:
    """Return a fresh `ManualClock`."""
    return ManualClock()
