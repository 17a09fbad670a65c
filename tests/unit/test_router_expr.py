"""The expression language: parser, every condition operator, every transform step, errors."""

from __future__ import annotations

import math
from typing import Any

import pytest

from edgelink import RouteError
from edgelink.router import DROP, DataPoint, EvalError, compile_condition, compile_transform
from edgelink.router.expr import (
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
    TRANSFORM_STEPS,
    parse_expression,
    parse_transform,
)
from edgelink.testing import ManualClock


def dp(
    value: Any = 0,
    *,
    address: str = "plc_1.MAIN.temp",
    source: str = "plc_1",
    quality: str = "good",
    ts: float = 1000.0,
    metadata: dict[str, Any] | None = None,
) -> DataPoint:
    return DataPoint(address, value, ts, quality, source, metadata)


def cond(text: str, value: Any = 0, **fields: Any) -> Any:
    return compile_condition(text)(value, dp(value, **fields))


def xf(
    text: str, value: Any, point: DataPoint | None = None, clock: ManualClock | None = None
) -> Any:
    return compile_transform(text, clock=clock)(value, point or dp(value))


# ------------------------------------------------------------------ parser


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("value", "value"),
        ("42", "42"),
        ("1.5e3", "1500.0"),
        ("60s", "60.0"),
        ("500ms", "0.5"),
        ("5m", "300.0"),
        ("2h", "7200.0"),
        ("1d", "86400.0"),
        ("'it''s'", None),  # two strings next to each other: refused below
        ('"a\\n\\"b"', "'a\\n\"b'"),
        ("true", "true"),
        ("False", "false"),
        ("null", "null"),
        ("None", "null"),
        ("value + 1 * 2", "(+ value (* 1 2))"),
        ("(value + 1) * 2", "(* (+ value 1) 2)"),
        ("value - 1 - 2", "(- (- value 1) 2)"),
        ("value / 2 % 3", "(% (/ value 2) 3)"),
        ("-value", "(- value)"),
        ("--value", "(- (- value))"),
        ("+value", "(+ value)"),
        ("not value", "(not value)"),
        ("not not value", "(not (not value))"),
        ("a_or_b" if False else "value or ts", "(or value ts)"),
        ("value and ts or quality", "(or (and value ts) quality)"),
        ("value or ts and quality", "(or value (and ts quality))"),
        ("not value == 1", "(not (== value 1))"),
        ("value == 1 and tag != 'x'", "(and (== value 1) (!= tag 'x'))"),
        ("0 < value < 10", "(and (< 0 value) (< value 10))"),
        ("value in [1, 2, 3]", "(in value [1 2 3])"),
        ("value not in [1]", "(not in value [1])"),
        ("'crit' in tag", "(in 'crit' tag)"),
        ("value['temp'] > 3", "(> (index value 'temp') 3)"),
        ("value[0][1]", "(index (index value 0) 1)"),
        ("abs(value - 3) >= 1", "(>= (abs (- value 3)) 1)"),
        ("max(1, value, 3)", "(max 1 value 3)"),
        ("{1: 'a', 'b': 2}", "{1: 'a', 'b': 2}"),
        ("[]", "[]"),
        ("[1, [2, 3],]", "[1 [2 3]]"),
    ],
)
def test_parse_table(text: str, tree: str | None) -> None:
    """Test that expressions parse to the expected tree, with the documented precedence."""
    if tree is None:
        with pytest.raises(RouteError):
            parse_expression(text)
        return
    assert parse_expression(text).sexpr() == tree


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("scale(0.001)", ["scale"]),
        ("scale(2) | round(1)", ["scale", "round"]),
        ("expr(value * 2) | deadband(0.5) | clamp(0, 10)", ["expr", "deadband", "clamp"]),
        ("avg(60s)|throttle(60s)", ["avg", "throttle"]),
        ("invert()", ["invert"]),
        ('map({0: "off", 1: "on"}, "?")', ["map"]),
    ],
)
def test_parse_transform_chains(text: str, steps: list[str]) -> None:
    """Test that a transform is a chain of steps split at '|'."""
    assert [name for name, _ in parse_transform(text)] == steps


# -------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("value > 20", 21, True),
        ("value > 20", 20, False),
        ("value >= 20", 20, True),
        ("value < 20", 19.5, True),
        ("value <= 20", 20.1, False),
        ("value == 5", 5, True),
        ("value == 5", 5.0, True),
        ("value != 5", 6, True),
        ("value == true", True, True),
        ("value == true", 1, True),
        ("value == false", True, False),
        ("value == null", None, True),
        ("value != null", 0, True),
        ("value == 'on'", "on", True),
        # text protocols report numbers and booleans as text
        ("value > 20", "21.5", True),
        ("value > 20", " 19 ", False),
        ("value == 21.5", "21.5", True),
        ("value == 3", "3", True),
        ("value != 3", "3", False),
        ("value == true", "true", True),
        ("value == true", "TRUE", True),
        ("value == false", "false", True),
        ("value < 10", None, False),  # no reading is not below anything
        ("value > 10", None, False),
        ("value in [1, 2, 3]", 2, True),
        ("value in [1, 2, 3]", "2", True),
        ("value in [1, 2, 3]", 4, False),
        ("value in ['a', 'b']", "a", True),
        ("value not in ['a', 'b']", "c", True),
        ("value in 'abc'", "b", True),
        ("value in {'a': 1}", "a", True),
        ("0 < value < 10", 5, True),
        ("0 < value < 10", 10, False),
        ("value + 1 == 3", 2, True),
        ("value - 1 == 1", "2", True),
        ("value * 2 == 8", 4, True),
        ("value / 4 == 0.5", 2, True),
        ("value % 3 == 1", 7, True),
        ("value + 'b' == 'ab'", "a", True),
        ("-value == -3", 3, True),
        ("not value", 0, True),
        ("not value", 1, False),
        ("value and true", 1, True),
        ("value or false", 0, False),
        ("value > 1 and value < 5", 3, True),
        ("value < 1 or value > 5", 3, False),
        ("value['t'] > 20", {"t": 25}, True),
        ("value[1] == 'b'", ["a", "b"], True),
        ("value['1'] == 'x'", {1: "x"}, True),
        ("len(value) == 3", "abc", True),
        ("abs(value) == 3", -3, True),
        ("min(value, 2) == 2", 5, True),
        ("max([1, value, 3]) == 7", 7, True),
        ("round(value) == 3", 2.6, True),
        ("round(value, 1) == 2.6", 2.63, True),
        ("int(value) == 21", "21.7", True),
        ("float(value) == 2.0", "2", True),
        ("str(value) == '5'", 5, True),
        ("str(value) == 'true'", True, True),
        ("bool(value)", "false", False),
        ("bool(value)", "1", True),
        ("num(value) + 1 == 2.5", "1.5", True),
        ("1 + 2 == 3", 0, True),  # folded at compile time
        ("true", 0, True),
    ],
)
def test_condition_table(text: str, value: Any, expected: bool) -> None:
    """Test every operator and function of conditions, with the text-protocol coercions."""
    assert bool(cond(text, value)) is expected


@pytest.mark.parametrize(
    ("text", "fields", "expected"),
    [
        ("quality == 'good'", {}, True),
        ("quality != 'good'", {"quality": "bad"}, True),
        ("source == 'plc_1'", {}, True),
        ("tag == 'MAIN.temp'", {}, True),
        ("'MAIN' in tag", {}, True),
        ("tag == 'x'", {"address": "bt.bms_001.x", "source": "bt.bms_001"}, True),
        ("address == 'plc_1.MAIN.temp'", {}, True),
        ("ts > 999", {}, True),
        ("metadata['unit'] == 'C'", {"metadata": {"unit": "C"}}, True),
    ],
)
def test_condition_names(text: str, fields: dict[str, Any], expected: bool) -> None:
    """Test that conditions see quality, source, tag, ts, address and metadata."""
    assert bool(cond(text, 1, **fields)) is expected


def test_condition_reads_a_plain_record() -> None:
    """Test that a condition works on the router's plain field tuple, not only a DataPoint."""
    record = ("bt.bms_001.voltage", 3, 1.0, "good", "bt.bms_001", None, (), 0)
    assert compile_condition("tag == 'voltage' and source == 'bt.bms_001'")(3, record)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("value > 20", "warm"),  # not a number
        ("value > 'a'", 3),
        ("value * 2 > 1", "ab"),  # no string repetition
        ("value % 2 == 0", "%s"),  # no string formatting
        ("value / 0.0 > 1", 1),
        ("value['x'] > 1", {"y": 1}),
        ("value[5] > 1", [1]),
        ("value[0] > 1", 5),
        ("value in 5", 5),
        ("len(value) > 1", 5),
        ("min(value) > 1", []),
        ("int(value) > 1", float("inf")),
        ("round(value, 99) > 1", 1.0),
        ("value + 1 > 0", None),
    ],
)
def test_condition_runtime_errors_are_eval_errors(text: str, value: Any) -> None:
    """Test that an evaluation that cannot be done raises, to be counted on the route."""
    with pytest.raises((EvalError, ArithmeticError, TypeError, ValueError)):
        cond(text, value)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("value >> 3", 8, "unexpected '>'"),
        ("value > ", 9, "end of input"),
        ("value = 3", 7, "use '=='"),
        ("value && true", 7, "use 'and'"),
        ("value || true", 7, "use 'or'"),
        ("!value", 1, "use 'not'"),
        ("value ** 2", 7, "'**'"),
        ("value // 2", 7, "'//'"),
        ("value.real", 6, "attribute access"),
        ("__import__('os')", 1, "'__'"),
        ("value.__class__", 6, "attribute access"),
        ("foo > 1", 1, "unknown name 'foo'"),
        ("eval('1')", 1, "unknown function 'eval'"),
        ("open('/etc/passwd')", 1, "unknown function 'open'"),
        ("scale(2)", 1, "transform step"),
        ("abs", 1, "is a function"),
        ("abs(1, 2)", 1, "takes 1 argument"),
        ("round()", 1, "takes 1 to 2"),
        ("(value", 7, "expected ')'"),
        ("[1, 2", 6, "expected ']'"),
        ("{1: 2", 6, "expected '}'"),
        ("{1 2}", 4, "expected ':'"),
        ("{value: 1}", 2, "keys must be constants"),
        ("{1: 1, 1: 2}", 8, "duplicate key"),
        ("{[1]: 2}", 2, "keys must be"),
        ("'abc", 1, "unterminated string"),
        ("'a\\q'", 3, "unknown escape"),
        ("'\\u12'", 2, "\\u escape"),
        ("1e999", 1, "out of range"),
        ("1" * 31, 1, "longer than"),
        ("1.5.2", 4, "unexpected number 0.2"),
        ("60sec", 1, "malformed number"),
        ("value $ 2", 7, "unexpected character '$'"),
        ("value\x00", 6, "unexpected character"),
        ("1 / 0", 3, "division by zero"),
        ("value / 0", 7, "division by zero"),
        ("value % 0", 7, "division by zero"),
        ("2 + 'a' * 2", 9, "not a number"),
        ("", 1, "is empty"),
        ("   ", 1, "is empty"),
        ("and", 1, "unexpected 'and'"),
        ("value in", 9, "end of input"),
        ("value not", 7, "unexpected 'not'"),
    ],
)
def test_condition_errors_name_the_position(text: str, position: int, fragment: str) -> None:
    """Test that a bad condition is a RouteError with the expression and the 1-based position."""
    with pytest.raises(RouteError) as info:
        compile_condition(text, route_id="r1")
    err = info.value
    assert err.route_id == "r1"
    assert err.expression == text
    assert err.position == position, str(err)
    assert fragment in str(err)
    assert "route 'r1'" in str(err)


def test_limits_are_enforced() -> None:
    """Test that length, nesting, literal sizes and node count are bounded."""
    with pytest.raises(RouteError, match="longer than"):
        compile_condition("1 + " * (MAX_EXPRESSION_LENGTH // 4 + 1) + "1")
    deep = "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(RouteError, match="nested deeper"):
        compile_condition(deep)
    with pytest.raises(RouteError, match="nested deeper"):
        compile_condition("-" * (MAX_DEPTH + 1) + "1")
    with pytest.raises(RouteError, match="string literal longer"):
        compile_condition("'" + "x" * 1001 + "'")
    # Long flat chains are fine: they do not nest (variable terms are capped apart).
    assert compile_condition(" + ".join(["value"] + ["1"] * 199) + " > 0")(1, dp(1))


def test_non_string_expression_is_a_route_error() -> None:
    """Test that a condition that is not text is refused cleanly."""
    with pytest.raises(RouteError, match="must be a string"):
        compile_condition(42)  # type: ignore[arg-type]


# --------------------------------------------------------------- transforms


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("scale(0.001)", 12345, 12.345),
        ("scale(2)", "21.5", 43.0),
        ("scale(-1)", 3, -3),
        ("scale(1/1000)", 1000, 1.0),
        ("scale(2)", True, 2),
        ("offset(-273.15)", 300, 300 - 273.15),
        ("offset(10)", "5", 15),
        ("round(2)", 3.14159, 3.14),
        ("round()", 2.5, 2),
        ("round(0)", 3.7, 4.0),
        ("round(-2)", 1234, 1200),
        ("round(1)", "2.26", 2.3),
        ("clamp(0, 10)", 12, 10),
        ("clamp(0, 10)", -1, 0),
        ("clamp(0, 10)", 5, 5),
        ("clamp(0, 10)", "11", 10),
        ("invert()", True, False),
        ("invert()", False, True),
        ("invert()", 0, 1),
        ("invert()", 1, 0),
        ("invert()", 5, 0),
        ("invert()", "true", False),
        ("invert()", "0", 1),
        ('map({0: "off", 1: "on"})', 1, "on"),
        ('map({0: "off", 1: "on"})', "0", "off"),
        ('map({0: "off", 1: "on"})', True, "on"),
        ('map({0: "off", 1: "on"})', 1.0, "on"),
        ('map({0: "off", 1: "on"})', 7, 7),
        ('map({0: "off", 1: "on"}, "?")', 7, "?"),
        ('map({"1": "on"})', 1, "on"),
        ('map({"true": 1, "false": 0})', True, 1),
        ('map({true: "yes"})', "true", "yes"),
        ('map({"a": 1})', ["unhashable"], ["unhashable"]),
        ("expr(value * 9 / 5 + 32)", 100, 212.0),
        ("expr(value['temp'])", {"temp": 21}, 21),
        ("expr(round(value, 1))", 2.26, 2.3),
        ("expr(quality == 'good')", 1, True),
        ("expr(tag)", 1, "MAIN.temp"),
        ("expr(value + 1) | expr(value * 10)", 1, 20),
        ("scale(0.001) | round(2)", 12345, 12.35),
        ("offset(1) | scale(2) | clamp(0, 5)", 2, 5),
    ],
)
def test_transform_table(text: str, value: Any, expected: Any) -> None:
    """Test every stateless transform step, and chains."""
    got = xf(text, value)
    if isinstance(expected, float):
        assert math.isclose(got, expected, rel_tol=1e-9)
    else:
        assert got == expected
        assert type(got) is type(expected) or isinstance(expected, int | float)


def test_transform_clamp_keeps_nan() -> None:
    """Test that clamp passes NaN on rather than turning no-reading into a bound."""
    assert math.isnan(xf("clamp(0, 1)", float("nan")))


def test_deadband_per_address() -> None:
    """Test that deadband passes a value only after it moved by the band, per address."""
    t = compile_transform("deadband(0.5)")
    a, b = dp(address="x.a"), dp(address="x.b")
    assert [t(v, a) for v in (10, 10.2, 10.4, 10.6, 10.3, 10.0)] == [
        10, DROP, DROP, 10.6, DROP, 10.0,
    ]  # fmt: skip
    assert t(3, b) == 3  # another address has its own band
    zero = compile_transform("deadband(0)")
    assert [zero(v, a) for v in (1, 1, 2, "2", "x", "x", "y")] == [1, DROP, 2, DROP, "x", DROP, "y"]


def test_throttle_uses_the_clock() -> None:
    """Test that throttle passes one value per period of the injected clock."""

    async def scenario() -> list[Any]:
        clock = ManualClock()
        t = compile_transform("throttle(10s)", clock=clock)
        p = dp()
        out = [t(1, p), t(2, p)]
        await clock.advance(9.9)
        out.append(t(3, p))
        await clock.advance(0.1)
        out.append(t(4, p))
        return out

    import asyncio

    assert asyncio.run(scenario()) == [1, DROP, DROP, 4]


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("avg(60s)", [10.0, 15.0, 20.0, 30.0, 40.0]),
        ("sum(60s)", [10.0, 30.0, 60.0, 90.0, 120.0]),
        ("min(60s)", [10, 10, 10, 20, 30]),
        ("max(60s)", [10, 20, 30, 40, 50]),
        ("count(60s)", [1, 2, 3, 3, 3]),
    ],
)
def test_windowed_aggregations_slide_with_the_clock(step: str, expected: list[Any]) -> None:
    """Test avg/sum/min/max/count over a sliding window on the injectable clock."""

    async def scenario() -> list[Any]:
        clock = ManualClock()
        t = compile_transform(step, clock=clock)
        p = dp()
        out = []
        for v in (10, 20, 30, 40, 50):
            out.append(t(v, p))
            await clock.advance(25)  # the window holds the last 3 values (25 s apart)
        return out

    import asyncio

    assert asyncio.run(scenario()) == expected


def test_window_min_max_with_equal_timestamps_and_text() -> None:
    """Test that min/max stay right when values arrive at the same instant, as text."""
    clock = ManualClock()
    mx = compile_transform("max(1s)", clock=clock)
    mn = compile_transform("min(1s)", clock=clock)
    p = dp()
    assert [mx(v, p) for v in ("3", "1", "2")] == [3, 3, 3]
    assert [mn(v, p) for v in (3, 1, 2)] == [3, 1, 1]
    with pytest.raises(EvalError):
        mx("n/a", p)
    with pytest.raises(EvalError):
        compile_transform("avg(1s)", clock=clock)(float("inf"), p)


def test_avg_and_throttle_make_one_value_a_minute() -> None:
    """Test the dashboard recipe: avg(60s) | throttle(60s) gives one mean per minute."""

    async def scenario() -> list[Any]:
        clock = ManualClock()
        t = compile_transform("avg(60s) | throttle(60s)", clock=clock)
        p = dp()
        out = []
        for i in range(13):  # one value every 10 s
            got = t(i, p)
            if got is not DROP:
                out.append(got)
            await clock.advance(10)
        return out

    import asyncio

    assert asyncio.run(scenario()) == [0.0, 3.5, 9.5]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("scale", "expected '('"),
        ("scale()", "takes 1 argument"),
        ("scale('x')", "must be a number"),
        ("scale(value)", "must be a constant"),
        ("round(1.5)", "between -15 and 15"),
        ("round(99)", "between -15 and 15"),
        ("clamp(10, 0)", "above the high bound"),
        ("clamp(1)", "takes 2 argument"),
        ("invert(1)", "takes 0 argument"),
        ("map(1)", "needs an object"),
        ("map({value: 1})", "constant"),
        ("deadband(-1)", "at least 0"),
        ("avg(0)", "above 0"),
        ("avg()", "takes 1 argument"),
        ("frobnicate(1)", "unknown transform 'frobnicate'"),
        ("scale(2) round(1)", "expected '|'"),
        ("scale(2) |", "expected a transform step"),
        ("| scale(2)", "expected a transform step"),
        ("value * 2", "write expr(...)"),
        ("expr(value +)", "unexpected"),
        ("expr(__import__('os').system('true'))", "'__'"),
        ("expr(1, 2)", "takes 1 argument"),
        (" | ".join(["scale(1)"] * 33), "more than 32 steps"),
    ],
)
def test_transform_errors(text: str, fragment: str) -> None:
    """Test that bad transforms are RouteErrors naming the problem and a position."""
    with pytest.raises(RouteError) as info:
        compile_transform(text, route_id="t")
    assert fragment in str(info.value)
    assert info.value.position is not None and info.value.expression == text


def test_transform_runtime_errors() -> None:
    """Test that a transform that cannot work on a value raises (a route error, not a crash)."""
    for text, value in (
        ("scale(2)", "abc"),
        ("offset(1)", None),
        ("clamp(0, 1)", "x"),
        ("invert()", "maybe"),
        ("expr(value / (value - 1))", 1),
        ("round(2)", "x"),
    ):
        with pytest.raises(EvalError):
            xf(text, value)
    with pytest.raises(EvalError):
        xf("scale(1.5)", 10**400)


def test_every_step_is_documented_and_compiles() -> None:
    """Test that each step named in TRANSFORM_STEPS compiles with a sample argument."""
    samples = {
        "scale": "scale(2)",
        "offset": "offset(1)",
        "round": "round(1)",
        "clamp": "clamp(0, 1)",
        "invert": "invert()",
        "map": "map({1: 2})",
        "deadband": "deadband(1)",
        "throttle": "throttle(1s)",
        "expr": "expr(value)",
        "set": 'set("a.b", value)',
        "delete": 'delete("a")',
        "avg": "avg(1s)",
        "min": "min(1s)",
        "max": "max(1s)",
        "sum": "sum(1s)",
        "count": "count(1s)",
    }
    assert set(samples) == set(TRANSFORM_STEPS)
    for text in samples.values():
        assert callable(compile_transform(text, clock=ManualClock()))
