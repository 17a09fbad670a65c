"""The Router without a manager: tables, delivery, loop guard, hot swap, stats, spam guard."""

from __future__ import annotations

import asyncio
import json
import logging
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from edgelink import DataPoint, MemoryTarget, RouteError, Router, Target
from edgelink.router import LogTarget, routing_json_schema
from edgelink.router.spam import SpamGuard
from edgelink.testing import ManualClock


def routes(*items: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1.0", "routes": list(items)}


def route(rid: str, src: str | list[str], to: str | list[str], **extra: Any) -> dict[str, Any]:
    return {"id": rid, "from": src, "to": to, **extra}


@pytest.fixture
def mem() -> MemoryTarget:
    return MemoryTarget()


@pytest.fixture
def router(mem: MemoryTarget) -> Router:
    r = Router(clock=ManualClock())
    r.add_target("mem", mem)
    return r


# ------------------------------------------------------------- loading


def test_load_from_dict_json_and_yaml(tmp_path: Path, router: Router) -> None:
    """Test that routes load from a dict, a JSON file and a YAML file, with a diff."""
    doc = routes(route("a", "plc.x", "mem.y"))
    diff = router.load_routes(doc)
    assert (diff.added, diff.removed, diff.changed) == (["a"], [], [])
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(routes(route("a", "plc.x", "mem.y"), route("b", "plc.z", "mem.z"))))
    diff = router.load_routes(path)
    assert (diff.added, diff.unchanged) == (["b"], ["a"])
    yml = tmp_path / "routing.yaml"
    yml.write_text("version: '1.0'\nroutes:\n  - {id: c, from: plc.x, to: mem.c}\n")
    diff = router.load_routes(str(yml))
    assert (diff.added, sorted(diff.removed)) == (["c"], ["a", "b"])
    assert [r["id"] for r in router.routes] == ["c"]


def test_seed_routing_json_loads(router: Router) -> None:
    """Test that the changelog seed's routing.json shape loads as written."""
    router.load_routes(
        {
            "version": "1.0",
            "routes": [
                {
                    "id": "bms_to_plc",
                    "from": "bt.bms_001.voltage",
                    "to": "plc_001.MAIN.fbBattery.fVoltage",
                    "transform": "scale(0.001)",
                    "enabled": True,
                },
                {
                    "id": "alarm_multi_target",
                    "from": "plc_001.MAIN.bAlarmActive",
                    "to": [
                        "mqtt.broker_local.alarms/critical",
                        "webhook.alert_service",
                        "log.system",
                    ],
                    "condition": "value == true",
                },
            ],
        }
    )
    assert router.match("bt.bms_001.voltage") == ["bms_to_plc"]


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        ({"routes": [{"from": "a.b", "to": "c.d"}]}, "routes[0].id", "Field required"),
        ({"routes": [route("a", "a.b", "c.d", colour="red")]}, "routes[0].colour", "unknown key"),
        ({"routes": [route("a b", "a.b", "c.d")]}, "routes[0].id", "route id"),
        ({"routes": [route("a", [], "c.d")]}, "routes[0].from", "at least one"),
        ({"routes": [route("a", "a.b", "c.d", enabled="yes please")]}, "routes[0].enabled", ""),
        ({"routes": [route("a", "a.b", "c.d")], "version": "2.0"}, "version", "version 1.x"),
        ({"routes": "nope"}, "routes", ""),
        (
            {"routes": [route("a", "a.b", "c.d"), route("a", "a.c", "c.e")]},
            "routes[1].id",
            "duplicate route id 'a'",
        ),
        ({"routes": [route("a", "a..b", "c.d")]}, "routes[0].from", "'..'"),
        ({"routes": [route("a", ["a.b", "a.c*"], "c.d")]}, "routes[0].from[1]", "whole segments"),
        ({"routes": [route("a", "a.*", "c.{2}")]}, "routes[0].to", "needs 2 wildcards"),
        ({"routes": [route("a", "a.b", ["c.d", "e.*"])]}, "routes[0].to[1]", "wildcards"),
        (
            {"routes": [route("a", "a.b", "c.d", condition="value >> 1")]},
            "routes[0].condition",
            "at position 8",
        ),
        (
            {"routes": [route("a", "a.b", "c.d", transform="sclae(2)")]},
            "routes[0].transform",
            "unknown transform 'sclae'",
        ),
    ],
)
def test_bad_routes_name_path_and_reason(
    router: Router, doc: dict[str, Any], path: str, fragment: str
) -> None:
    """Test that every bad input is a RouteError with the JSON path and reason."""
    with pytest.raises(RouteError) as info:
        router.load_routes(doc)
    err = info.value
    assert err.path == path, str(err)
    assert fragment in str(err)
    assert err.file == "<dict>"


def test_bad_expression_error_names_route_expression_position(router: Router) -> None:
    """Test that a bad condition names the route id, the expression and the position."""
    with pytest.raises(RouteError) as info:
        router.load_routes(routes(route("hot", "a.b", "c.d", condition="value > > 3")))
    err = info.value
    assert (err.route_id, err.expression, err.position) == ("hot", "value > > 3", 9)
    assert str(err).startswith("<dict>: routes[0].condition: route 'hot': bad condition")


def test_all_errors_of_a_file_are_collected(tmp_path: Path, router: Router) -> None:
    """Test that several broken routes are reported together, with the file name."""
    path = tmp_path / "routing.json"
    path.write_text(
        json.dumps(
            routes(
                route("a", "a.b", "c.d", condition="value >"),
                route("b", "a..b", "c.d"),
                route("c", "a.b", "c.d"),
            )
        )
    )
    with pytest.raises(RouteError) as info:
        router.load_routes(path)
    err = info.value
    assert [p for p, _ in err.errors] == ["routes[0].condition", "routes[1].from"]
    assert "2 errors" in str(err) and str(path) in str(err)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{", "JSON syntax error at line 1"),
        ('{"routes": [], "routes": []}', "duplicate key 'routes'"),
        ("", "empty"),
        ("[1, 2]", "top level must be an object"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_bad_files(tmp_path: Path, router: Router, content: str | bytes, fragment: str) -> None:
    """Test that unreadable or malformed files are RouteErrors naming the file."""
    path = tmp_path / "routing.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(RouteError) as info:
        router.load_routes(path)
    assert fragment in str(info.value) and info.value.file == str(path)
    with pytest.raises(RouteError, match="file not found"):
        router.load_routes(tmp_path / "missing.json")


async def test_bad_file_keeps_the_old_table(router: Router, mem: MemoryTarget) -> None:
    """Test that a failed load changes nothing: the old routes keep working."""
    router.load_routes(routes(route("a", "plc.x", "mem.y")))
    with pytest.raises(RouteError):
        router.load_routes(
            routes(route("a", "plc.x", "mem.y"), route("b", "x", "y", condition="("))
        )
    router.route_data("plc", "x", 1)
    await router.drain()
    assert mem.values == [1]
    assert [r["id"] for r in router.routes] == ["a"]


def test_json_schema_is_exported() -> None:
    """Test that routing.json has a JSON Schema with the route fields."""
    schema = routing_json_schema()
    assert schema["title"] == "edgelink routing.json"
    text = json.dumps(schema)
    for key in ('"from"', '"to"', '"condition"', '"transform"', '"enabled"'):
        assert key in text


# --------------------------------------------------------- routing


async def test_condition_transform_and_stats(mem: MemoryTarget) -> None:
    """Test the whole path: condition, transform, delivery, data space and counters."""
    clock = ManualClock()
    router = Router(clock=clock)
    router.add_target("mem", mem)
    router.load_routes(
        routes(route("r", "plc.temp", "mem.out", condition="value > 20", transform="scale(2)"))
    )
    for v in (19, 21, "25.5", "oops"):
        router.route_data("plc", "temp", v)
    await router.drain()
    assert mem.values == [42, 51.0]
    tag, dp = mem.items[0]
    assert tag == "out" and dp.address == "plc.temp" and dp.source == "plc"
    assert dp.path == ("r",) and dp.hops == 1 and dp.ts == clock.time()
    stats = router.route_stats("r")
    assert {k: stats[k] for k in ("matched", "passed", "filtered", "errors")} == {
        "matched": 4,
        "passed": 2,
        "filtered": 1,
        "errors": 1,
    }
    assert stats["last_fired"] == clock.time()
    assert "EvalError" in stats["last_error"]
    last = router.data.get("plc.temp")
    assert isinstance(last, DataPoint) and last.value == "oops" and last.tag == "temp"
    with pytest.raises(KeyError):
        router.route_stats("nope")


async def test_metadata_ts_quality_and_keywords(router: Router, mem: MemoryTarget) -> None:
    """Test that ts and quality come from keywords or metadata, and metadata stays on."""
    router.load_routes(routes(route("r", "plc.*", "mem.{1}", condition="quality == 'good'")))
    router.route_data("plc", "a", 1, {"ts": 5.0, "quality": "good", "unit": "C"})
    router.route_data("plc", "b", 2, {"quality": "bad"})
    router.route_data("plc", "c", 3, quality="good", ts=7.0)
    await router.drain()
    assert [(t, dp.ts, dp.metadata) for t, dp in mem.items] == [
        ("a", 5.0, {"ts": 5.0, "quality": "good", "unit": "C"}),
        ("c", 7.0, None),
    ]
    assert router.data.get("plc.b").quality == "bad"  # type: ignore[union-attr]


async def test_fan_out_and_a_failing_target(router: Router, mem: MemoryTarget) -> None:
    """Test that one failing target never stops the others, and errors are counted."""
    bad = MemoryTarget()
    bad.fail = ConnectionError("webhook down")
    router.add_target("webhook.alerts", bad)
    router.load_routes(
        routes(
            route(
                "alarm",
                "plc.alarm",
                ["webhook.alerts", "mem.alarms/critical", "log.system"],
                condition="value == true",
            )
        )
    )
    for v in ("true", "false", True):
        router.route_data("plc", "alarm", v)
    await router.drain()
    assert [(t, dp.value) for t, dp in mem.items] == [
        ("alarms/critical", "true"),
        ("alarms/critical", True),
    ]
    assert router.route_stats("alarm")["errors"] == 2
    assert router.target_stats("webhook.alerts")["errors"] == 2
    assert router.target_stats("mem")["sent"] == 2
    assert router.target_stats("log.system")["kind"] == "log"
    assert isinstance(router.get_target("log.system"), LogTarget)


async def test_a_slow_target_does_not_block_another(router: Router, mem: MemoryTarget) -> None:
    """Test that a target stuck in send delays only its own deliveries."""
    gate = asyncio.Event()

    class Slow(Target):
        def __init__(self) -> None:
            self.got: list[Any] = []

        async def send(self, tag: str, dp: DataPoint) -> None:
            await gate.wait()
            self.got.append(dp.value)

    slow = Slow()
    router.add_target("slow", slow)
    router.load_routes(routes(route("r", "plc.x", ["slow.x", "mem.x"])))
    for v in range(3):
        router.route_data("plc", "x", v)
    await mem.wait_for(3, timeout=2)
    assert slow.got == []
    gate.set()
    await router.drain(timeout=2)
    assert slow.got == [0, 1, 2]


async def test_log_target_writes_records(router: Router, caplog: pytest.LogCaptureFixture) -> None:
    """Test that log.<name> writes one record per datapoint to edgelink.router.log.<name>."""
    router.load_routes(routes(route("r", "plc.x", "log.audit")))
    with caplog.at_level(logging.INFO, logger="edgelink.router.log.audit"):
        router.route_data("plc", "x", 7)
        await router.drain()
    rec = [r for r in caplog.records if r.name == "edgelink.router.log.audit"]
    assert len(rec) == 1 and "plc.x = 7" in rec[0].getMessage()
    assert rec[0].route == "r"  # type: ignore[attr-defined]


async def test_mqtt_style_wildcards_map_topic_trees(router: Router, mem: MemoryTarget) -> None:
    """Test broker_in.bench/in/+ -> broker_out.bench/out/{1}, the Node-RED way."""
    router.add_target("broker_out", mem)
    router.load_routes(routes(route("tree", "broker_in.bench/in/+", "broker_out.bench/out/{1}")))
    router.route_data("broker_in", "bench/in/42", 1)
    router.route_data("broker_in", "bench/in/7", 2)
    router.route_data("broker_in", "bench/in/7/deep", 3)
    await router.drain()
    assert [(t, dp.value) for t, dp in mem.items] == [("bench/out/42", 1), ("bench/out/7", 2)]


async def test_exact_and_wildcard_routes_fire_in_file_order(
    router: Router, mem: MemoryTarget
) -> None:
    """Test that all matching routes fire, in the order of the file, with {tag}."""
    router.load_routes(
        routes(
            route("w1", "plc.**", "mem.all/{tag}"),
            route("e", "plc.MAIN.t", "mem.exact"),
            route("w2", "plc.*.t", "mem.one/{1}"),
            route("off", "plc.MAIN.t", "mem.never", enabled=False),
        )
    )
    router.route_data("plc", "MAIN.t", 1)
    await router.drain()
    assert [t for t, _ in mem.items] == ["all/MAIN.t", "exact", "one/MAIN"]
    assert router.match("plc.MAIN.t") == ["w1", "e", "w2"]
    assert router.route_stats("off")["matched"] == 0


async def test_virtual_endpoints_chain_routes(router: Router, mem: MemoryTarget) -> None:
    """Test that a 'to' naming no connection or target is routed on (calc.total_power)."""
    router.load_routes(
        routes(
            route("p1", "plc.p1", "calc.total_power", transform="scale(1000)"),
            route("total", "calc.total_power", "mem.kw", transform="scale(0.001) | round(1)"),
        )
    )
    router.route_data("plc", "p1", 2.5)
    await router.drain()
    assert mem.values == [2.5]
    assert mem.items[0][1].path == ("p1", "total")
    virtual = router.data.get("calc.total_power")
    assert virtual is not None and virtual.value == 2500.0 and virtual.source == "calc"
    assert router.data.children("calc") == ["calc.total_power"]


async def test_bidirectional_virtual_routes_settle(router: Router, mem: MemoryTarget) -> None:
    """Test that A->B and B->A fire once each for one datapoint, then stop."""
    router.load_routes(
        routes(
            route("ab", "calc.a", ["calc.b", "mem.b"]),
            route("ba", "calc.b", ["calc.a", "mem.a"]),
        )
    )
    router.route_data("calc", "a", 1)
    await router.drain()
    assert [t for t, _ in mem.items] == ["b", "a"]
    assert router.route_stats("ab")["passed"] == 1 and router.route_stats("ba")["passed"] == 1
    # ba's value is not sent back to calc.a, where this datapoint came from
    assert router.route_stats("ba")["loop_blocked"] == 1
    assert router.stats()["loop_blocked"] == 1


async def test_hop_limit_bounds_a_chain(mem: MemoryTarget) -> None:
    """Test that a datapoint passes at most max_hops routes."""
    router = Router(max_hops=4)
    router.add_target("mem", mem)
    chain = [route(f"v{i}", f"calc.v{i}", [f"calc.v{i + 1}", f"mem.v{i + 1}"]) for i in range(8)]
    router.load_routes(routes(*chain))
    router.route_data("calc", "v0", 1)
    await router.drain()
    assert [t for t, _ in mem.items] == ["v1", "v2", "v3", "v4"]
    assert router.route_stats("v4")["loop_blocked"] == 1
    assert mem.items[-1][1].hops == 4


async def test_device_echoes_settle_bidirectional_routes() -> None:
    """Test that A->B, B->A between devices that report what they were sent settle at once."""
    clock = ManualClock()
    writes: list[tuple[str, str, Any]] = []
    router: Router

    async def writer(connection_id: str, tag: str, value: Any) -> None:
        writes.append((connection_id, tag, value))
        # The device reports its new value, as text, like a polled text protocol.
        router.route_data(connection_id, tag, str(value))

    router = Router(clock=clock, writer=writer)
    router.register_connection("A")
    router.register_connection("B")
    router.load_routes(routes(route("ab", "A.x", "B.y"), route("ba", "B.y", "A.x")))
    router.route_data("A", "x", 5)
    await router.drain()
    # B's report of 5 is the echo of ab's write: ba does not send it back to A.
    assert writes == [("B", "y", 5)]
    assert router.route_stats("ba")["loop_blocked"] == 1
    # A change made at B itself is new data: it goes to A, and A's echo stops there.
    router.route_data("B", "y", 8)
    await router.drain()
    assert writes == [("B", "y", 5), ("A", "x", 8)]
    assert router.route_stats("ab")["loop_blocked"] == 1
    # After the echo window a report is new data again.
    await clock.advance(router.echo_window + 1)
    router.route_data("B", "y", "5")
    await router.drain()
    assert writes[-1] == ("A", "x", "5")


async def test_racing_bidirectional_writes_settle() -> None:
    """Test that both sides changing at once (each write racing the other's report) settles."""
    clock = ManualClock()
    devices = {"A.x": 5, "B.y": 0}
    writes: list[tuple[str, Any]] = []

    async def writer(connection_id: str, tag: str, value: Any) -> None:
        writes.append((f"{connection_id}.{tag}", value))
        devices[f"{connection_id}.{tag}"] = value

    router = Router(clock=clock, writer=writer)
    router.register_connection("A")
    router.register_connection("B")
    router.load_routes(
        routes(
            route("ab", "A.x", "B.y", transform="deadband(0)"),
            route("ba", "B.y", "A.x", transform="deadband(0)"),
        )
    )
    for _ in range(50):  # both devices polled, each poll seeing the other's stale value
        router.route_data("A", "x", devices["A.x"])
        router.route_data("B", "y", devices["B.y"])
        await router.drain()
        await clock.advance(0.1)
    assert len(writes) <= 4, writes


async def test_atomic_swap_a_datapoint_sees_one_table(router: Router, mem: MemoryTarget) -> None:
    """Test that a datapoint in flight keeps the table it started with, virtual hops too."""
    old = routes(route("in", "src.x", "calc.y"), route("out", "calc.y", "mem.old"))
    new = routes(route("out", "calc.y", "mem.new"))
    router.load_routes(old)

    def swap(dp: DataPoint) -> None:
        router.load_routes(new)  # mid-datapoint: a subscriber runs inside route_data

    off = router.data.subscribe("src.x", swap)
    router.route_data("src", "x", 1)
    off()
    router.route_data("src", "x", 2)  # the new table has no route from src.x
    router.route_data("calc", "y", 3)
    await router.drain()
    assert [(t, dp.value) for t, dp in mem.items] == [("old", 1), ("new", 3)]


async def test_reload_keeps_counters_and_state_of_unchanged_routes(
    router: Router, mem: MemoryTarget
) -> None:
    """Test that unchanged routes keep stats and deadband state; changed ones start over."""
    a = route("a", "plc.x", "mem.a", transform="deadband(1)")
    b = route("b", "plc.x", "mem.b")
    router.load_routes(routes(a, b))
    router.route_data("plc", "x", 10)
    diff = router.load_routes(routes(b, a | {"to": "mem.a"}, route("c", "plc.x", "mem.c")))
    assert (diff.unchanged, diff.added) == (["a", "b"], ["c"])
    router.route_data("plc", "x", 10.5)  # within a's band, remembered across the reload
    await router.drain()
    assert router.route_stats("a")["suppressed"] == 1 and router.route_stats("a")["passed"] == 1
    assert router.route_stats("b")["passed"] == 2
    diff = router.load_routes(routes(route("a", "plc.x", "mem.a2"), b))
    assert (diff.changed, diff.removed) == (["a"], ["c"])
    assert router.route_stats("a")["matched"] == 0


async def test_aggregation_through_the_router(mem: MemoryTarget) -> None:
    """Test the MQTT value -> aggregator -> dashboard scenario on the manual clock."""
    clock = ManualClock()
    router = Router(clock=clock)
    router.add_target("dashboard", mem)
    router.load_routes(
        routes(route("agg", "mqtt.b.power", "dashboard.power_avg", transform="avg(60s) | round(1)"))
    )
    for v in (100, 200, 300):
        router.route_data("mqtt.b", "power", v)
        await clock.advance(30)
    await router.drain()
    assert mem.values == [100, 150, 250]


async def test_route_failures_are_logged_once(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that a failing route logs a warning on the first failure, not per datapoint."""
    router.load_routes(routes(route("r", "plc.x", "mem.x", transform="scale(2)")))
    with caplog.at_level(logging.INFO, logger="edgelink.router.engine"):
        for _ in range(50):
            router.route_data("plc", "x", "not a number")
        router.route_data("plc", "x", 1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "route r failed" in warnings[0].getMessage()
    assert any("works again" in r.getMessage() for r in caplog.records)
    assert router.route_stats("r")["errors"] == 50


async def test_connection_target_without_writer_counts_errors(router: Router) -> None:
    """Test that a write with no writer configured fails that route, nothing else."""
    router.register_connection("plc_2")
    router.load_routes(routes(route("w", "plc.x", "plc_2.MAIN.y")))
    router.route_data("plc", "x", 1)
    await router.drain()
    assert router.route_stats("w")["errors"] == 1
    assert "no connection writer" in router.route_stats("w")["last_error"]
    assert router.endpoints == {"mem": "target", "plc_2": "connection"}


async def test_drain_timeout_and_aclose(router: Router) -> None:
    """Test that drain() times out on a hung target and aclose() drops what is queued."""

    class Hung(Target):
        async def send(self, tag: str, dp: DataPoint) -> None:
            await asyncio.Event().wait()

    router.add_target("hung", Hung())
    router.load_routes(routes(route("r", "plc.x", "hung.x")))
    for v in range(3):
        router.route_data("plc", "x", v)
    with pytest.raises(TimeoutError):
        await router.drain(timeout=0.05)
    await router.aclose()
    assert router.target_stats("hung")["dropped"] == 3
    await router.drain(timeout=1)


@pytest.mark.parametrize("batched", [False, True])
async def test_a_send_past_the_delivery_timeout_fails_alone(batched: bool) -> None:
    """Test that a send running past delivery_timeout is a delivery error, and the next goes."""

    class Stuck(Target):
        def __init__(self) -> None:
            self.got: list[Any] = []

        async def send(self, tag: str, dp: DataPoint) -> None:
            if dp.value == 0:
                await asyncio.Event().wait()
            self.got.append(dp.value)

    class StuckBatch(Stuck):
        async def send_batch(self, items: Any) -> None:
            for tag, dp in items:
                await self.send(tag, dp)

    target = StuckBatch() if batched else Stuck()
    router = Router(clock=ManualClock(), delivery_timeout=0.1)
    router.add_target("t", target)
    router.load_routes(routes(route("r", "plc.x", "t.x")))
    router.route_data("plc", "x", 0)
    await asyncio.sleep(0)  # the first delivery starts alone
    router.route_data("plc", "x", 1)
    await router.drain(timeout=2)
    assert target.got == [1]
    stats = router.target_stats("t")
    assert (stats["sent"], stats["errors"]) == (1, 1)
    assert stats["last_error"] == "TimeoutError"
    assert router.route_stats("r")["errors"] == 1


async def test_queue_limit_drops_oldest(mem: MemoryTarget) -> None:
    """Test that an outbox over its limit drops its oldest datapoints and counts them."""
    gate = asyncio.Event()

    class Gate(Target):
        def __init__(self) -> None:
            self.got: list[Any] = []

        async def send_batch(self, items: Any) -> None:
            await gate.wait()
            self.got.extend(dp.value for _, dp in items)

    target = Gate()
    router = Router(queue_limit=100)
    router.add_target("g", target)
    router.load_routes(routes(route("r", "plc.x", "g.x")))
    router.route_data("plc", "x", -1)
    await asyncio.sleep(0)  # the delivery task takes the first batch and waits
    for v in range(250):
        router.route_data("plc", "x", v)
    gate.set()
    await router.drain(timeout=2)
    stats = router.target_stats("g")
    assert stats["dropped"] > 0
    assert len(target.got) + stats["dropped"] == 251
    assert target.got[-1] == 249


def test_route_data_without_a_loop_is_delivered_by_drain(mem: MemoryTarget) -> None:
    """Test that route_data outside an event loop queues, and drain() delivers later."""
    router = Router()
    router.add_target("mem", mem)
    router.load_routes(routes(route("r", "plc.x", "mem.x")))
    router.route_data("plc", "x", 1)
    asyncio.run(router.drain(timeout=2))
    assert mem.values == [1]


def test_targets_and_endpoints_validation(router: Router) -> None:
    """Test add_target/remove_target checks and longest-prefix resolve()."""
    with pytest.raises(TypeError):
        router.add_target("x", object())  # type: ignore[arg-type]
    for bad in ("", "a..b", "a.*", "a b"):
        with pytest.raises(ValueError, match="bad endpoint id"):
            router.add_target(bad, MemoryTarget())
    router.register_connection("bt")
    router.register_connection("bt.bms_001")
    with pytest.raises(ValueError, match="is a connection"):
        router.add_target("bt", MemoryTarget())
    assert router.resolve("bt.bms_001.voltage") == ("bt.bms_001", "voltage")
    assert router.resolve("bt.x.voltage") == ("bt", "x.voltage")
    assert router.resolve("calc.x") == (None, "calc.x")
    router.remove_target("mem")
    with pytest.raises(KeyError):
        router.remove_target("mem")
    with pytest.raises(KeyError):
        router.remove_target("bt")
    router.unregister_connection("bt")
    assert router.resolve("bt.x.voltage") == (None, "bt.x.voltage")
    assert "Router routes=0" in repr(router)


async def test_new_endpoint_is_resolved_for_cached_addresses(router: Router) -> None:
    """Test that adding a target after data flowed re-resolves cached plans."""
    router.load_routes(routes(route("r", "plc.x", "later.x")))
    router.route_data("plc", "x", 1)  # 'later' unknown: a virtual address for now
    late = MemoryTarget()
    router.add_target("later", late)
    router.route_data("plc", "x", 2)
    await router.drain()
    assert late.values == [2]
    assert router.data.value("later.x") == 1


# ------------------------------------------------------- data space


async def test_data_space_tree_history_snapshot() -> None:
    """Test last values, the browse tree, the bounded history and snapshots."""
    router = Router(history=3)
    for i in range(5):
        router.route_data("plc_1", "MAIN.temp", i)
    router.route_data("plc_1", "MAIN.fb.v", 1)
    router.route_data("bt.bms_001", "voltage", 3.3)
    space = router.data
    assert space.get("plc_1.MAIN.temp").value == 4  # type: ignore[union-attr]
    assert [dp.value for dp in space.history("plc_1.MAIN.temp")] == [2, 3, 4]
    assert space.children() == ["bt", "plc_1"]
    assert space.children("plc_1") == ["plc_1.MAIN"]
    assert space.children("plc_1.MAIN") == ["plc_1.MAIN.fb", "plc_1.MAIN.temp"]
    assert space.children("bt.bms_001") == ["bt.bms_001.voltage"]
    assert space.get("nope") is None and space.value("nope", 0) == 0
    assert set(space.snapshot("plc_1")) == {"plc_1.MAIN.temp", "plc_1.MAIN.fb.v"}
    assert space.addresses("plc_1.**") == ["plc_1.MAIN.fb.v", "plc_1.MAIN.temp"]
    assert len(space) == 3 and "bt.bms_001.voltage" in space
    assert space.remove("plc_1") == 2 and space.children() == ["bt"]


async def test_data_space_subscriptions() -> None:
    """Test pattern subscriptions, changes-only, errors isolated, unsubscribe."""
    router = Router()
    seen: list[tuple[str, Any]] = []
    every: list[Any] = []

    def boom(dp: DataPoint) -> None:
        raise RuntimeError("subscriber bug")

    off = router.data.subscribe("plc.*", lambda dp: seen.append((dp.address, dp.value)))
    router.data.subscribe("plc.a", lambda dp: every.append(dp.value), changes_only=False)
    router.data.subscribe("plc.**", boom)
    for v in (1, 1, 2):
        router.route_data("plc", "a", v)
    router.route_data("plc", "b.c", 9)  # not one segment: only plc.** sees it
    off()
    router.route_data("plc", "a", 3)
    assert seen == [("plc.a", 1), ("plc.a", 2)]
    assert every == [1, 1, 2, 3]


def test_data_space_evicts_the_least_recent_address_beyond_its_limit() -> None:
    """Test that a source inventing addresses cannot grow the data space without bound."""
    router = Router(max_addresses=10)
    router.route_data("plc", "hot", 0)
    for i in range(20):
        router.route_data("mqtt", f"t{i}", i)
        router.route_data("plc", "hot", i)  # updated all along: never the least recent
    assert len(router.data) == 10 and router.data.evicted == 11
    assert router.data.value("plc.hot") == 19
    assert router.data.addresses() == [
        "mqtt.t11",
        *[f"mqtt.t{i}" for i in range(12, 20)],
        "plc.hot",
    ]


# ---------------------------------------------------------- spam guard


async def test_spam_guard_sliding_window() -> None:
    """Test the per-source limit: over max_pps in one second trips once and drops."""
    clock = ManualClock()
    router = Router(clock=clock)
    trips: list[tuple[str, dict[str, Any]]] = []
    router.set_spam_limit("dev", 5, lambda cid, info: trips.append((cid, info)))
    accepted = [router.route_data("dev", "x", i) for i in range(7)]
    assert accepted == [True] * 5 + [False, False]
    assert trips == [("dev", {"limit_pps": 5, "count": 6, "seconds": 0.0, "window": 1.0})]
    assert router.is_spam_blocked("dev") and router.spam_dropped == 2
    assert [dp.value for dp in router.data.history("dev.x")][-1] == 4
    await clock.advance(10)
    assert router.route_data("dev", "x", 99) is False  # tripped: waits for a person
    router.reset_spam("dev")
    assert not router.is_spam_blocked("dev")
    # a sliding window: a steady 4 per second passes whatever the phase...
    sent = []
    for _ in range(20):
        sent.append(router.route_data("dev", "x", 1))
        await clock.advance(0.25)
    assert all(sent)
    # ...and a burst of 6 within one second trips it, even straddling a second boundary
    await clock.advance(0.75)
    burst = []
    for _ in range(6):
        burst.append(router.route_data("dev", "x", 1))
        await clock.advance(0.125)
    assert burst == [True] * 5 + [False]
    router.reset_spam("dev")
    # sources that are not connections are never limited
    assert all(router.route_data("calc", "x", i) for i in range(1000))
    router.set_spam_limit("dev", None)
    assert all(router.route_data("dev", "x", i) for i in range(100))


def test_spam_guard_window_costs_what_one_window_holds() -> None:
    """Test that a guard keeps the arrivals of one window only, as C doubles.

    It was a deque of float objects (32 bytes a datapoint): 16 KB per link at
    the default 500/s; then a ring of the last 500 times, 4 KB per link
    reached over a fleet's first minute at 10/s (an RSS slope of 8 MB at
    2,000 devices). A link at 10/s now holds about 10 slots.
    """
    now = [0.0]
    guard = SpamGuard("dev", 500, lambda: now[0], None)
    assert guard.admit()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2_000):  # 10/s: far below the budget
            now[0] += 0.1
            assert guard.admit()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 400  # was 4,000 bytes of slots and the array's spare room
    assert guard.stamps is not None and len(guard.stamps) <= 25
    # Still exact: 501 in under a second trips it, whatever came before.
    now[0] += 1.0
    assert all(guard.admit() for _ in range(500)) and not guard.admit()
    assert guard.tripped
    guard.reset()
    assert guard.admit() and not guard.tripped
    # The window slides: 500 at t, then 500 more just over a second later pass,
    # one more inside that second does not.
    edge = SpamGuard("edge", 500, lambda: now[0], None)
    now[0] += 10.0
    assert all(edge.admit() for _ in range(500))
    now[0] += 1.0
    assert all(edge.admit() for _ in range(500)) and not edge.admit()
    # A huge limit costs what arrives, not what it allows.
    big = SpamGuard("feed", 1e9, lambda: now[0], None)
    assert all(big.admit() for _ in range(10))
    assert big.stamps is not None and len(big.stamps) == 10


def test_spam_guard_below_one_per_second() -> None:
    """Test that a limit under 1/s allows one datapoint per 1/max_pps seconds."""
    router = Router(clock=ManualClock())
    router.set_spam_limit("slow", 0.5)
    assert router.route_data("slow", "x", 1) is True
    assert router.route_data("slow", "x", 2) is False
    with pytest.raises(ValueError, match="above 0"):
        router.set_spam_limit("x", 0)


async def test_null_values_are_not_written_to_devices() -> None:
    """Test that a failed read (null, quality bad) routed to a device is an error, not a write."""
    writes: list[Any] = []

    async def writer(connection_id: str, tag: str, value: Any) -> None:
        writes.append(value)

    router = Router(writer=writer)
    router.register_connection("plc")
    router.load_routes(routes(route("r", "sensor.t", "plc.MAIN.t")))
    router.route_data("sensor", "t", None, quality="bad")
    router.route_data("sensor", "t", 21.5)
    await router.drain()
    assert writes == [21.5]
    assert "null" in router.route_stats("r")["last_error"]


def test_mark_stale_touches_only_the_source_once_and_keeps_bad_values() -> None:
    """Test that mark_stale marks one source's good values once, by its index, and spares bad."""
    router = Router(clock=ManualClock())
    router.route_data("plc", "a", 1, ts=5.0)
    router.route_data("plc", "b", None, quality="bad")
    router.route_data("plc2", "a", 2)
    router.route_data("calc", "x", 3)
    seen: list[DataPoint] = []
    router.data.subscribe("**", seen.append)
    assert router.mark_stale("plc", "half_open", since=9.0) == 1
    dp = router.data.get("plc.a")
    assert dp is not None
    assert (dp.value, dp.ts, dp.quality) == (1, 5.0, "stale")
    assert dp.metadata == {"quality_reason": "half_open", "quality_since": 9.0}
    assert dp.as_dict()["reason"] == "half_open" and dp.as_dict()["since"] == 9.0
    assert router.data.get("plc.b").quality == "bad"  # type: ignore[union-attr]
    assert router.data.get("plc2.a").quality == "good"  # type: ignore[union-attr]
    assert [d.address for d in seen] == ["plc.a"]
    assert router.mark_stale("plc", "half_open") == 0  # once per outage
    assert len(router.data.history("plc.a")) == 1  # replaced, not appended
    router.route_data("plc", "a", 4)
    assert router.data.get("plc.a").quality == "good"  # type: ignore[union-attr]
    assert router.data.remove("plc") == 2
    assert router.mark_stale("plc", "gone") == 0
    assert router.data.stale_marked == router.stats()["stale_marked"] == 1
