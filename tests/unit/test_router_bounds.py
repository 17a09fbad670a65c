"""Per-address bounds of the router (data space, plans, echoes) and its batched connection writes."""

from __future__ import annotations

import asyncio
import gc
import random
import tracemalloc
from collections.abc import Sequence
from typing import Any

import pytest

from edgelink.errors import ConnectError, DeviceError
from edgelink.router import DataPoint, Router, Target
from edgelink.router.address import parse_pattern


class Sink(Target):
    """A target that keeps a count only (a memory test must not keep what it gets)."""

    def __init__(self) -> None:
        self.count = 0

    async def send(self, tag: str, dp: DataPoint) -> None:
        self.count += 1

    async def send_batch(self, items: Sequence[tuple[str, DataPoint]]) -> None:
        self.count += len(items)


def pass_through(target: str = "out.{1}") -> dict[str, Any]:
    return {"version": "1.0", "routes": [{"id": "p", "from": "broker.in/+", "to": target}]}


# ---------------------------------------------------------------- data space


def test_data_space_evicts_least_recent_and_its_tree_and_source_index() -> None:
    """Test that an evicted address leaves the tree, its source's index and `history`."""
    router = Router(max_addresses=3)
    router.route_data("plc", "a.x", 1)
    router.route_data("plc", "a.y", 2)
    router.route_data("dev", "b", 3)
    router.route_data("plc", "a.x", 4)  # a.x is now the most recent: a.y goes first
    router.route_data("dev", "c", 5)
    space = router.data
    assert space.addresses() == ["dev.b", "dev.c", "plc.a.x"]
    assert space.evicted == 1
    assert space.children("plc.a") == ["plc.a.x"]
    assert space.history("plc.a.x") == [space.history("plc.a.x")[0], space.get("plc.a.x")]
    assert [dp.value for dp in space.history("plc.a.x")] == [1, 4]
    router.route_data("dev", "d", 6)  # evicts dev.b
    router.route_data("dev", "e", 7)  # evicts plc.a.x: the whole plc branch goes
    assert space.children() == ["dev"]
    assert space.children("plc") == [] and space.history("plc.a.x") == []
    assert router.mark_stale("plc", "data_timeout") == 0
    assert router.mark_stale("dev", "data_timeout") == 3
    assert {dp.quality for dp in space.snapshot("dev").values()} == {"stale"}
    stats = router.stats()
    assert stats["evicted_addresses"] == 3 and stats["max_addresses"] == 3


def test_an_address_seen_once_keeps_its_record_only() -> None:
    """Test that no history ring is made for an address before its second datapoint."""
    router = Router(history=3)
    router.route_data("mq", "t", 1)
    assert type(router._rings["mq.t"]) is tuple
    router.mark_stale("mq", "half_open")
    assert router.data.get("mq.t") is not None and router.data.get("mq.t").quality == "stale"  # type: ignore[union-attr]
    for v in (2, 3, 4):
        router.route_data("mq", "t", v)
    assert [dp.value for dp in router.data.history("mq.t")] == [2, 3, 4]
    assert router.data.value("mq.t") == 4


def test_history_keeps_every_field_oldest_first_across_the_ring() -> None:
    """Test that the compact history gives back exactly the datapoints stored.

    Plain older datapoints are kept as value and timestamp only; any other
    (bad or stale quality, metadata, a route path, another source, an int
    timestamp) whole. Both must come back field for field, oldest first,
    once the ring wrapped too.
    """
    router = Router(history=4)
    space = router.data
    meta = {"unit": "V"}
    sent = [
        ("plc", "v", 1, None, "good", 1.5),
        ("plc", "v", 2, meta, "good", 2.5),
        ("plc", "v", None, None, "bad", 3.5),
        ("plc", "v", 4.25, None, "good", 4),
        ("plc", "v", (5, 6), None, "good", 5.5),
        ("plc", "v", "x", None, "good", float("nan")),
        ("plc", "v", 7, None, "good", 7.5),
    ]
    for source, tag, value, metadata, quality, ts in sent:
        router.route_data(source, tag, value, metadata, quality=quality, ts=ts)
        router.data.put(DataPoint("plc.w", value, ts, quality, "calc"))
    got = space.history("plc.v")
    assert len(got) == 4
    for dp, (source, tag, value, metadata, quality, ts) in zip(got, sent[-4:], strict=True):
        assert dp.address == f"{source}.{tag}" and dp.source == source
        assert dp.value == value and dp.quality == quality and dp.metadata == metadata
        assert dp.ts == ts or (ts != ts and dp.ts != dp.ts)
        assert type(dp.ts) is type(ts) and dp.path == () and dp.hops == 0
    assert [dp.value for dp in space.history("plc.w")] == [4.25, (5, 6), "x", 7]
    assert {dp.source for dp in space.history("plc.w")} == {"calc"}
    # Marking stale replaces the last record only; the older ones stay measurements.
    router.mark_stale("plc", "half_open")
    assert [dp.quality for dp in space.history("plc.v")] == ["good"] * 3 + ["stale"]
    assert space.get("plc.v").value == 7  # type: ignore[union-attr]
    # A history of 2 and of 1 still hold what they promise.
    for size, expect in ((2, [6, 7]), (1, [7])):
        small = Router(history=size)
        for v in range(8):
            small.route_data("d", "t", v)
        assert [dp.value for dp in small.data.history("d.t")] == expect


def test_data_space_memory_per_modbus_device_is_bounded() -> None:
    """Test what 200 devices x 10 registers, 10 datapoints each, cost in the data space.

    The old rings (a deque of the last 10 tuples per address, each with its
    own address string) took 31.7 KB per device here; the compact ring keeps
    the last record whole and older ones as a value slot and a C double, and
    the address is one string: 10.4 KB, 3.2 KB of it the values themselves.
    """
    devices, registers = 200, 10
    tags = [f"ir:{i}" for i in range(registers)]
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        router = Router()
        route = router.route_data
        for second in range(12):  # the rings full (10), and some more
            ts = 1_000.0 + second
            for d in range(devices):
                source = f"inv{d:04d}"
                for i, tag in enumerate(tags):
                    route(source, tag, 1_000 + i, ts=ts)
        gc.collect()
        per_device = (tracemalloc.get_traced_memory()[0] - before) / devices
    finally:
        tracemalloc.stop()
    assert len(router.data) == devices * registers
    assert len(router.data.history("inv0007.ir:3")) == 10
    assert per_device < 14_000, per_device  # was 31,700 (10,400 now, 3,200 of it the values)


def test_subscribers_see_new_and_updated_addresses() -> None:
    """Test that subscriptions still get the first datapoint of an address and its changes."""
    router = Router(max_addresses=2)
    seen: list[tuple[str, Any]] = []
    router.data.subscribe("mq.**", lambda dp: seen.append((dp.address, dp.value)))
    for tag, v in (("a", 1), ("a", 1), ("a", 2), ("b", 1), ("c", 1)):
        router.route_data("mq", tag, v)
    assert seen == [("mq.a", 1), ("mq.a", 2), ("mq.b", 1), ("mq.c", 1)]
    assert router.data.addresses() == ["mq.b", "mq.c"]


def test_configure_lowers_max_addresses_at_once() -> None:
    """Test that a lower bound evicts the surplus, and a bad one is refused."""
    router = Router()
    for i in range(10):
        router.route_data("mq", f"t{i}", i)
    router.configure(max_addresses=4)
    assert router.data.addresses() == [f"mq.t{i}" for i in range(6, 10)]
    with pytest.raises(ValueError, match="max_addresses"):
        router.configure(max_addresses=0)


# ---------------------------------------------------------------- plans


def test_a_pass_through_caches_no_plan_for_an_address_seen_once() -> None:
    """Test that plans are cached from an address's second datapoint and bounded by max_plans."""
    router = Router(max_plans=5)
    sink = Sink()
    router.add_target("out", sink)
    router.load_routes(pass_through())
    for i in range(100):
        router.route_data("broker", f"in/u{i}", i)
    assert router.stats()["cached_plans"] == 0
    for i in range(12):
        router.route_data("broker", f"in/u{i}", i)
    stats = router.stats()
    assert stats["cached_plans"] == 2 and stats["plan_cache_resets"] == 2


def test_shape_match_agrees_with_the_index() -> None:
    """Test that the match cached per address shape equals a full match, captures included."""
    patterns = [
        "broker.in/+",
        "broker.in/special",
        "broker.+/+",
        "broker.in/#",
        "broker.**",
        "plc.*.temp",
        "plc.line1.*",
        "plc.**",
        "s.a/+/v",
    ]
    routes = [{"id": f"r{i}", "from": p, "to": f"log.t{i}"} for i, p in enumerate(patterns)]
    router = Router()
    router.load_routes({"version": "1.0", "routes": routes})
    table = router._table
    rng = random.Random(7)
    words = ["in", "special", "u1", "temp", "line1", "v", "a", "x", "\x00"]
    for _ in range(3000):
        source = rng.choice(["broker", "plc", "s"])
        sep = rng.choice(["/", "."])
        tag = sep.join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        address = f"{source}.{tag}"
        expected = sorted((r.id, caps) for r, caps in table.wild.match(address))
        got = sorted((r.id, caps) for r, caps in router._wild_match(table, address))
        assert got == expected, address
    assert table.shapes  # the cache was used


@pytest.mark.timeout(90)  # tracemalloc and asyncio debug mode make it slow on a busy machine
def test_memory_stays_flat_under_30k_distinct_topics() -> None:
    """Test that data space, plans and echoes stay within their bounds (tracemalloc)."""
    tracemalloc.start()
    try:
        router = Router(max_addresses=1_000, max_plans=1_000)
        sink = Sink()
        router.add_target("out", sink)
        router.load_routes(pass_through())
        route = router.route_data

        async def run(first: int, count: int) -> int:
            for i in range(first, first + count):
                route("broker", f"in/u{i:07d}", 20.5)
                if i % 1000 == 0:
                    await asyncio.sleep(0)  # deliveries run between bursts, as with a driver
            await router.drain()
            gc.collect()
            # What the router's own code holds, block by block. A single block
            # of megabytes is a resize of the interpreter's table of interned
            # strings (`sys.intern`, shared with every other test of this
            # process), not the router's: growth here is many small blocks.
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, "*edgelink/router/*")]
            )
            return sum(t.size for t in snapshot.traces if t.size < 1_000_000)

        full = asyncio.run(run(0, 10_000))  # every bound reached long ago
        after = asyncio.run(run(10_000, 20_000))
    finally:
        tracemalloc.stop()
    assert sink.count == 30_000
    assert len(router.data) == 1_000 and router.data.evicted == 29_000
    # The old code kept a plan per topic: it grew by about 29 MB per 80k
    # topics, so about 7 MB over these 20k.
    assert after - full < 500_000, (full, after)


# ---------------------------------------------------------------- echoes


def test_echoes_of_many_addresses_stay_bounded_and_expire_from_the_front() -> None:
    """Test that writes to ever new addresses keep at most ECHO_LIMIT echoes, counted."""
    from edgelink.router.engine import ECHO_LIMIT
    from edgelink.testing import ManualClock

    clock = ManualClock()
    written: list[tuple[str, Any]] = []
    router = Router(clock=clock, direct_writer=lambda cid: lambda t, v: written.append((t, v)))
    router.register_connection("broker")
    router.load_routes(
        {"version": "1.0", "routes": [{"id": "p", "from": "src.+", "to": "broker.out/{1}"}]}
    )

    async def run() -> None:
        for i in range(ECHO_LIMIT + 500):
            router.route_data("src", f"t{i}", 20)
        await router.drain()
        assert router.stats()["echoes"] == ECHO_LIMIT
        assert router.echo_evicted == 500
        await clock.advance(router.echo_window + 1)
        router.route_data("src", "late", 20)
        await router.drain()
        assert router.stats()["echoes"] == 1  # the expired ones went from the front

    asyncio.run(run())
    assert len(written) == ECHO_LIMIT + 501


# ---------------------------------------------------------------- batched writes


class Conn:
    """Stands in for a driver's ``write_nowait``: records, or fails as told."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, Any]] = []
        self.fail: dict[str, BaseException] = {}
        self.acks: dict[str, asyncio.Future[None]] = {}
        self.connected = True

    def lookup(self, connection_id: str) -> Any:
        return self.write_nowait if self.connected else None

    def write_nowait(self, tag: str, value: Any) -> asyncio.Future[None] | None:
        if tag in self.fail:
            raise self.fail[tag]
        self.writes.append((tag, value))
        return self.acks.get(tag)


def writes_router(conn: Conn, slow: list[tuple[str, str, Any]]) -> Router:
    async def writer(cid: str, tag: str, value: Any) -> None:
        slow.append((cid, tag, value))

    router = Router(writer=writer, direct_writer=conn.lookup)
    router.register_connection("broker")
    router.load_routes(
        {"version": "1.0", "routes": [{"id": "p", "from": "src.+", "to": "broker.out/{1}"}]}
    )
    return router


async def test_direct_writes_go_out_at_once_without_a_task_or_callback() -> None:
    """Test the direct path: an idle outbox writes at once (the driver batches), failures alone."""
    conn, slow = Conn(), list[tuple[str, str, Any]]()
    router = writes_router(conn, slow)
    conn.fail["out/bad"] = DeviceError("refused")
    tasks_before = len(asyncio.all_tasks())
    loop = asyncio.get_running_loop()
    ready_before = len(loop._ready)  # type: ignore[attr-defined]
    for tag in ("a", "bad", "c"):
        router.route_data("src", tag, 1)
    ob = router._outboxes["broker"]
    assert conn.writes == [("out/a", 1), ("out/c", 1)] and slow == []
    assert ob.task is None and ob.idle
    assert len(asyncio.all_tasks()) == tasks_before
    assert len(loop._ready) == ready_before  # type: ignore[attr-defined]
    stats = router.target_stats("broker")
    assert stats["sent"] == 2 and stats["errors"] == 1 and stats["pending"] == 0
    assert router.route_stats("p")["errors"] == 1  # the delivery error, on its route


async def test_direct_writes_fall_back_to_the_writer_when_the_link_is_down() -> None:
    """Test that a lost link (or no direct write) hands the rest to the writer, in order."""
    conn, slow = Conn(), list[tuple[str, str, Any]]()
    router = writes_router(conn, slow)
    conn.fail["out/b"] = ConnectError("gone")
    for tag in ("a", "b", "c"):
        router.route_data("src", tag, 1)
    await router.drain()
    assert conn.writes == [("out/a", 1)]
    assert slow == [("broker", "out/b", 1), ("broker", "out/c", 1)]
    conn.connected = False
    router.route_data("src", "d", 2)
    await router.drain()
    assert slow[-1] == ("broker", "out/d", 2)
    assert router.target_stats("broker")["sent"] == 4


async def test_direct_writes_wait_for_acknowledgements_once_per_batch() -> None:
    """Test QoS>0 writes: sent when acknowledged; a lost ack is sent again by the writer."""
    conn, slow = Conn(), list[tuple[str, str, Any]]()
    router = writes_router(conn, slow)
    loop = asyncio.get_running_loop()
    conn.acks = {"out/a": loop.create_future(), "out/b": loop.create_future()}
    router.route_data("src", "a", 1)
    router.route_data("src", "b", 2)
    router.route_data("src", "c", 3)
    await asyncio.sleep(0)
    ob = router._outboxes["broker"]
    # a waits for its ack in a task; b and c queue behind it and go out as one batch.
    assert ob.task is not None and router.target_stats("broker")["pending"] == 2
    conn.acks["out/a"].set_result(None)
    for _ in range(20):
        await asyncio.sleep(0)
    assert router.target_stats("broker")["sent"] == 2  # a, c
    conn.acks["out/b"].set_exception(ConnectError("lost before the ack"))
    await router.drain()
    assert slow == [("broker", "out/b", 2)]
    assert router.target_stats("broker")["sent"] == 3


def test_parse_pattern_literals_are_indexed() -> None:
    """Test that the index knows its literal levels (what makes a shape)."""
    router = Router()
    router.load_routes(pass_through())
    assert router._table.wild.literals == {"broker", "in"}
    assert parse_pattern("broker.in/+").wildcards
