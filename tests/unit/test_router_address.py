"""Addresses: patterns, the wildcard index, target templates, longest-prefix resolution."""

from __future__ import annotations

import time

import pytest

from edgelink import RouteError
from edgelink.router import (
    PatternIndex,
    parse_pattern,
    parse_template,
    resolve_endpoint,
)
from edgelink.router.address import split_levels


def test_split_levels_marks_segments_and_levels() -> None:
    """Test that dots start segments, slashes levels, and positions are kept."""
    assert split_levels("a.b/c.d") == ([".a", ".b", "/c", ".d"], [-1, 1, 3, 5])
    assert split_levels("mqtt.broker.alarms/critical")[0] == [
        ".mqtt", ".broker", ".alarms", "/critical",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("pattern", "address", "captures"),
    [
        # exact
        ("plc_1.MAIN.temp", "plc_1.MAIN.temp", ()),
        ("plc_1.MAIN.temp", "plc_1.MAIN.temp2", None),
        ("plc_1.MAIN.temp", "plc_1.MAIN", None),
        # * is one whole segment
        ("plc_1.*.temp", "plc_1.MAIN.temp", ("MAIN",)),
        ("plc_1.*.temp", "plc_1.MAIN.fb.temp", None),
        ("plc_1.*", "plc_1.MAIN", ("MAIN",)),
        ("plc_1.*", "plc_1.MAIN.temp", None),
        ("plc_1.*", "plc_1", None),
        ("*.temp", "anything.temp", ("anything",)),
        ("plc_1.*.temp", "plc_1.a/b.temp", ("a/b",)),
        ("*.*", "a.b", ("a", "b")),
        # ** is any number of segments, none too
        ("plc_1.**", "plc_1.MAIN.fb.temp", ("MAIN.fb.temp",)),
        ("plc_1.**", "plc_1.x", ("x",)),
        ("plc_1.**", "plc_1", ("",)),
        ("plc_1.**", "plc_10.x", None),
        ("plc_1.**.temp", "plc_1.temp", ("",)),
        ("plc_1.**.temp", "plc_1.a.b.temp", ("a.b",)),
        ("plc_1.**.temp", "plc_1.a.b.temp2", None),
        ("**", "x.y/z", ("x.y/z",)),
        ("**.alarm", "a.b.alarm", ("a.b",)),
        # MQTT + and # inside a topic-like tag
        ("broker_in.bench/in/+", "broker_in.bench/in/42", ("42",)),
        ("broker_in.bench/in/+", "broker_in.bench/in/42/x", None),
        ("broker_in.bench/in/+", "broker_in.bench/in", None),
        ("broker_in.bench/+/temp", "broker_in.bench/k1/temp", ("k1",)),
        ("broker_in.+/in/+", "broker_in.bench/in/1", ("bench", "1")),
        ("broker_in.alarms/#", "broker_in.alarms/critical/1", ("critical/1",)),
        ("broker_in.alarms/#", "broker_in.alarms", ("",)),
        ("broker_in.alarms/#", "broker_in.alarmsX", None),
        ("broker_in.alarms/#", "broker_in.alarms.x", None),
        ("broker_in.#", "broker_in.a/b.c", ("a/b.c",)),
        ("#", "a.b", ("a.b",)),
        ("+.x", "a.x", ("a",)),
        ("+.x", "a/b.x", None),
        # a literal keeps + and # inside a longer level as they are
        ("plc.HR#100", "plc.HR#100", ()),
        ("plc.C++", "plc.C++", ()),
        # dots in endpoint ids are just segments
        ("bt.bms_001.*", "bt.bms_001.voltage", ("voltage",)),
    ],
)
def test_matching_table(pattern: str, address: str, captures: tuple[str, ...] | None) -> None:
    """Test exact, *, **, + and # matching and what each captures."""
    index: PatternIndex[str] = PatternIndex()
    index.add(parse_pattern(pattern), "r")
    found = index.match(address)
    if captures is None:
        assert found == []
    else:
        assert found == [("r", captures)]


def test_index_returns_every_match_once() -> None:
    """Test that several patterns can match one address, each reported once."""
    index: PatternIndex[str] = PatternIndex()
    for i, text in enumerate(["a.*.c", "a.**", "a.b.*", "**", "a.**.**", "x.*"]):
        index.add(parse_pattern(text), f"r{i}")
    got = sorted(v for v, _ in index.match("a.b.c"))
    assert got == ["r0", "r1", "r2", "r3", "r4"]
    assert len(index) == 6


def test_many_double_stars_do_not_explode() -> None:
    """Test that a pattern full of ** is matched in polynomial, not exponential, time."""
    index: PatternIndex[int] = PatternIndex()
    index.add(parse_pattern("a." + ".".join(["**"] * 12) + ".z"), 1)
    address = "a." + ".".join(["x"] * 80) + ".y"
    started = time.perf_counter()
    assert index.match(address) == []
    assert time.perf_counter() - started < 2.0
    assert index.match("a." + ".".join(["x"] * 80) + ".z")[0][0] == 1


def test_lookup_cost_does_not_grow_with_routes() -> None:
    """Test (roughly) that 10,000 wildcard routes do not slow one lookup 100-fold."""

    def build(n: int) -> PatternIndex[int]:
        index: PatternIndex[int] = PatternIndex()
        for i in range(n):
            index.add(parse_pattern(f"dev{i}.*.temp"), i)
        return index

    def cost(index: PatternIndex[int]) -> float:
        started = time.perf_counter()
        for _ in range(2000):
            index.match("dev3.room.temp")
        return time.perf_counter() - started

    small, big = build(10), build(10_000)
    cost(small), cost(big)
    assert cost(big) < 5 * cost(small) + 0.05


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("", "non-empty"),
        ("a..b", "'..'"),
        (".a", "start or end"),
        ("a.", "start or end"),
        ("a b", "whitespace"),
        ("a.b*", "whole segments"),
        ("a.*x.c", "whole segments"),
        ("a.b/*", "whole segment"),
        ("a.#.b", "'#' must come last"),
        ("a.b/#/c", "'#' must come last"),
        ("x" * 1025, "longer than"),
    ],
)
def test_bad_patterns(pattern: str, fragment: str) -> None:
    """Test that malformed patterns are refused with the reason."""
    with pytest.raises(RouteError) as info:
        parse_pattern(pattern)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("template", "captures", "tag", "expected"),
    [
        ("broker_out.bench/out/{1}", ("42",), "bench/in/42", "broker_out.bench/out/42"),
        ("b.{2}.{1}", ("x", "y"), "t", "b.y.x"),
        ("mirror.{tag}", (), "MAIN.temp", "mirror.MAIN.temp"),
        ("copy.{source}.{tag}", (), "t", "copy.plc_1.t"),
        ("plain.address", (), "t", "plain.address"),
    ],
)
def test_templates_render(
    template: str, captures: tuple[str, ...], tag: str, expected: str
) -> None:
    """Test {1}, {2}, {tag} and {source} in a route's 'to'."""
    assert parse_template(template).render(captures, tag, "plc_1") == expected


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("a.{x}", "unknown placeholder"),
        ("a.{0}", "unknown placeholder"),
        ("a.{1", "unbalanced"),
        ("a.*", "wildcards"),
        ("a.b/+", "wildcards"),
        ("a.#", "wildcards"),
        ("a..b", "'..'"),
    ],
)
def test_bad_templates(template: str, fragment: str) -> None:
    """Test that targets with wildcards or bad placeholders are refused."""
    with pytest.raises(RouteError) as info:
        parse_template(template)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("address", "endpoint", "tag"),
    [
        ("bt.bms_001.voltage", "bt.bms_001", "voltage"),
        ("bt.other.voltage", "bt", "other.voltage"),
        ("plc_1.MAIN.fbBattery.fVoltage", "plc_1", "MAIN.fbBattery.fVoltage"),
        ("plc_10.MAIN.x", "plc_10", "MAIN.x"),
        ("plc_1", "plc_1", ""),
        ("mqtt.broker_local.alarms/critical", "mqtt.broker_local", "alarms/critical"),
        ("log.system", "log.system", ""),
        ("calc.total_power", None, "calc.total_power"),
        ("plc", None, "plc"),
    ],
)
def test_longest_prefix_resolution(address: str, endpoint: str | None, tag: str) -> None:
    """Test that an address resolves to the longest endpoint id prefixing it, on dots."""
    endpoints = {"bt", "bt.bms_001", "plc_1", "plc_10", "mqtt.broker_local", "log.system"}
    assert resolve_endpoint(address, endpoints) == (endpoint, tag)
