"""The bounds of the expression language: fixed parse caps, `ExprLimits` and the cost meter.

Expressions run on the event loop, so what one evaluation may build is
bounded: a value that would outgrow a cap fails that datapoint (a
`LimitError`, a `RouteError` naming the route and the cap). The checks sit
where values grow (string concatenation, integer multiplication, ``str()``,
walks over lists and objects), never in the closures of cheap arithmetic and
comparisons. The operations that copy or build data also charge cost units
(about one unit per character, byte of integer or item they produce) to the
evaluation's budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from edgelink.errors import RouteError
from edgelink.router.expr.base import EvalError, _Fn

#: Longest condition or transform text accepted.
MAX_EXPRESSION_LENGTH: Final = 2000
#: Longest string literal.
MAX_STRING_LENGTH: Final = 1000
#: Most digits of an integer literal.
MAX_INT_DIGITS: Final = 30
#: Most items in one list or object literal.
MAX_COLLECTION_ITEMS: Final = 1000
#: Deepest nesting of parentheses, brackets, calls and unary operators.
MAX_DEPTH: Final = 32
#: Most syntax-tree nodes in one expression.
MAX_NODES: Final = 1000
#: Most steps in one transform chain.
MAX_STEPS: Final = 32
#: Most values one aggregation window keeps per address (the oldest go first).
MAX_WINDOW_POINTS: Final = 100_000
#: Longest numeric string that arithmetic converts (longer ones are not numbers).
_MAX_NUMERIC_TEXT: Final = 64


@dataclass(frozen=True, slots=True)
class ExprLimits:
    """The caps of one evaluation of a condition or transform.

    Args:
        max_string_length: Longest string (or bytes) an operation may build or copy.
        max_int_digits: Most decimal digits of an integer an operation may build
            (far below Python's 4,300-digit limit of int-to-text conversion).
        max_items: Longest list or object an operation may walk (``in``, ``min``,
            ``max``, ``str()``).
        max_nesting: Deepest list/object nesting an operation may walk.
        max_terms: Most variable operands joined by ``+`` or ``*`` in one
            expression (checked at compile time: each may be a copy of the input).
        budget: Cost units one evaluation may spend (about one per character,
            integer byte or item built); over it the evaluation fails.
    """

    max_string_length: int = 1_048_576
    max_int_digits: int = 1000
    max_items: int = 10_000
    max_nesting: int = 32
    max_terms: int = 64
    budget: int = 8_000_000

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_int_digits > 4000:
            raise ValueError(f"max_int_digits must be at most 4000, got {self.max_int_digits}")

    @property
    def max_int_bits(self) -> int:
        """``max_int_digits`` in bits (what `int.bit_length` is compared with)."""
        return math.ceil(self.max_int_digits / _LOG10_2)


_LOG10_2: Final = math.log10(2)
#: The caps used when none are given.
DEFAULT_LIMITS: Final = ExprLimits()
#: Integers longer than this many bits are never converted to text (Python's
#: limit is 4,300 digits; the conversion is quadratic long before that).
_TEXT_BITS: Final = math.ceil(4000 / _LOG10_2)


class LimitError(RouteError, EvalError):
    """An evaluation went over a cap or its cost budget.

    Args:
        message: What went over which cap.
        route_id: The route evaluated, if known.
        cap: The cap's name (``max_string_length``, ``budget``...).
        entry: True if a value coming in was already over the cap (the
            source's doing) rather than one the expression built.
    """

    def __init__(
        self, message: str, *, route_id: str | None = None, cap: str = "", entry: bool = False
    ) -> None:
        super().__init__(message, route_id=route_id)
        self.cap = cap
        self.entry = entry


class _Meter:
    """The evaluation under way: its caps, route and cost spent (one at a time)."""

    __slots__ = (
        "bits",
        "budget",
        "digits",
        "items",
        "limits",
        "nesting",
        "route_id",
        "string",
        "used",
    )

    def __init__(self) -> None:
        self.limits: ExprLimits | None = None
        self.route_id: str | None = None
        self.set(DEFAULT_LIMITS, None)

    def set(self, limits: ExprLimits, route_id: str | None) -> None:
        self.used = 0
        if limits is self.limits and route_id is self.route_id:
            return  # the same route again (the usual case): only the spending starts over
        self.limits = limits
        self.bits = limits.max_int_bits
        self.digits = limits.max_int_digits
        self.budget = limits.budget
        self.string = limits.max_string_length
        self.items = limits.max_items
        self.nesting = limits.max_nesting
        self.route_id = route_id


_METER: Final = _Meter()


def _over(what: str, cap: str, limit: int, *, entry: bool = False) -> LimitError:
    return LimitError(
        f"{what} over the cap {cap}={limit}", route_id=_METER.route_id, cap=cap, entry=entry
    )


def _charge(units: int) -> None:
    m = _METER
    m.used += units
    if m.used > m.budget:
        raise LimitError(
            f"evaluation cost over the budget of {m.budget} units",
            route_id=m.route_id,
            cap="budget",
        )


def _check_text(a: Any, b: Any) -> None:
    """``a + b`` of two strings: within the length cap, charged."""
    n = len(a) + len(b)
    cap = _METER.string
    if n > cap:
        raise _over(
            f"string of {n} characters",
            "max_string_length",
            cap,
            entry=len(a) > cap or len(b) > cap,
        )
    _charge(n)


def _check_walk(value: Any, *, entry: bool = True) -> None:
    """A list or object about to be walked: within the item and nesting caps, charged.

    ``entry``: the value came in (a cap it goes over is the source's doing);
    false for one the expression built.
    """
    m = _METER
    items, nesting = m.items, m.nesting
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        x, depth = stack.pop()
        if depth > nesting:
            raise _over(f"nesting of {depth} levels", "max_nesting", nesting, entry=entry)
        children = x.values() if isinstance(x, Mapping) else x
        seen += len(x)
        if seen > items:
            raise _over(f"more than {items} items", "max_items", items, entry=entry)
        for child in children:
            if isinstance(child, list | tuple | Mapping):
                stack.append((child, depth + 1))
            elif isinstance(child, str | bytes) and len(child) > m.string:
                raise _over(
                    f"string of {len(child)} characters", "max_string_length", m.string, entry=True
                )
    _charge(seen)


#: Types of values that are never a list or an object (checked by class, no isinstance).
_FLAT_TYPES: Final = frozenset({int, float, str, bool, type(None), bytes})
#: What `_check_walk` walks into.
_CONTAINERS: Final = (list, tuple, Mapping)


def _check_built(value: Any, parts: Iterable[Any]) -> None:
    """A list or object an evaluation built from ``parts``, some of them lists or objects.

    It is walked whole (shared parts count each time they appear, as a
    serializer would write them), within ``max_items`` and ``max_nesting``,
    and charged. Over a cap, it is the route's doing unless one of the parts
    was already over it on its own.
    """
    try:
        _check_walk(value, entry=False)
    except LimitError as exc:
        if exc.cap in ("max_items", "max_nesting"):
            for part in parts:
                if isinstance(part, list | tuple | Mapping):
                    _check_walk(part)
        raise


def _check_int(x: int, *, entry: bool = False) -> int:
    """An integer within the digit cap (``entry``: it came in that way), else `LimitError`."""
    bits = x.bit_length()
    if bits > _METER.bits:
        digits = int(bits * _LOG10_2) + 1
        raise _over(
            f"integer of about {digits} digits", "max_int_digits", _METER.digits, entry=entry
        )
    return x


def _metered(fn: _Fn, limits: ExprLimits, route_id: str | None) -> _Fn:
    """Wrap an expression that uses bounded operations: each evaluation starts a fresh meter."""
    start = _METER.set

    def metered(v: Any, dp: Any) -> Any:
        start(limits, route_id)
        return fn(v, dp)

    return metered
