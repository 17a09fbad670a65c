"""What every part of the expression language shares: `DROP`, `EvalError`, the closure shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

#: A compiled condition: ``condition(value, datapoint) -> truthy``.
Condition = Callable[[Any, Any], Any]
#: A compiled transform: ``transform(value, datapoint) -> new value or DROP``.
Transform = Callable[[Any, Any], Any]


class _Drop:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DROP"

    def __reduce__(self) -> str:
        return "DROP"


#: Returned by a transform that holds a datapoint back (deadband, throttle).
DROP: Final = _Drop()


class EvalError(ValueError):
    """One evaluation of a condition or transform failed (a runtime type or value problem)."""


#: A compiled node: ``fn(value, datapoint) -> result``.
_Fn = Callable[[Any, Any], Any]


class _Const:
    """A compile-time constant (folded), kept apart from closures."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_Compiled = _Const | _Fn


def _fn(c: _Compiled) -> _Fn:
    if isinstance(c, _Const):
        k = c.value
        return lambda v, dp: k
    return c
