"""The transform steps (``scale``, ``map``, ``deadband``, the windows) and `compile_transform`."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from edgelink.clock import Clock, SystemClock
from edgelink.router.expr.base import DROP, EvalError, Transform, _Const, _Fn
from edgelink.router.expr.compiler import _Compiler, _finish, _flat
from edgelink.router.expr.fastpaths import _VALUE_FN, _binary_const
from edgelink.router.expr.lexer import _Source
from edgelink.router.expr.limits import (
    _TEXT_BITS,
    DEFAULT_LIMITS,
    MAX_WINDOW_POINTS,
    ExprLimits,
    _metered,
)
from edgelink.router.expr.parser import Node, _parse_steps, _Step
from edgelink.router.expr.paths import Path, deleter, parse_path, setter
from edgelink.router.expr.semantics import (
    _BOOL_TEXT,
    _fn_round,
    _is_number,
    _text_number,
    loose_equal,
    to_number,
)


class _StepCompiler(_Compiler):
    def __init__(self, src: _Source, clock: Clock, limits: ExprLimits) -> None:
        super().__init__(src, limits)
        self.clock = clock

    def number(self, node: Node, what: str, *, minimum: float | None = None) -> int | float:
        value = self.constant(node, what)
        if isinstance(value, bool) or not _is_number(value):
            raise self.fail(f"{what} must be a number", node)
        if minimum is not None and value < minimum:
            raise self.fail(f"{what} must be at least {minimum:g}", node)
        return value  # type: ignore[no-any-return]

    def arity(self, step: _Step, least: int, most: int) -> None:
        n = len(step.args)
        if not least <= n <= most:
            want = str(least) if least == most else f"{least} to {most}"
            raise self.src.error(f"{step.name}() takes {want} argument(s), got {n}", step.pos)

    def step(self, step: _Step) -> _Fn:
        method: Callable[[_Step], _Fn] = getattr(self, "s_" + step.name)
        return method(step)

    def s_scale(self, step: _Step) -> _Fn:
        self.arity(step, 1, 1)
        k = self.number(step.args[0], "scale factor")
        return _binary_const("*", _VALUE_FN, k)

    def s_offset(self, step: _Step) -> _Fn:
        self.arity(step, 1, 1)
        k = self.number(step.args[0], "offset")
        return _binary_const("+", _VALUE_FN, k)

    def s_round(self, step: _Step) -> _Fn:
        self.arity(step, 0, 1)
        if not step.args:
            return lambda v, dp: _fn_round(v)
        n = self.constant(step.args[0], "round() digits")
        if isinstance(n, bool) or not isinstance(n, int) or not -15 <= n <= 15:
            raise self.fail("round() digits must be an integer between -15 and 15", step.args[0])

        def rounded(v: Any, dp: Any) -> Any:
            t = type(v)
            if t is float or t is int:
                return round(v, n)
            return _fn_round(v, n)

        return rounded

    def s_clamp(self, step: _Step) -> _Fn:
        self.arity(step, 2, 2)
        lo = self.number(step.args[0], "clamp() low bound")
        hi = self.number(step.args[1], "clamp() high bound")
        if lo > hi:
            raise self.fail(
                f"clamp() low bound {lo:g} is above the high bound {hi:g}", step.args[0]
            )

        def clamped(v: Any, dp: Any) -> Any:
            x = to_number(v)
            if x != x:  # NaN stays NaN: it is no reading, not a bound
                return x
            return lo if x < lo else hi if x > hi else x

        return clamped

    def s_invert(self, step: _Step) -> _Fn:
        self.arity(step, 0, 0)
        return lambda v, dp: _invert(v)

    def s_map(self, step: _Step) -> _Fn:
        self.arity(step, 1, 2)
        table = self.constant(step.args[0], "map() table")
        if not isinstance(table, dict):
            raise self.fail('map() needs an object, e.g. map({0: "off", 1: "on"})', step.args[0])
        has_default = len(step.args) == 2
        default = self.constant(step.args[1], "map() default") if has_default else None

        def mapped(v: Any, dp: Any) -> Any:
            # Keys follow the language's equality: 1, 1.0 and true are one key,
            # and text from a text protocol finds its number ("1" -> 1).
            try:
                hit = table.get(v, _MISSING)
            except TypeError:  # an unhashable value is in no table
                return default if has_default else v
            if hit is _MISSING:
                for alt in _loose_keys(v):
                    hit = table.get(alt, _MISSING)
                    if hit is not _MISSING:
                        break
            if hit is not _MISSING:
                return hit
            return default if has_default else v

        return mapped

    def s_deadband(self, step: _Step) -> _Fn:
        self.arity(step, 1, 1)
        band = self.number(step.args[0], "deadband", minimum=0)
        last: dict[str, Any] = {}

        def deadband(v: Any, dp: Any) -> Any:
            key = dp[0] if dp is not None else ""
            prev = last.get(key, _MISSING)
            if prev is _MISSING:
                last[key] = v
                return v
            try:
                moved = abs(to_number(v) - to_number(prev))
                changed = moved >= band if band > 0 else moved != 0
            except EvalError:
                changed = not loose_equal(v, prev)
            if not changed:
                return DROP
            last[key] = v
            return v

        return deadband

    def s_throttle(self, step: _Step) -> _Fn:
        self.arity(step, 1, 1)
        period = self.number(step.args[0], "throttle() period", minimum=0)
        monotonic = self.clock.monotonic
        last: dict[str, float] = {}

        def throttle(v: Any, dp: Any) -> Any:
            key = dp[0] if dp is not None else ""
            now = monotonic()
            prev = last.get(key)
            if prev is not None and now - prev < period:
                return DROP
            last[key] = now
            return v

        return throttle

    def _window(self, step: _Step) -> _Fn:
        self.arity(step, 1, 1)
        seconds = self.number(step.args[0], f"{step.name}() window")
        if seconds <= 0:
            raise self.fail(f"{step.name}() window must be above 0 (e.g. 60s)", step.args[0])
        windows: dict[str, _Window] = {}
        kind = step.name
        monotonic = self.clock.monotonic

        def aggregate(v: Any, dp: Any) -> Any:
            key = dp[0] if dp is not None else ""
            win = windows.get(key)
            if win is None:
                win = windows[key] = _Window(kind, seconds)
            return win.add(monotonic(), v)

        return aggregate

    s_avg = s_min = s_max = s_sum = s_count = _window

    def s_expr(self, step: _Step) -> _Fn:
        self.arity(step, 1, 1)
        return _finish(self.compile(step.args[0]))

    def path(self, node: Node, step: str) -> Path:
        raw = self.constant(node, f"{step}() path")
        try:
            return parse_path(raw, self.limits.max_nesting)
        except ValueError as exc:
            raise self.fail(f"{step}() {exc}", node) from None

    def s_set(self, step: _Step) -> _Fn:
        self.arity(step, 2, 2)
        path = self.path(step.args[0], "set")
        node = step.args[1]
        compiled = self.compile(node)
        if isinstance(compiled, _Const):
            k = compiled.value
            fn: _Fn = lambda v, dp: k  # noqa: E731
            nested = False  # a constant is within the caps (checked at load)
        else:
            fn = compiled
            nested = not _flat(node)
        if nested:
            self.metered = True
        return setter(path, fn, nested, self.limits.max_items, self.src.route_id)

    def s_delete(self, step: _Step) -> _Fn:
        self.arity(step, 1, 1)
        path = self.path(step.args[0], "delete")
        return deleter(path, self.limits.max_items, self.src.route_id)


_MISSING: Final = object()


def _loose_keys(v: Any) -> list[Any]:
    """Other forms a value may have as a map key: "1" for 1, true for "true"."""
    if isinstance(v, str):
        out: list[Any] = []
        number = _text_number(v)
        if number is not None:
            out.append(number)
        flag = _BOOL_TEXT.get(v.strip().lower())
        if flag is not None:
            out.append(flag)
        return out
    if isinstance(v, bool):
        return ["true" if v else "false"]
    if isinstance(v, int):
        return [str(v)] if v.bit_length() <= _TEXT_BITS else []
    if isinstance(v, float):
        return [str(int(v)), repr(v)] if v.is_integer() else [repr(v)]
    return []


def _invert(v: Any) -> Any:
    if isinstance(v, bool):
        return not v
    if isinstance(v, str):
        flag = _BOOL_TEXT.get(v.strip().lower())
        if flag is not None:
            return not flag
    number = to_number(v)
    return 1 if number == 0 else 0


class _Window:
    """A sliding time window of one address: sum, count, min or max in O(1) amortized."""

    __slots__ = ("_drift", "extreme", "head", "kind", "points", "seconds", "sum")

    def __init__(self, kind: str, seconds: float) -> None:
        self.kind = kind
        self.seconds = seconds
        self.points: deque[tuple[float, Any]] = deque()
        #: Sequence number of points[0]; min/max entries are (sequence, x).
        self.head = 0
        self.extreme: deque[tuple[int, Any]] = deque()
        self.sum = 0.0
        self._drift = 0

    def add(self, now: float, v: Any) -> Any:
        kind = self.kind
        points = self.points
        x: Any = v
        if kind != "count":
            x = to_number(v)
            try:
                finite = math.isfinite(x)
            except OverflowError:  # an int too large for a float
                finite = False
            if not finite:
                raise EvalError(f"{kind}() of a non-finite number")
        points.append((now, x))
        if kind == "avg" or kind == "sum":
            self.sum += x
        elif kind != "count":
            ext = self.extreme
            if kind == "max":
                while ext and ext[-1][1] <= x:
                    ext.pop()
            else:
                while ext and ext[-1][1] >= x:
                    ext.pop()
            ext.append((self.head + len(points) - 1, x))
        horizon = now - self.seconds
        while points and (points[0][0] <= horizon or len(points) > MAX_WINDOW_POINTS):
            _, old = points.popleft()
            self.head += 1
            if kind == "avg" or kind == "sum":
                self.sum -= old
                self._drift += 1
        if kind == "count":
            return len(points)
        if kind == "min" or kind == "max":
            ext = self.extreme
            while ext[0][0] < self.head:
                ext.popleft()
            return ext[0][1]
        if self._drift > 10_000:
            # A running sum drifts with every subtraction: start it over now and then.
            self.sum = math.fsum(p[1] for p in points)
            self._drift = 0
        return self.sum if kind == "sum" else self.sum / len(points)


def compile_transform(
    text: str,
    *,
    route_id: str | None = None,
    clock: Clock | None = None,
    limits: ExprLimits | None = None,
) -> Transform:
    """Compile a transform chain to ``transform(value, datapoint) -> value | DROP``.

    Stateful steps (``deadband``, ``throttle``, the windows) keep their state
    per input address inside the returned closure, and read time from
    ``clock`` (monotonic). An evaluation that would go over one of ``limits``
    (default `DEFAULT_LIMITS`) raises `LimitError`.

    Raises:
        RouteError: for a syntax error, an unknown step, a wrong argument,
            naming the expression and the 1-based position. Never anything else.
    """
    src, steps = _parse_steps(text, route_id)
    compiler = _StepCompiler(src, clock or SystemClock(), limits or DEFAULT_LIMITS)
    fns = tuple(compiler.step(s) for s in steps)
    if len(fns) == 1:
        fn = fns[0]
    else:

        def chain(v: Any, dp: Any) -> Any:
            for f in fns:
                v = f(v, dp)
                if v is DROP:
                    return DROP
            return v

        fn = chain
    return _metered(fn, compiler.limits, route_id) if compiler.metered else fn
