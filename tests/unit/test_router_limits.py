"""Bounded expressions (caps, cost budget, compile-time term cap), quarantine, strict wire JSON."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from edgelink import DataPoint, MemoryTarget, RouteError, Router, Target
from edgelink.router import ExprLimits, LimitError, compile_condition, compile_transform
from edgelink.router.wire import WireEncoder
from edgelink.testing import ManualClock

HUGE = int("7" * 4000)  # under Python's 4,300-digit text limit, far over the 1,000-digit cap


def dp(value: Any, address: str = "plc.x") -> DataPoint:
    return DataPoint(address, value, 0.0, "good", "plc", None)


def fails(fn: Any, value: Any, cap: str) -> LimitError:
    with pytest.raises(LimitError) as info:
        fn(value, dp(value))
    assert info.value.cap == cap
    assert cap in str(info.value)
    return info.value


# ------------------------------------------------------------------- caps


def test_value_times_value_on_a_4000_digit_integer_fails_fast() -> None:
    """Test that value*value on 4,000 digits fails at once, naming the route and the cap."""
    fn = compile_transform("expr(value * value)", route_id="sq")
    start = time.perf_counter()
    err = fails(fn, HUGE, "max_int_digits")
    assert time.perf_counter() - start < 0.05
    assert err.route_id == "sq"
    assert str(err).startswith("route 'sq': ")
    assert err.entry  # the value came in that long
    # Growth from within the cap is refused too, before multiplying.
    big = int("9" * 600)
    err = fails(fn, big, "max_int_digits")
    assert not err.entry
    assert fn(10**400, dp(0)) == 10**800


def test_repeated_integer_multiplication_is_capped() -> None:
    """Test value*value*value*value: the digits double each step, the cap stops it early."""
    fn = compile_transform("expr(value * value * value * value)", route_id="pow4")
    assert fn(10**200, dp(0)) == 10**800
    err = fails(fn, 10**300, "max_int_digits")
    assert not err.entry
    # A constant factor adds its digits at most (linear): the fast path stays unchecked.
    assert compile_transform("scale(1000)").__name__ != "metered"


def test_string_concatenation_is_capped() -> None:
    """Test value+value: over max_string_length fails; entry marks an input already over it."""
    limits = ExprLimits(max_string_length=1000)
    fn = compile_transform("expr(value + value)", route_id="cat", limits=limits)
    assert fn("x" * 500, dp(0)) == "x" * 1000
    err = fails(fn, "x" * 501, "max_string_length")
    assert not err.entry
    err = fails(fn, "x" * 1001, "max_string_length")
    assert err.entry


def test_str_walks_and_min_max_are_capped() -> None:
    """Test str() of a huge int/list, 'in' over a long or deep list, min/max of a long list."""
    limits = ExprLimits(max_items=100, max_nesting=4)
    to_text = compile_transform("expr(str(value))", route_id="s", limits=limits)
    fails(to_text, 10**5000, "max_int_digits")  # not Python's ValueError
    fails(to_text, list(range(101)), "max_items")
    assert to_text([1, 2], dp(0)) == "[1, 2]"
    member = compile_condition("3 in value", route_id="m", limits=limits)
    fails(member, list(range(200)), "max_items")
    assert member([1, 2, 3], dp(0))
    deep: Any = [1]
    for _ in range(5):
        deep = [deep]
    fails(member, deep, "max_nesting")
    fails(compile_transform("expr(max(value))", limits=limits), list(range(101)), "max_items")


def test_oversized_integers_never_escape_as_python_errors() -> None:
    """Test map lookups, indexing and windows with integers too long to print."""
    huge = 10**5000
    assert compile_transform('map({1: "on"}, "other")')(huge, dp(0)) == "other"
    key = compile_transform("expr(metadata[value])")
    with pytest.raises(ValueError, match="no key"):
        key(huge, ("plc.x", huge, 0.0, "good", "plc", {"1": 2}, (), 0))
    window = compile_transform("avg(60s)", clock=ManualClock())
    with pytest.raises(ValueError, match="non-finite"):
        window(huge, dp(0))


def test_budget_counts_cost_units_per_evaluation() -> None:
    """Test that an evaluation over its budget fails, and the budget is per evaluation."""
    limits = ExprLimits(budget=1000)
    fn = compile_transform("expr(str(value) + str(value))", route_id="b", limits=limits)
    assert fn("x" * 200, dp(0)) == "x" * 400  # 200 + 200 + 400 units
    assert fn("x" * 200, dp(0)) == "x" * 400  # the meter starts over
    err = fails(fn, "x" * 300, "budget")  # 300 + 300 + 600
    assert err.route_id == "b"


def test_compile_time_term_cap() -> None:
    """Test that 332 copies of the input are refused at compile time, naming route and cap."""
    text = "expr(" + "+".join(["value"] * 332) + ")"
    with pytest.raises(RouteError) as info:
        compile_transform(text, route_id="amp")
    assert "332 variable terms" in str(info.value)
    assert "max_terms=64" in str(info.value)
    assert info.value.route_id == "amp"
    compile_transform("expr(" + "+".join(["value"] * 64) + ")")
    with pytest.raises(RouteError, match="max_terms=8"):
        compile_condition(" + ".join(["value"] * 9) + " > 0", limits=ExprLimits(max_terms=8))
    # Constants do not count: they cannot copy the input.
    compile_condition(" + ".join(["value"] + ["1"] * 300) + " > 0")


def test_cheap_expressions_stay_unmetered() -> None:
    """Test that the fast closures are not wrapped by the meter (no per-datapoint overhead)."""
    for text in ("value > 20", 'quality == "good"', 'tag in ["a", "b"]', "value * 2 > 5"):
        assert compile_condition(text).__name__ != "metered", text
    for text in ("scale(0.1)", "scale(0.1) | round(2)", "expr(value * 9 / 5 + 32)"):
        assert compile_transform(text).__name__ != "metered", text
    assert compile_transform("expr(value + value)").__name__ == "metered"


def test_limits_are_validated() -> None:
    """Test that a cap below 1, or integer digits over 4000, is refused."""
    with pytest.raises(ValueError, match="budget"):
        ExprLimits(budget=0)
    with pytest.raises(ValueError, match="max_int_digits"):
        ExprLimits(max_int_digits=5000)


# ------------------------------------------------------------- quarantine


def amp_router(**kw: Any) -> tuple[Router, MemoryTarget, list[tuple[str, dict[str, Any]]]]:
    router = Router(
        clock=ManualClock(),
        limits=ExprLimits(max_string_length=1000),
        quarantine_after=3,
        quarantine_window=10,
        **kw,
    )
    mem = MemoryTarget()
    router.add_target("mem", mem)
    events: list[tuple[str, dict[str, Any]]] = []
    router.on_quarantine = lambda kind, info: events.append((kind, info))
    router.load_routes(
        {
            "routes": [
                {"id": "amp", "from": "feed.*", "to": "mem.amp", "transform": "expr(value+value)"},
                {"id": "copy", "from": "feed.*", "to": "mem.copy"},
            ]
        }
    )
    return router, mem, events


async def test_route_over_its_caps_repeatedly_is_quarantined_and_enabled_by_admin() -> None:
    """Test N strikes in the window: disabled with reason poison, evented; enable_route."""
    router, mem, events = amp_router()
    clock = router.clock
    assert isinstance(clock, ManualClock)
    for _ in range(2):
        router.route_data("feed", "a", "x" * 600)
        await clock.advance(11)  # strikes further apart than the window do not add up
    assert router.route_stats("amp")["state"] == "enabled"
    for _ in range(3):
        router.route_data("feed", "a", "x" * 600)
    stats = router.route_stats("amp")
    assert stats["state"] == "quarantined"
    assert stats["reason"] == "poison"
    assert stats["since"] is not None
    assert stats["limit_errors"] == 5
    assert [kind for kind, _ in events] == ["route_quarantined"]
    assert events[0][1]["route_id"] == "amp"
    assert "max_string_length" in events[0][1]["error"]
    assert router.quarantined_routes() == ["amp"]
    # Not evaluated any more; the other route and the source flow on.
    assert router.route_data("feed", "a", "x" * 600)
    assert router.route_stats("amp")["limit_errors"] == 5
    assert router.match("feed.a") == ["copy"]
    # A reload of the same definition keeps the quarantine; the admin lifts it.
    router.load_routes({"routes": router.routes})
    assert router.route_stats("amp")["state"] == "quarantined"
    assert router.enable_route("amp")["state"] == "enabled"
    assert router.match("feed.a") == ["amp", "copy"]
    assert events[-1][0] == "quarantine_lifted"
    router.route_data("feed", "a", "ok")
    await router.drain()
    assert [dp.value for tag, dp in mem.items if tag == "amp"][-1] == "okok"
    with pytest.raises(KeyError):
        router.enable_route("nope")


async def test_source_over_the_caps_or_crashing_a_target_is_quarantined() -> None:
    """Test a source whose values come in over a cap, or crash a target, is quarantined."""
    router, _, events = amp_router()
    for _ in range(3):
        router.route_data("feed", "a", "x" * 2000)  # over the cap on the way in
    assert router.route_stats("amp")["state"] == "enabled"  # not the route's fault
    assert "feed" in router.quarantined_sources
    assert events[-1][0] == "source_quarantined"
    assert not router.route_data("feed", "a", "fine")
    assert router.quarantined_sources["feed"]["dropped"] == 1
    assert router.stats()["quarantine_dropped"] == 1
    # A new spam limit (a connection reloaded) does not lift the quarantine.
    router.set_spam_limit("feed", 1000)
    assert not router.route_data("feed", "a", "fine")
    assert router.stats()["spam_dropped"] == 0
    assert router.enable_source("feed") is not None
    assert not router.is_spam_blocked("feed")
    assert router.route_data("feed", "a", "fine")
    assert router.enable_source("feed") is None

    class Crashing(Target):
        async def send(self, tag: str, dp: DataPoint) -> None:
            raise TypeError("cannot handle this")

    router.add_target("bad", Crashing())
    router.load_routes({"routes": [{"id": "r", "from": "evil.*", "to": "bad.x"}]})
    for _ in range(3):
        router.route_data("evil", "a", 1)
        await router.drain()
    assert "evil" in router.quarantined_sources
    assert "TypeError" in router.quarantined_sources["evil"]["error"]


# ---------------------------------------------------------------- the wire


def test_wire_encoder_marks_unserializable_values_bad_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test huge ints, NaN and foreign objects: quality bad with the reason, logged once."""
    enc = WireEncoder("stream")
    caplog.set_level(logging.WARNING, logger="edgelink.router.wire")
    cases = [(10**5000, "over 4300 digits"), (float("nan"), "NaN"), (object(), "no JSON form")]
    for value, reason in cases:
        for _ in range(3):
            out = json.loads(enc.encode({"value": value, "quality": "good", "ts": 1.0}, "a.b"))
            assert out["value"] is None
            assert out["quality"] == "bad"
            assert reason in out["error"]
            assert out["ts"] == 1.0
    assert enc.bad == 9
    assert len(caplog.records) == 1  # once per address
    assert not any(r.exc_info for r in caplog.records)
    assert json.loads(enc.encode({"value": b"\x01", "quality": "good"}, "a.c"))["value"] == (
        "b'\\x01'"
    )
    assert json.loads(enc.encode({"value": 21.5, "quality": "good"}, "a.c"))["value"] == 21.5
