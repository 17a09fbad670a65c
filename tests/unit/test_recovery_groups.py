"""Fleet recovery's pure parts: recovery groups, the wake spread, the holdoff."""

from __future__ import annotations

import collections
import random
from typing import Any

import pytest

from edgelink import ConnectionManager
from edgelink.errors import ConfigError
from edgelink.supervisor.fleet import FleetRecovery, recovery_endpoint, recovery_group_key
from edgelink.supervisor.policy import WaitKind
from edgelink.testing import ManualClock


@pytest.mark.parametrize(
    ("endpoint", "options", "key"),
    [
        (("host", "10.0.0.7"), {}, "host:10.0.0.7"),
        (("host", "PLC-3.Plant.local"), {}, "host:plc-3.plant.local"),
        (("host", "[fe80::0001]"), {}, "host:fe80::1"),
        (("host", "10.0.0.7"), {"scope": "subnet"}, "subnet:10.0.0.0/24"),
        (("host", "10.0.9.7"), {"scope": "subnet", "subnet_prefix": 16}, "subnet:10.0.0.0/16"),
        (("host", "2001:db8::5"), {"scope": "subnet"}, "subnet:2001:db8::/64"),
        (("host", "plc.local"), {"scope": "subnet"}, "host:plc.local"),  # a name has no subnet
        (("host", "10.0.0.7"), {"group": "hall-3"}, "group:hall-3"),
        (None, {"group": "hall-3"}, "group:hall-3"),
        (("host", "10.0.0.7"), {"enabled": False, "group": "hall-3"}, None),
        (None, {}, None),
        (("line", "/dev/ttyUSB0"), {}, "line:/dev/ttyUSB0"),
    ],
)
def test_recovery_group_key(
    endpoint: tuple[str, str] | None, options: dict[str, Any], key: str | None
) -> None:
    """Test that the group rules give each endpoint and setting its documented group."""
    assert recovery_group_key(endpoint, **options) == key


@pytest.mark.parametrize(
    ("type_name", "config", "settings", "group"),
    [
        ("tcp", {"host": "127.0.0.1", "port": 5000}, {}, "host:127.0.0.1"),
        ("modbus_tcp", {"host": "10.1.2.3", "port": 502}, {}, "host:10.1.2.3"),
        ("modbus_tcp", {"host": "10.1.2.3"}, {"recovery_scope": "subnet"}, "subnet:10.1.2.0/24"),
        ("http", {"base_url": "http://10.1.2.4:8080/api"}, {}, "host:10.1.2.4"),
        ("serial", {"port": "/dev/ttyUSB3"}, {}, "line:/dev/ttyUSB3"),
        ("modbus_rtu", {"port": "/dev/ttyUSB3"}, {}, "line:/dev/ttyUSB3"),
        ("tcp", {"host": "127.0.0.1", "port": 5000}, {"fleet_recovery": False}, None),
        ("tcp", {"host": "127.0.0.1", "port": 5000}, {"recovery_group": "cell"}, "group:cell"),
    ],
)
def test_manager_derives_the_group_from_the_driver_config(
    type_name: str, config: dict[str, Any], settings: dict[str, Any], group: str | None
) -> None:
    """Test that a connection's group comes from its typed driver config and its settings."""
    m = ConnectionManager()
    m.add_connection("c", type_name, config, settings=settings)
    assert m.fleet.group_of("c") == group


def test_endpoint_of_a_seed_style_driver_and_of_none() -> None:
    """Test that a dict-reading driver is grouped by its host, and no host means no group."""
    assert recovery_endpoint(None, {"host": "plc1"}) == ("host", "plc1")
    assert recovery_endpoint(None, {"port": 502}) is None
    assert recovery_endpoint(None, {}) is None


def test_bad_recovery_settings_are_config_errors() -> None:
    """Test that a bad scope or prefix is a ConfigError naming the setting."""
    m = ConnectionManager()
    with pytest.raises(ConfigError, match="recovery_scope"):
        m.add_connection("a", "tcp", {"host": "h", "port": 1}, settings={"recovery_scope": "x"})
    with pytest.raises(ConfigError, match="recovery_subnet_prefix"):
        m.add_connection(
            "b", "tcp", {"host": "h", "port": 1}, settings={"recovery_subnet_prefix": 40}
        )
    with pytest.raises(ConfigError, match="fleet_wake_rate"):
        ConnectionManager(fleet_wake_rate=0)


class Link:
    """A link that counts its wake-ups (what a Supervisor offers the observer)."""

    def __init__(self, fleet: FleetRecovery, connection_id: str) -> None:
        self.fleet = fleet
        self.connection_id = connection_id
        self.waiting = False
        self.woken = 0
        #: Monotonic times it was woken.
        self.woken_at: list[float] = []

    def wake(self) -> bool:
        if not self.waiting:
            return False
        self.waiting = False
        self.woken += 1
        self.woken_at.append(self.fleet.clock.monotonic())
        self.fleet.on_wait_end(self)  # as the supervisor's wait does when it ends
        return True


def group_of(
    fleet: FleetRecovery, n: int, key: str = "host:10.0.0.1", kind: WaitKind = WaitKind.BACKOFF
) -> list[Link]:
    links = [Link(fleet, f"{key.rsplit('.', 1)[-1]}-d{i}") for i in range(n)]
    for link in links:
        fleet.join(link.connection_id, key)
    for link in links:
        link.waiting = True
        fleet.on_wait(link, kind, 6.4)
    return links


async def test_wake_is_spread_at_the_rate_and_once_per_recovery() -> None:
    """Test that 499 siblings are woken over 499/rate s, at most rate x 0.1 + 1 per 100 ms."""
    clock = ManualClock()
    records: list[dict[str, Any]] = []
    fleet = FleetRecovery(
        clock,
        rate=1000,
        window=0.2,
        probe_interval=None,
        on_wake=records.append,
        rng=random.Random(7),
    )
    links = group_of(fleet, 500)
    lead = links[0]
    fleet.on_wait_end(lead)
    fleet.on_link_up(lead, failed_attempts=3)
    assert len(clock.pending()) == 1  # one pacer, not a timer per sibling
    await clock.advance(0.6)
    times = [t for link in links for t in link.woken_at]
    assert len(times) == 499
    assert 0.49 < max(times) <= 0.499 + 1e-9  # 499 slots of 1 ms
    per_bin = collections.Counter(int(t // 0.1) for t in times)
    assert max(per_bin.values()) <= 101
    assert records == [
        {
            "group": "host:10.0.0.1",
            "count": 499,
            "trigger": "1-d0",
            "window": 0.499,
            "delay": 0.0,
            "held_back": 0,
        }
    ]
    assert sum(link.woken for link in links) == 499
    assert fleet.wakes == 1 and fleet.woken == 499


async def test_small_group_uses_the_minimum_window() -> None:
    """Test that a few siblings are spread over fleet_wake_window, not squeezed into 3 ms."""
    clock = ManualClock()
    fleet = FleetRecovery(clock, rate=1000, window=0.2, probe_interval=None)
    links = group_of(fleet, 4)
    fleet.on_link_up(links[0], failed_attempts=1)
    await clock.advance(1.0)
    times = sorted(t for link in links for t in link.woken_at)
    assert len(times) == 3
    # One in each third of the window, not all at once.
    assert [int(t // (0.2 / 3)) for t in times] == [0, 1, 2]


async def test_no_wake_without_a_failure_or_for_other_waits() -> None:
    """Test that a first-try success wakes nobody, nor are hold-downs and sleep probes cut."""
    clock = ManualClock()
    fleet = FleetRecovery(clock, probe_interval=None)
    links = group_of(fleet, 3)
    fleet.on_link_up(links[0], failed_attempts=0)
    assert clock.pending() == []
    held = group_of(fleet, 3, key="host:10.0.0.2", kind=WaitKind.HOLD_DOWN)
    sleepy = group_of(fleet, 3, key="host:10.0.0.3", kind=WaitKind.SLEEP_PROBE)
    fleet.on_link_up(held[0], failed_attempts=2)
    fleet.on_link_up(sleepy[0], failed_attempts=2)
    assert clock.pending() == [] and fleet.wakes == 0
    other = group_of(fleet, 2, key="host:10.0.0.4")
    fleet.on_link_up(other[0], failed_attempts=2)
    await clock.advance(1)
    assert [link.woken for link in (*links, *other)] == [0, 0, 0, 0, 1]


async def test_holdoff_bounds_rewakes_of_a_dead_sibling() -> None:
    """Test that a sibling is woken at most once per holdoff, however many come back."""
    clock = ManualClock()
    fleet = FleetRecovery(clock, holdoff=5.0, probe_interval=None)
    a, b, c, dead = group_of(fleet, 4)
    fleet.on_link_up(a, failed_attempts=2)
    await clock.advance(0.6)
    assert dead.woken == 1
    # It failed again and waits anew; b comes back 1 s later: dead is held back.
    dead.waiting = True
    fleet.on_wait(dead, WaitKind.BACKOFF, 6.4)
    await clock.advance(1.0)
    fleet.on_link_up(b, failed_attempts=2)
    await clock.advance(0.6)
    assert dead.woken == 1 and fleet.held_back == 1
    await clock.advance(5.0)
    fleet.on_link_up(c, failed_attempts=2)
    await clock.advance(0.6)
    assert dead.woken == 2


async def test_a_wait_that_ends_or_a_member_that_leaves_cancels_its_wake() -> None:
    """Test that a wake-up slot is cancelled when its wait ends first or the member leaves."""
    clock = ManualClock()
    fleet = FleetRecovery(clock, window=1.0, probe_interval=None)
    lead, early, gone, stays = group_of(fleet, 4)
    fleet.on_link_up(lead, failed_attempts=1)
    early.waiting = False
    fleet.on_wait_end(early)
    fleet.leave(gone.connection_id)
    await clock.advance(2.0)
    assert (early.woken, gone.woken, stays.woken) == (0, 0, 1)
    assert fleet.group_of(gone.connection_id) is None
    snap = fleet.snapshot()
    assert snap["groups"] == 1 and snap["largest"][0]["members"] == 3


async def test_a_group_all_down_probes_one_member_per_interval() -> None:
    """Test that while no member is up one member in backoff is woken per probe interval."""
    clock = ManualClock()
    fleet = FleetRecovery(clock, probe_interval=0.25, rng=random.Random(3))
    links = group_of(fleet, 40)  # each waits 6.4 s: 40 / 6.4 s is more than 4 per s
    assert clock.pending() == [0.25]
    await clock.advance(0.25)
    assert sum(link.woken for link in links) == 1 and fleet.probes == 1
    # The probed member failed and waits again; one more probe per 0.25 s.
    probed = next(link for link in links if link.woken)
    probed.waiting = True
    fleet.on_wait(probed, WaitKind.BACKOFF, 6.4)
    await clock.advance(1.0)
    assert fleet.probes == 5


async def test_a_small_group_probes_no_faster_than_its_members_would() -> None:
    """Test that two members waiting 6.4 s are probed once per 3.2 s, not per 0.25 s."""
    clock = ManualClock()
    fleet = FleetRecovery(clock, probe_interval=0.25)
    pair = group_of(fleet, 2)
    await clock.advance(3.1)
    assert fleet.probes == 0
    await clock.advance(0.2)
    assert fleet.probes == 1 and sum(link.woken for link in pair) == 1


async def test_probes_skip_cooldowns_and_a_lone_member() -> None:
    """Test that suspended members in cooldown are not probed, nor one member alone in backoff."""
    clock = ManualClock()
    fleet = FleetRecovery(clock, probe_interval=0.25)
    cooling = group_of(fleet, 5, kind=WaitKind.COOLDOWN)
    alone = group_of(fleet, 1, key="host:10.0.0.8")
    up, down = group_of(fleet, 2, key="host:10.0.0.7")
    fleet.on_wait_end(up)  # it tried, got through and is up: one member left in backoff
    fleet.on_link_up(up, failed_attempts=0)
    await clock.advance(10)
    assert [link.woken for link in (*cooling, *alone, down)] == [0] * 7
    assert fleet.probes == 0


async def test_overlapping_wakes_share_the_rate() -> None:
    """Test that a second group's wake starts after the first one's slots: one rate for all."""
    clock = ManualClock()
    records: list[dict[str, Any]] = []
    fleet = FleetRecovery(clock, rate=100, window=0.1, probe_interval=None, on_wake=records.append)
    first = group_of(fleet, 21, key="host:10.0.0.1")
    second = group_of(fleet, 11, key="host:10.0.0.2")
    fleet.on_link_up(first[0], failed_attempts=1)
    await clock.advance(0.05)
    fleet.on_link_up(second[0], failed_attempts=1)
    assert records[1]["delay"] == pytest.approx(0.15)  # 20 slots of 10 ms from 0, now 0.05
    await clock.advance(1.0)
    times = sorted(t for link in (*first, *second) for t in link.woken_at)
    assert len(times) == 30
    per_bin = collections.Counter(int(t // 0.1) for t in times)
    assert max(per_bin.values()) <= 100 * 0.1 + 1  # one rate for both
    assert times[-1] > 0.29  # 30 slots of 10 ms: the second wake queued behind the first
