"""The compiler's fast paths: closures for the common shapes (``value > 20``, ``value * k``).

Each one does the plain Python operation inline when the operand is a number
(or of the constant's type) and falls back to the language's semantics only
when it is not, so the common case costs one call.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Final

from edgelink.router.expr.base import _Compiled, _Const, _Fn, _fn
from edgelink.router.expr.semantics import (
    _BINARY,
    _ORDER_OPS,
    _compare,
    _contains,
    _is_number,
    _order,
    loose_equal,
)


def _binary_const(op: str, left: _Fn, k: int | float) -> _Fn:
    """``left OP number``: plain arithmetic when the left side is a number.

    Not checked against the caps: an integer grows by the constant's digits at
    most (a literal has at most 30), linearly, and the next bounded operation
    or the serializers catch what ends up too long.
    """
    slow = _BINARY[op]
    arith: Callable[[Any, Any], Any] = {
        "+": operator.add,
        "-": operator.sub,
        "*": operator.mul,
        "/": operator.truediv,
        "%": operator.mod,
    }[op]
    if left is _VALUE_FN:
        return _value_arith(op, k, slow)

    def expr_op(v: Any, dp: Any) -> Any:
        x = left(v, dp)
        t = type(x)
        if t is int or t is float:
            try:
                return arith(x, k)
            except (ZeroDivisionError, OverflowError):
                return slow(x, k)
        return slow(x, k)

    return expr_op


def _value_arith(op: str, k: int | float, slow: Callable[[Any, Any], Any]) -> _Fn:
    """``value OP number`` with the operation inline (``scale``, ``offset``, ``expr(value*k)``)."""
    if op == "*":

        def mul(v: Any, dp: Any) -> Any:
            t = type(v)
            if t is int or t is float:
                try:
                    return v * k
                except OverflowError:  # a huge int times a float
                    return slow(v, k)
            return slow(v, k)

        return mul
    if op == "+":

        def add(v: Any, dp: Any) -> Any:
            t = type(v)
            if t is int or t is float:
                try:
                    return v + k
                except OverflowError:
                    return slow(v, k)
            return slow(v, k)

        return add
    arith: Callable[[Any, Any], Any] = {
        "-": operator.sub,
        "/": operator.truediv,
        "%": operator.mod,
    }[op]

    def other(v: Any, dp: Any) -> Any:
        t = type(v)
        if t is int or t is float:
            try:
                return arith(v, k)
            except (ZeroDivisionError, OverflowError):
                return slow(v, k)
        return slow(v, k)

    return other


def _tag_of(v: Any, dp: Any) -> str:
    # dp may be a plain tuple of DataPoint's fields: no .tag property there.
    address: str = dp[0]
    source: str = dp[4]
    if address.startswith(source) and address[len(source) : len(source) + 1] == ".":
        return address[len(source) + 1 :]
    return address


def _value_fn(v: Any, dp: Any) -> Any:
    return v


_VALUE_FN: Final = _value_fn


def _compare_pair(op: str, left: _Compiled, right: _Compiled) -> _Compiled:
    """Compile one comparison; ``value OP constant`` gets a closure of its own."""
    if isinstance(right, _Const) and op in ("in", "not in"):
        container = right.value
        lf = _fn(left)
        negate = op == "not in"
        members: frozenset[Any] | None = None
        if isinstance(container, tuple):
            try:
                members = frozenset(container)
            except TypeError:
                members = None
        if members is None:
            return lambda v, dp: _contains(lf(v, dp), container, False) is not negate
        frozen = members
        has_text = any(isinstance(m, str) for m in frozen)
        has_other = any(not isinstance(m, str) for m in frozen)

        def member(v: Any, dp: Any) -> bool:
            # A hash lookup first; the loose forms ("1" for 1) only when the
            # kinds differ, which a set lookup cannot see.
            x = lf(v, dp)
            try:
                if x in frozen:
                    return not negate
            except TypeError:
                return _contains(x, container, False) is not negate
            if (has_other and isinstance(x, str)) or (has_text and not isinstance(x, str)):
                return _contains(x, container, False) is not negate
            return negate

        return member
    if isinstance(right, _Const) and op in _ORDER_OPS and _is_number(right.value):
        return _order_const(op, _fn(left), right.value)
    if isinstance(right, _Const) and op in ("==", "!="):
        k = right.value
        kt = type(k)
        lf = _fn(left)
        if op == "==":
            if left is _VALUE_FN:

                def eq_value(v: Any, dp: Any) -> bool:
                    if v.__class__ is kt:
                        return bool(v == k)
                    return loose_equal(v, k)

                return eq_value

            def eq(v: Any, dp: Any) -> bool:
                x = lf(v, dp)
                if x.__class__ is kt:
                    return bool(x == k)
                return loose_equal(x, k)

            return eq

        def ne(v: Any, dp: Any) -> bool:
            x = lf(v, dp)
            if x.__class__ is kt:
                return bool(x != k)
            return not loose_equal(x, k)

        return ne
    lf, rf = _fn(left), _fn(right)
    return lambda v, dp: _compare(op, lf(v, dp), rf(v, dp))


def _order_const(op: str, left: _Fn, k: int | float) -> _Fn:
    """``left OP number``: one plain comparison when the left side is a number."""
    fn = _ORDER_OPS[op]

    def fallback(x: Any) -> bool:
        return _order(fn, x, k)

    if left is not _VALUE_FN:

        def order(v: Any, dp: Any) -> bool:
            x = left(v, dp)
            t = type(x)
            if t is int or t is float:
                return fn(x, k)
            return fallback(x)

        return order
    # ``value > 20`` is most conditions: one closure per operator, the
    # comparison inline, no call but this one.
    if op == ">":

        def gt(v: Any, dp: Any) -> bool:
            t = type(v)
            if t is int or t is float:
                return v > k  # type: ignore[no-any-return]
            return fallback(v)

        return gt
    if op == ">=":

        def ge(v: Any, dp: Any) -> bool:
            t = type(v)
            if t is int or t is float:
                return v >= k  # type: ignore[no-any-return]
            return fallback(v)

        return ge
    if op == "<":

        def lt(v: Any, dp: Any) -> bool:
            t = type(v)
            if t is int or t is float:
                return v < k  # type: ignore[no-any-return]
            return fallback(v)

        return lt

    def le(v: Any, dp: Any) -> bool:
        t = type(v)
        if t is int or t is float:
            return v <= k  # type: ignore[no-any-return]
        return fallback(v)

    return le
