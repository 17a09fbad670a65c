"""Fuzzing the expression language: any text compiles to a closure or is a RouteError.

Never another exception, never code execution: the compiled closures are
also called on assorted values, and may only fail with ordinary exceptions
that the router counts as route errors.
"""

from __future__ import annotations

import builtins
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgelink import RouteError
from edgelink.router import DataPoint, compile_condition, compile_transform
from edgelink.router.expr import TRANSFORM_STEPS
from edgelink.testing import ManualClock

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKENS = [
    "value", "quality", "tag", "source", "ts", "address", "metadata", "true", "false", "null",
    "and", "or", "not", "in", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%",
    "(", ")", "[", "]", "{", "}", ",", ":", "|", ".", "**", "=", "!", "&&",
    "0", "1", "2.5", "1e308", "10", "60s", "500ms", "'a'", '"b"', "''",
    "abs", "min", "max", "round", "int", "float", "str", "bool", "len", "num",
    "__import__", "__class__", "eval", "exec", "open", "os", "lambda", "import",
    "scale", "offset", "clamp", "invert", "map", "deadband", "expr", "avg", "throttle",
]  # fmt: skip

VALUES: list[Any] = [
    0, 1, -1, 2.5, float("nan"), float("inf"), 10**40, True, False, None,
    "", "21.5", "true", "abc", "%s", [1, 2], {"temp": 3, "1": "x"}, (1,),
]  # fmt: skip

token_soup = st.lists(st.sampled_from(TOKENS), max_size=25).map(" ".join)
any_text = st.text(max_size=200)


class SentinelError(Exception):
    """Raised by the patched builtins below: reaching them means code ran."""


def _poisoned(*_: Any, **__: Any) -> Any:
    raise SentinelError("a forbidden builtin was called")


def _check_closure(fn: Any) -> None:
    point = DataPoint("plc_1.MAIN.x", 1, 1.0, "good", "plc_1", {"unit": "C"})
    for value in VALUES:
        try:
            result = fn(value, point)
        except (ArithmeticError, ValueError, TypeError, LookupError, RecursionError):
            continue  # a failed evaluation: the router counts it on the route
        if isinstance(result, float):
            assert math.isnan(result) or isinstance(result, float)


def _compile_or_route_error(compiler: Any, text: str) -> None:
    saved = {name: getattr(builtins, name) for name in ("__import__", "eval", "exec", "open")}
    for name in saved:
        setattr(builtins, name, _poisoned)
    try:
        try:
            fn = compiler(text)
        except RouteError as exc:
            error: RouteError | None = exc
        else:
            error = None
        if error is not None:
            assert error.expression == text
            assert error.position is None or 1 <= error.position <= len(text) + 1
            return
        assert callable(fn)
        _check_closure(fn)
    finally:
        for name, fn_ in saved.items():
            setattr(builtins, name, fn_)


@FUZZ
@given(token_soup)
def test_condition_token_soup(text: str) -> None:
    """Test that any sequence of the language's tokens compiles or is a RouteError."""
    _compile_or_route_error(compile_condition, text)


@FUZZ
@given(any_text)
def test_condition_any_text(text: str) -> None:
    """Test that arbitrary text compiles or is a RouteError, never another exception."""
    _compile_or_route_error(compile_condition, text)


@FUZZ
@given(st.lists(st.sampled_from(sorted(TRANSFORM_STEPS)), min_size=1, max_size=4), token_soup)
def test_transform_steps_with_soup_arguments(steps: list[str], args: str) -> None:
    """Test that transform chains with arbitrary arguments compile or are RouteErrors."""
    text = " | ".join(f"{step}({args})" for step in steps)
    clock = ManualClock()
    _compile_or_route_error(lambda t: compile_transform(t, clock=clock), text)


@FUZZ
@given(any_text)
def test_transform_any_text(text: str) -> None:
    """Test that arbitrary text as a transform compiles or is a RouteError."""
    _compile_or_route_error(lambda t: compile_transform(t, clock=ManualClock()), text)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=2, max_value=400))
def test_huge_exponents_and_nesting_are_refused_fast(n: int) -> None:
    """Test that power towers, deep nesting and big literals never compile or hang."""
    for text in (
        "**".join(["9"] * n),
        "(" * n + "1" + ")" * n,
        "-" * n + "1",
        "9" * n,
        "value" + "[0]" * n,
    ):
        try:
            compile_condition(text)
        except RouteError:
            continue
        # What compiles within the limits must evaluate (or fail) quickly.
        _check_closure(compile_condition(text))
