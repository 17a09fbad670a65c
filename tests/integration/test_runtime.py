"""The manager's view of its process: loop-lag sampling, stall events, the gc policy."""

from __future__ import annotations

import asyncio
import gc
import time
import types
from collections.abc import Callable

import pytest

from conftest import Recorder, tcp
from edgelink import ConfigError, ConnectionManager
from edgelink._deadline import DeadlineWheel
from edgelink.gcpolicy import GcPolicy
from edgelink.testing.peers import PingPongPeer

Make = Callable[..., ConnectionManager]


async def test_a_stall_is_measured_and_evented_once_per_quiet_period(make_manager: Make) -> None:
    """Test that two loop stalls give one loop_lag event that counts both."""
    m = make_manager(loop_lag_interval=0.01, loop_lag_threshold=0.05)
    rec = Recorder(m)
    async with m:
        await asyncio.sleep(0.05)
        time.sleep(0.12)  # a callback that blocks the loop
        await asyncio.sleep(0.05)
        time.sleep(0.12)
        await asyncio.sleep(0.05)
        events = await rec.of("loop_lag")
        lag = m.loop_lag()
    assert len(events) == 1
    assert events[0].connection_id is None
    assert events[0].data["lag_ms"] >= 50
    assert events[0].data["threshold_ms"] == 50.0
    assert lag["stalls"] == 2
    assert lag["max_ms"] >= 100
    assert lag["samples"] >= 10
    assert not m.lag_monitor.running  # stopped with the manager


async def test_fleet_gc_policy_freezes_after_settle_and_undoes_it_on_stop(
    make_manager: Make, peer: PingPongPeer
) -> None:
    """Test that the fleet policy sets thresholds, freezes once up, and restores both."""
    before = gc.get_threshold()
    policy = GcPolicy(settle=0.05, thresholds=(5000, 15, 15))
    m = make_manager(gc_policy=policy)
    m.add_connection("dev", "tcp", tcp(peer.port))
    assert m.runtime_status()["gc"]["freezes"] == 0
    async with m:
        assert gc.get_threshold() == (5000, 15, 15)
        await m.wait_for_state("dev", "connected", timeout=5)
        async with asyncio.timeout(5):
            while m.runtime_status()["gc"]["freezes"] == 0:
                await asyncio.sleep(0.01)
        status = m.runtime_status()
        assert status["gc"]["frozen_objects"] > 0
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_without_a_policy_the_collector_is_left_alone(make_manager: Make) -> None:
    """Test that the library default neither freezes nor changes thresholds."""
    before = gc.get_threshold()
    m = make_manager()
    async with m:
        await asyncio.sleep(0.05)
        assert m.runtime_status()["gc"] is None
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


def test_an_unknown_gc_policy_is_a_config_error() -> None:
    """Test that gc_policy='bogus' is refused with the argument named."""
    with pytest.raises(ConfigError, match="gc_policy"):
        ConnectionManager(gc_policy="bogus")


async def test_links_add_no_deadline_wheels_or_bound_methods_of_their_own(
    make_manager: Make, peer: PingPongPeer
) -> None:
    """Test that connections share the manager's deadline wheel and callbacks.

    An empty wheel is falsy (it has a length), and ``deadlines or DeadlineWheel()``
    once gave every supervisor its own: one more wheel, dict and loop timer
    per link and per check.
    """

    def count() -> tuple[int, int]:
        gc.collect()
        objects = gc.get_objects()
        wheels = sum(1 for o in objects if isinstance(o, DeadlineWheel))
        methods = sum(
            1
            for o in objects
            if isinstance(o, types.MethodType) and isinstance(o.__self__, ConnectionManager)
        )
        return wheels, methods

    m = make_manager()
    base = count()
    for i in range(20):
        m.add_connection(f"dev{i}", "tcp", tcp(peer.port))
    async with m:
        for i in range(20):
            await m.wait_for_state(f"dev{i}", "connected", timeout=5)
        wheels, methods = count()
    assert wheels == base[0]
    assert methods - base[1] < 5  # the manager's own tasks; four per link before
