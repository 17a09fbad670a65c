"""The dispatch's inlined first hop against its general, loop-guarded path (`_fire`).

`Router.route_data` runs a fresh datapoint's first hop in a loop of its own
(the hot path); echoes and virtual hops take the general path. A router whose
class turns the inlined hop off sends every datapoint down the general path;
for random route tables and datapoints both must deliver the same datapoints,
leave the same data space and count the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgelink import MemoryTarget, RouteError, Router
from edgelink.testing import ManualClock

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SOURCES = ["plc.a", "plc.b", "plc.x", "calc.x", "plc.*", "plc.**", "*.a", "*.x"]
# "calc.*" names no endpoint: a virtual address, routed on at once. Datapoints
# come from "plc" only, never a target: the general path refuses to send a
# datapoint back to the address it came from, the first hop allows it (see
# test_first_hop_may_write_back_to_its_own_address).
TARGETS = ["mem.t1", "mem.t2", "mem.{1}", "mem2.t", "calc.x", "calc.y", "calc.{1}"]
CONDITIONS = [
    None,
    "value > 5",
    "value == 3",
    "value['k'] > 1",
    "quality == 'good'",
    "tag in ['a', 'x']",
    "value != null and value < 100",
]
TRANSFORMS = [
    None,
    "scale(2)",
    "offset(1) | round(1)",
    "deadband(2)",
    "expr(value / (value - 3))",
    "map({1: 'one', 3: 'three'}, 0)",
    "throttle(1s)",
]
VALUES = st.one_of(
    st.integers(-5, 10),
    st.sampled_from(["3", "7.5", "on", None, True]),
    st.fixed_dictionaries({"k": st.integers(0, 3)}),
)

route_st = st.fixed_dictionaries(
    {
        "from": st.lists(st.sampled_from(SOURCES), min_size=1, max_size=2, unique=True),
        "to": st.lists(st.sampled_from(TARGETS), min_size=1, max_size=3, unique=True),
    },
    optional={
        "condition": st.sampled_from(CONDITIONS).filter(bool),
        "transform": st.sampled_from(TRANSFORMS).filter(bool),
        "enabled": st.booleans(),
    },
)
datapoint_st = st.tuples(
    st.just("plc"),
    st.sampled_from(["a", "b", "x"]),
    VALUES,
    st.sampled_from(["good", "bad"]),
)


class GeneralPathRouter(Router):
    """A router that sends every datapoint down the general path."""

    _INLINE_FIRST_HOP = False


def build(cls: type[Router], table: list[dict[str, Any]]) -> tuple[Router, dict[str, MemoryTarget]]:
    router = cls(clock=ManualClock())
    targets = {"mem": MemoryTarget(), "mem2": MemoryTarget()}
    for endpoint, target in targets.items():
        router.add_target(endpoint, target)
    doc = {"version": "1.0", "routes": [{"id": f"r{i}", **r} for i, r in enumerate(table)]}
    router.load_routes(doc)
    return router, targets


def run(
    cls: type[Router], table: list[dict[str, Any]], points: list[tuple[str, str, Any, str]]
) -> dict[str, Any]:
    router, targets = build(cls, table)

    async def feed() -> list[bool]:
        accepted = [
            router.route_data(source, tag, value, quality=quality, ts=1000.0 + i)
            for i, (source, tag, value, quality) in enumerate(points)
        ]
        await router.drain(timeout=5)
        return accepted

    accepted = asyncio.run(feed())
    return {
        "accepted": accepted,
        "deliveries": {ep: list(t.items) for ep, t in targets.items()},
        "data": {a: router.data.history(a) for a in router.data.addresses()},
        "stats": router.stats(),
        "routes": [router.route_stats(r["id"]) for r in router.routes],
    }


@PROPERTY
@given(
    table=st.lists(route_st, min_size=1, max_size=5),
    points=st.lists(datapoint_st, min_size=1, max_size=12),
)
def test_fast_path_and_general_path_agree(
    table: list[dict[str, Any]], points: list[tuple[str, str, Any, str]]
) -> None:
    """Test that the inlined first hop and the general path deliver, store and count the same."""
    try:
        fast = run(Router, table, points)
    except RouteError:
        # A template capture the pattern lacks ("mem.{1}" from "plc.a"): a table
        # refused at load, for both routers alike.
        try:
            build(GeneralPathRouter, table)
        except RouteError:
            return
        raise
    general = run(GeneralPathRouter, table, points)
    assert fast == general


def test_first_hop_may_write_back_to_its_own_address() -> None:
    """Test that a fresh datapoint may be routed to its own address once, the general path not.

    The one known difference between the two paths, kept as it is: the first
    hop does not look at the trail (it holds only the datapoint's own address).
    """
    table = [{"from": "plc.a", "to": "plc.a", "transform": "scale(2)"}]
    fast = run(Router, table, [("plc", "a", 1, "good")])
    general = run(GeneralPathRouter, table, [("plc", "a", 1, "good")])
    assert fast["routes"][0]["passed"] == 1
    assert fast["stats"]["loop_blocked"] == 1  # the virtual re-entry, blocked by the trail
    assert general["routes"][0]["passed"] == 1
    assert general["data"]["plc.a"][-1].value == 1  # nothing written back
    assert fast["data"]["plc.a"][-1].value == 2
