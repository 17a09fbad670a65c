"""Conditions and transforms: a small, safe expression language.

A route's ``condition`` and ``transform`` are text. Each is parsed once, at
load time, into a whitelisted syntax tree and compiled to a Python closure;
routing a datapoint only calls closures. There is no ``eval``/``exec``, no
attribute access, no calls outside the whitelist, and literals, nesting and
length are bounded, so a routing file cannot run code or exhaust memory.

Conditions are expressions over ``value, quality, source, tag, ts`` (and
``address``, ``metadata``)::

    value > 20 and quality == "good"
    tag in ["alarm", "fault"] or value["level"] >= 3

with ``and or not == != < <= > >= + - * / % in``, ``not in``, chained
comparisons (``0 < value < 10``), indexing (``value["temp"]``), literals
(numbers, strings, ``true/false/null``, lists, objects with constant keys and
computed values), durations (``500ms``,
``60s``, ``5m``, ``1h``, ``1d``: seconds) and the functions ``abs min max round
int float str bool len num``.

Transforms chain steps with ``|``::

    scale(0.001) | round(2)
    map({0: "off", 1: "on"})
    expr(value * 9 / 5 + 32) | deadband(0.5)
    avg(60s) | throttle(60s)
    set("value", value["value"] * 0.001) | delete("raw")

Text protocols report numbers as text, so arithmetic and comparisons between
a number and a numeric string use the string's number (``"21.5" > 20`` is
true), and ``"true"``/``"false"`` compare equal to the booleans. Ordering
comparisons with ``null`` are false. Anything else that does not fit (``"a" *
2``, a missing key, division by zero) fails that one evaluation: the route
counts an error, the datapoint is not delivered.

Every syntax problem is a `RouteError` naming the expression and the 1-based
position; `compile_condition` and `compile_transform` never raise anything
else, whatever the input.

Example:
    >>> cond = compile_condition("value > 20")
    >>> cond("21.5", None)
    True
    >>> compile_transform("scale(0.001) | round(2)")(12345, None)
    12.35
"""

from __future__ import annotations

from edgelink.router.expr.base import DROP, Condition, EvalError, Transform
from edgelink.router.expr.compiler import compile_condition
from edgelink.router.expr.limits import (
    DEFAULT_LIMITS,
    MAX_COLLECTION_ITEMS,
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
    MAX_INT_DIGITS,
    MAX_NODES,
    MAX_STEPS,
    MAX_STRING_LENGTH,
    MAX_WINDOW_POINTS,
    ExprLimits,
    LimitError,
)
from edgelink.router.expr.parser import Node, iter_names, parse_expression, parse_transform
from edgelink.router.expr.semantics import CONDITION_NAMES, TRANSFORM_STEPS, loose_equal, to_number
from edgelink.router.expr.transforms import compile_transform

__all__ = [
    "CONDITION_NAMES",
    "DEFAULT_LIMITS",
    "DROP",
    "MAX_COLLECTION_ITEMS",
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_INT_DIGITS",
    "MAX_NODES",
    "MAX_STEPS",
    "MAX_STRING_LENGTH",
    "MAX_WINDOW_POINTS",
    "TRANSFORM_STEPS",
    "Condition",
    "EvalError",
    "ExprLimits",
    "LimitError",
    "Node",
    "Transform",
    "compile_condition",
    "compile_transform",
    "iter_names",
    "loose_equal",
    "parse_expression",
    "parse_transform",
    "to_number",
]
