"""Computed list and object literals, the ``set``/``delete`` steps: results, bounds, no mutation."""

from __future__ import annotations

import copy
import json
import math
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgelink import DataPoint, MemoryTarget, RouteError, Router
from edgelink.router import EvalError, ExprLimits, LimitError, compile_transform
from edgelink.testing import ManualClock


def dp(value: Any = 0) -> DataPoint:
    return DataPoint("plc.MAIN.x", value, 1.0, "good", "plc", {"unit": "W"})


def xf(text: str, value: Any, limits: ExprLimits | None = None) -> Any:
    return compile_transform(text, route_id="r", limits=limits)(value, dp(value))


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PAYLOAD: dict[str, Any] = {"value": 12345, "unit": "W", "meta": {"site": "a", "tags": [1, 2]}}


# ------------------------------------------------------- computed literals


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        # The expression: one computed field, one copied.
        (
            'expr({"value": value["value"] * 0.001, "unit": value["unit"]})',
            PAYLOAD,
            {"value": 12.345, "unit": "W"},
        ),
        ('expr({"v": value, "k": 1})', 5, {"v": 5, "k": 1}),
        ('expr({"k": 1, "v": value + 1, "t": tag})', 1, {"k": 1, "v": 2, "t": "MAIN.x"}),
        ('expr({"m": metadata["unit"], "q": quality})', 0, {"m": "W", "q": "good"}),
        ('expr({"in": {"deep": value * 2}})', 4, {"in": {"deep": 8}}),
        ('expr({"list": [value, 1], "c": [1, 2]})', 3, {"list": [3, 1], "c": (1, 2)}),
        ('expr({"ok": value > 1 and value < 9})', 5, {"ok": True}),
        ('expr({1: value, "1.5": 2})', 7, {1: 7, "1.5": 2}),
        ("expr([value, value * 2])", 2, [2, 4]),
        ("expr([value])", {"a": 1}, [{"a": 1}]),
        ('expr({"raw": value})', [1, 2], {"raw": [1, 2]}),
        ('expr({"a": 1}["a"] + value)', 1, 2),
    ],
)
def test_computed_literals(text: str, value: Any, expected: Any) -> None:
    """Test that object and list literals take computed values (keys stay constant)."""
    got = xf(text, value)
    assert got == expected
    if isinstance(expected, dict):
        assert list(got) == list(expected)  # the order written


def test_computed_object_keeps_written_order_and_is_fresh() -> None:
    """Test that each evaluation builds a new object: no result shares the template."""
    fn = compile_transform('expr({"a": 1, "v": value, "z": 2})')
    first, second = fn(1, dp(1)), fn(2, dp(2))
    assert list(first) == ["a", "v", "z"]
    assert (first["v"], second["v"]) == (1, 2) and first is not second


# ------------------------------------------------------------------- set


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ('set("value", value["value"] * 0.001)', {"value": 12345, "unit": "W"},
         {"value": 12.345, "unit": "W"}),
        ('set("unit", "kW")', {"value": 1, "unit": "W"}, {"value": 1, "unit": "kW"}),
        ('set("new", tag)', {"a": 1}, {"a": 1, "new": "MAIN.x"}),
        ('set("a.b.c", 1)', {"x": 0}, {"x": 0, "a": {"b": {"c": 1}}}),
        ('set("a.b", value["a"]["b"] + 1)', {"a": {"b": 1, "c": 2}}, {"a": {"b": 2, "c": 2}}),
        ('set(["a.b"], 1)', {"a.b": 0}, {"a.b": 1}),
        ('set(["l", 1], 9)', {"l": [1, 2, 3]}, {"l": [1, 9, 3]}),
        ('set(["l", -1], 9)', {"l": [1, 2, 3]}, {"l": [1, 2, 9]}),
        ('set(["l", 0, "k"], 9)', {"l": [{"k": 1}]}, {"l": [{"k": 9}]}),
        ("set([0], value[0] * 2)", [4, 5], [8, 5]),
        ('set("copy", value)', {"a": 1}, {"a": 1, "copy": {"a": 1}}),
        ('set("s", {"v": value["a"], "u": "W"})', {"a": 1}, {"a": 1, "s": {"v": 1, "u": "W"}}),
        ('set("a", 1) | set("b", value["a"] + 1)', {}, {"a": 1, "b": 2}),
        ('set("u", metadata["unit"])', {"a": 1}, {"a": 1, "u": "W"}),
        ('delete("unit")', {"value": 1, "unit": "W"}, {"value": 1}),
        ('delete("a.b")', {"a": {"b": 1, "c": 2}}, {"a": {"c": 2}}),
        ('delete(["l", 0])', {"l": [1, 2]}, {"l": [2]}),
        ('delete("nope.x")', {"a": 1}, {"a": 1}),
        ('delete("a.b")', {"a": 5}, {"a": 5}),
        ('delete("a")', 5, 5),
    ],
)  # fmt: skip
def test_set_and_delete_table(text: str, value: Any, expected: Any) -> None:
    """Test set/delete: one field set or removed, missing objects created, lists indexed."""
    got = xf(text, value)
    if isinstance(expected, dict) and isinstance(expected.get("value"), float):
        assert math.isclose(got["value"], expected["value"])
        assert {k: v for k, v in got.items() if k != "value"} == {
            k: v for k, v in expected.items() if k != "value"
        }
    else:
        assert got == expected


def test_set_copies_a_read_only_mapping() -> None:
    """Test that a Mapping that is not a dict is copied into a dict, not refused."""
    assert xf('set("b", 2)', MappingProxyType({"a": 1})) == {"a": 1, "b": 2}
    assert xf('set("a.b", 2)', {"a": MappingProxyType({"c": 1})}) == {"a": {"c": 1, "b": 2}}


@pytest.mark.parametrize(
    ("text", "value", "fragment"),
    [
        ('set("a", 1)', 5, "set('a'): the value is a number, not an object"),
        ('set("a", 1)', None, "the value is null, not an object"),
        ('set("a", 1)', [1], "the value is a list, not an object"),
        ('set("a.b", 1)', {"a": 3}, "set('a.b'): a is a number, not an object"),
        ('set("a.b", 1)', {"a": None}, "a is null, not an object"),
        ('set("l.0", 1)', {"l": [1]}, "l is a list, not an object"),
        ('set(["l", 5], 1)', {"l": [1]}, "has no index 5 (length 1)"),
        ('set(["l", 0], 1)', {"l": {"0": 1}}, "is an object, not a list"),
        ('set(["l", 0], 1)', {}, "l is missing (the path has index 0)"),
        ('set("a", value["x"])', {"a": 1}, "no key 'x'"),
        ('set("a", value["a"] * 2)', {"a": "text"}, "not a number"),
    ],
)
def test_set_runtime_errors(text: str, value: Any, fragment: str) -> None:
    """Test that a payload that does not fit the path fails that datapoint, naming the place."""
    with pytest.raises(EvalError) as info:
        xf(text, value)
    assert fragment in str(info.value)
    assert not isinstance(info.value, LimitError)


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("expr({value: 1})", 7, "keys must be constants"),
        ('expr({"a": value, tag: 2})', 19, "keys must be constants"),
        ('expr({"a": value, "a": 2})', 19, "duplicate key 'a'"),
        ("expr({[1]: value})", 7, "keys must be strings"),
        ('expr({"a": value["x"] / 0})', 23, "division by zero"),
        ('expr({"a": value +})', 19, "unexpected"),
        ('set("a")', 1, "set() takes 2 argument(s), got 1"),
        ('set("a", 1, 2)', 1, "takes 2 argument(s)"),
        ('delete("a", 1)', 1, "delete() takes 1 argument(s)"),
        ('set("", 1)', 5, "path is empty"),
        ('set("a..b", 1)', 5, "empty part"),
        ("set([], 1)", 5, "path is empty"),
        ("set([true], 1)", 5, "not a boolean"),
        ('set(["a", 1.5], 1)', 5, "not a number"),
        ("set(1, 2)", 5, "path must be a string"),
        ("set(value, 2)", 5, "path must be a constant"),
        ('set("a" + tag, 2)', 5, "path must be a constant"),
        ('set("a", value +)', 17, "unexpected ')'"),
        ('set("a", nope)', 10, "unknown name 'nope'"),
        ('set("a", 1 / 0)', 12, "division by zero"),
        ('scale(2) | set("a", 1) | sett("b", 2)', 26, "unknown transform 'sett'"),
        ("set(" + repr(".".join(["k"] * 33)) + ", 1)", 5, "longer than max_nesting=32"),
    ],
)
def test_bad_literal_or_set_names_the_position(text: str, position: int, fragment: str) -> None:
    """Test that a bad literal, set or delete is refused at load, naming route and position."""
    with pytest.raises(RouteError) as info:
        compile_transform(text, route_id="r")
    err = info.value
    assert (err.route_id, err.expression, err.position) == ("r", text, position), str(err)
    assert fragment in str(err)


# --------------------------------------------------------- no mutation


def test_set_and_delete_never_change_the_input() -> None:
    """Test that the value the step gets stays as it was; only the path is copied."""
    payload: dict[str, Any] = {
        "a": {"b": {"c": 1}, "side": {"x": [1, 2]}},
        "l": [{"k": 1}, {"k": 2}],
        "n": 1,
    }
    before = copy.deepcopy(payload)
    out = xf('set("a.b.c", 2)', payload)
    assert payload == before
    assert out["a"]["b"]["c"] == 2
    assert out["a"]["side"] is payload["a"]["side"]  # off the path: shared, not copied
    assert out["l"] is payload["l"]
    out = xf('set(["l", 1, "k"], 3)', payload)
    assert payload == before and out["l"][1] == {"k": 3} and out["l"][0] is payload["l"][0]
    out = xf('delete("a.side")', payload)
    assert payload == before and out["a"] == {"b": {"c": 1}}
    out = xf('set("copy", value) | set("copy.n", 5)', payload)
    assert payload == before and out["copy"]["n"] == 5 and out["n"] == 1


# --------------------------------------------------------------- bounds


def test_list_literals_cannot_multiply_the_input() -> None:
    """Test that a chain of list literals cannot build a value exponentially large.

    Each ``[value, value, value, value]`` only holds references, so before
    the check 20 steps made a value a serializer would write as 4**20 items.
    """
    fn = compile_transform(" | ".join(["expr([value, value, value, value])"] * 20), route_id="amp")
    with pytest.raises(LimitError) as info:
        fn(1, dp(1))
    err = info.value
    assert (err.cap, err.entry, err.route_id) == ("max_items", False, "amp")
    # A few steps stay well within the caps.
    assert compile_transform("expr([value, value]) | expr([value, value])")(1, dp()) == [
        [1, 1],
        [1, 1],
    ]


def test_objects_and_set_cannot_multiply_the_input() -> None:
    """Test the same for object literals and set: each copy of the value counts."""
    limits = ExprLimits(max_items=100)
    chain = " | ".join(['expr({"a": value, "b": value})'] * 10)
    with pytest.raises(LimitError) as info:
        xf(chain, {"x": 1}, limits)
    assert (info.value.cap, info.value.entry) == ("max_items", False)
    chain = " | ".join(f'set("k{i}", value)' for i in range(10))
    with pytest.raises(LimitError) as info:
        xf(chain, {"x": 1}, limits)
    assert (info.value.cap, info.value.entry) == ("max_items", False)
    assert xf(" | ".join(f'set("k{i}", value)' for i in range(3)), {"x": 1}, limits)["k2"]


def test_nesting_built_by_a_chain_is_capped() -> None:
    """Test that wrapping the value in a list again and again stops at max_nesting."""
    limits = ExprLimits(max_nesting=5)
    chain = " | ".join(["expr([value])"] * 6)
    with pytest.raises(LimitError) as info:
        xf(chain, [1], limits)
    assert (info.value.cap, info.value.entry) == ("max_nesting", False)
    assert xf(" | ".join(["expr([value])"] * 3), [1], limits) == [[[[1]]]]


def test_a_value_that_came_in_over_the_cap_is_the_sources_doing() -> None:
    """Test that an input already over a cap is an entry error (the source is struck)."""
    limits = ExprLimits(max_items=10)
    big = {f"k{i}": i for i in range(20)}
    for text in ('expr({"raw": value})', "expr([value])", 'set("a", 1)', 'set("a.b", 1)'):
        with pytest.raises(LimitError) as info:
            xf(text, big, limits)
        assert (info.value.cap, info.value.entry) == ("max_items", True), text
    with pytest.raises(LimitError) as info:
        xf('set("x.y", 1)', {"x": big}, limits)
    assert "x has 20 items" in str(info.value) and info.value.entry


def test_literal_over_the_caps_is_refused_at_load() -> None:
    """Test that a literal with more items than max_items is refused before it runs."""
    limits = ExprLimits(max_items=3)
    for text in ("expr([1, 2, 3, 4])", "expr([value, 1, 2, 3])", 'set("a", [value, 1, 2, 3])'):
        with pytest.raises(RouteError, match="max_items=3"):
            compile_transform(text, route_id="r", limits=limits)
    assert compile_transform("expr([value, 1, 2])", limits=limits)(0, dp()) == [0, 1, 2]


def test_flat_set_and_literals_skip_the_meter() -> None:
    """Test that a set or literal of numbers and text needs no per-evaluation meter."""
    for text in (
        'set("value", value["value"] * 0.001)',
        'set("a.b", tag)',
        'expr({"v": value * 2, "t": tag})',
        "expr([value * 2, 1])",
    ):
        assert compile_transform(text).__name__ != "metered", text
    assert compile_transform('set("a", value["b"])').__name__ == "metered"


# ---------------------------------------------------- through the router


def routes(*items: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1.0", "routes": list(items)}


async def test_node_red_change_example_end_to_end() -> None:
    """Test the issue's flow: value["value"] > 10, set value to value * 0.001, unit kept."""
    mem, raw = MemoryTarget(), MemoryTarget()
    router = Router(clock=ManualClock())
    router.add_target("mem", mem)
    router.add_target("raw", raw)
    router.load_routes(
        routes(
            {
                "id": "kw",
                "from": "broker.meter/+",
                "to": "mem.out/{1}",
                "condition": 'value["value"] > 10',
                "transform": 'set("value", value["value"] * 0.001)',
            },
            {"id": "raw", "from": "broker.meter/+", "to": "raw.{1}"},
        )
    )
    payload = {"value": 12345, "unit": "W"}
    router.route_data("broker", "meter/1", payload)
    router.route_data("broker", "meter/2", {"value": 5, "unit": "W"})  # filtered
    router.route_data("broker", "meter/3", {"unit": "W"})  # no "value": a route error
    router.route_data("broker", "meter/4", 7)  # not an object: a route error
    await router.drain()
    assert mem.items[0][0] == "out/1" and len(mem.items) == 1
    out = mem.values[0]
    assert list(out) == ["value", "unit"]
    assert math.isclose(out["value"], 12.345) and out["unit"] == "W"
    # The other route, and the data space, see the datapoint as it came in.
    assert payload == {"value": 12345, "unit": "W"}
    assert raw.values[0] is payload
    assert router.data.get("broker.meter/1").value == {"value": 12345, "unit": "W"}  # type: ignore[union-attr]
    stats = router.route_stats("kw")
    counted = [stats[k] for k in ("matched", "passed", "filtered", "errors")]
    assert counted == [4, 1, 1, 2]


async def test_a_set_over_the_cap_counts_and_quarantines_the_route() -> None:
    """Test that a set building too much fails that datapoint as a limit error of the route.

    Repeated, it quarantines the route (not the source: the payload was
    within the caps); another route of the same source flows on.
    """
    mem = MemoryTarget()
    router = Router(
        clock=ManualClock(),
        limits=ExprLimits(max_items=10),
        quarantine_after=2,
        quarantine_window=10,
    )
    router.add_target("mem", mem)
    dup = {"id": "dup", "from": "plc.x", "to": "mem.y"}
    dup["transform"] = 'set("a", value) | set("b", value)'
    router.load_routes(routes(dup, {"id": "copy", "from": "plc.x", "to": "mem.z"}))
    router.route_data("plc", "x", {"k": 1})
    four = {f"k{i}": i for i in range(4)}
    router.route_data("plc", "x", four)
    await router.drain()
    assert mem.values[0] == {"k": 1, "a": {"k": 1}, "b": {"k": 1, "a": {"k": 1}}}
    stats = router.route_stats("dup")
    assert (stats["errors"], stats["limit_errors"], stats["state"]) == (1, 1, "enabled")
    assert "max_items=10" in stats["last_error"]
    router.route_data("plc", "x", four)
    await router.drain()
    assert router.route_stats("dup")["state"] == "quarantined"
    assert router.quarantined_routes() == ["dup"]
    assert not router.stats()["quarantined_sources"]
    assert [tag for tag, _ in mem.items].count("z") == 3


async def test_a_bad_set_is_refused_and_the_old_table_stays() -> None:
    """Test that load_routes refuses a bad set naming route, step and position; old routes run."""
    mem = MemoryTarget()
    router = Router(clock=ManualClock())
    router.add_target("mem", mem)
    router.load_routes(routes({"id": "a", "from": "plc.x", "to": "mem.y"}))
    bad = 'scale(2) | set("a..b", value)'
    with pytest.raises(RouteError) as info:
        router.load_routes(
            routes(
                {"id": "a", "from": "plc.x", "to": "mem.y", "transform": "scale(3)"},
                {"id": "b", "from": "plc.x", "to": "mem.z", "transform": bad},
            )
        )
    err = info.value
    assert (err.path, err.route_id, err.expression, err.position) == (
        "routes[1].transform",
        "b",
        bad,
        16,
    )
    assert "set() path 'a..b' has an empty part" in str(err)
    router.route_data("plc", "x", 1)
    await router.drain()
    assert mem.values == [1]
    assert [r["id"] for r in router.routes] == ["a"]


class _Sub(dict[Any, Any]):
    """A dict subclass: not the exact-class fast path."""


@pytest.mark.parametrize(
    "key", ['"a"', '"1"', "1", "1.0", "2.5", '"2.5"', "true", "0", "-1", '"x"', "[1]"]
)
@pytest.mark.parametrize(
    "value",
    [{"a": 1, "1": "one"}, {1: "int", 2.5: "f"}, _Sub(a=2), [10, 20], "ab", None, {(1,): "t"}],
    ids=repr,
)
def test_constant_key_lookup_matches_the_general_index(key: str, value: Any) -> None:
    """Test that value[k] and (value)[k] of a constant k (the dict fast path) agree with _index."""
    from edgelink.router.expr.semantics import _index

    k = compile_transform(f"expr({key})")(0, dp())
    try:
        expected: Any = ("ok", _index(value, k))
    except EvalError as exc:
        expected = ("error", str(exc))
    for text in (f"expr(value[{key}])", f"expr([value][0][{key}])"):
        try:
            got: Any = ("ok", xf(text, value))
        except EvalError as exc:
            got = ("error", str(exc))
        assert got == expected, text


#: One call of each function the language has.
CALLS = {
    "abs": "abs(value)",
    "bool": "bool(value)",
    "float": "float(value)",
    "int": "int(value)",
    "len": "len([value])",
    "max": "max([value, 1])",
    "min": "min(value, 1)",
    "num": "num(value)",
    "round": "round(value)",
    "str": "str([value])",
}


def test_every_function_returns_a_flat_value() -> None:
    """Test what lets literals skip the size walk for calls: no function returns a container."""
    from edgelink.router.expr.compiler import _FLAT_CALLS
    from edgelink.router.expr.semantics import _FUNCTIONS

    assert set(CALLS) == set(_FUNCTIONS) == _FLAT_CALLS
    for call in CALLS.values():
        assert not isinstance(xf(f"expr({call})", 2), list | tuple | dict), call


# ------------------------------------------------------------- property

_KEYS = st.sampled_from(["a", "b", "c"])
_JSON = st.recursive(
    st.integers(-5, 5) | st.none() | st.text("xy", max_size=2),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=12,
)
_PATHS = st.lists(_KEYS | st.integers(-2, 2), min_size=1, max_size=4)


def _reference_set(payload: Any, path: list[Any], x: Any) -> Any:
    """set() by the rules in docs/router.md, on a deep copy; None if it must fail."""
    out = copy.deepcopy(payload)
    holder: Any = [out]
    node_key: Any = 0
    for i, key in enumerate(path):
        node = holder[node_key]
        if isinstance(key, int):
            if not isinstance(node, list) or not -len(node) <= key < len(node):
                return None
        elif not isinstance(node, dict):
            return None
        if i == len(path) - 1:
            node[key] = x
        elif isinstance(key, str) and key not in node:
            if isinstance(path[i + 1], int):
                return None
            node[key] = {}
        holder, node_key = node, key
    return out


@PROPERTY
@given(payload=_JSON, path=_PATHS)
def test_set_follows_the_rules_and_never_mutates(payload: Any, path: list[Any]) -> None:
    """Test set against a deep-copying reference: same result or both fail; input unchanged."""
    before = copy.deepcopy(payload)
    fn = compile_transform(f"set({json.dumps(path)}, 42)")
    expected = _reference_set(payload, path, 42)
    if expected is None:
        with pytest.raises(EvalError):
            fn(payload, dp())
    else:
        assert fn(payload, dp()) == expected
    assert payload == before
    deleted = compile_transform(f"delete({json.dumps(path)})")(payload, dp())
    assert payload == before
    assert deleted == _reference_delete(payload, path)


def _reference_delete(payload: Any, path: list[Any]) -> Any:
    """delete() by the rules: without the field if the whole path is there, else unchanged."""
    out = copy.deepcopy(payload)
    node = out
    for i, key in enumerate(path):
        if isinstance(key, int):
            if not isinstance(node, list) or not -len(node) <= key < len(node):
                return payload
        elif not isinstance(node, dict) or key not in node:
            return payload
        if i == len(path) - 1:
            del node[key]
        else:
            node = node[key]
    return out
