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
(numbers, strings, ``true/false/null``, lists, objects), durations (``500ms``,
``60s``, ``5m``, ``1h``, ``1d``: seconds) and the functions ``abs min max round
int float str bool len num``.

Transforms chain steps with ``|``::

    scale(0.001) | round(2)
    map({0: "off", 1: "on"})
    expr(value * 9 / 5 + 32) | deadband(0.5)
    avg(60s) | throttle(60s)

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

import math
import operator
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from edgelink.clock import Clock, SystemClock
from edgelink.errors import RouteError

__all__ = [
    "CONDITION_NAMES",
    "DEFAULT_LIMITS",
    "DROP",
    "MAX_EXPRESSION_LENGTH",
    "TRANSFORM_STEPS",
    "Condition",
    "EvalError",
    "ExprLimits",
    "LimitError",
    "Node",
    "Transform",
    "compile_condition",
    "compile_transform",
    "parse_expression",
    "parse_transform",
]

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


# ------------------------------------------------------------------- bounds
#
# Expressions run on the event loop, so what one evaluation may build is
# bounded: a value that would outgrow a cap fails that datapoint (a
# `LimitError`, a `RouteError` naming the route and the cap). The checks sit
# where values grow (string concatenation, integer multiplication, ``str()``,
# walks over lists and objects), never in the closures of cheap arithmetic and
# comparisons. The operations that copy or build data also charge cost units
# (about one unit per character, byte of integer or item they produce) to the
# evaluation's budget.


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

    __slots__ = ("bits", "budget", "digits", "items", "nesting", "route_id", "string", "used")

    def __init__(self) -> None:
        self.set(DEFAULT_LIMITS, None)

    def set(self, limits: ExprLimits, route_id: str | None) -> None:
        self.bits = limits.max_int_bits
        self.digits = limits.max_int_digits
        self.used = 0
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


def _check_walk(value: Any) -> None:
    """A list or object about to be walked: within the item and nesting caps, charged."""
    m = _METER
    items, nesting = m.items, m.nesting
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        x, depth = stack.pop()
        if depth > nesting:
            raise _over(f"nesting of {depth} levels", "max_nesting", nesting, entry=True)
        children = x.values() if isinstance(x, Mapping) else x
        seen += len(x)
        if seen > items:
            raise _over(f"more than {items} items", "max_items", items, entry=True)
        for child in children:
            if isinstance(child, list | tuple | Mapping):
                stack.append((child, depth + 1))
            elif isinstance(child, str | bytes) and len(child) > m.string:
                raise _over(
                    f"string of {len(child)} characters", "max_string_length", m.string, entry=True
                )
    _charge(seen)


def _metered(fn: _Fn, limits: ExprLimits, route_id: str | None) -> _Fn:
    """Wrap an expression that uses bounded operations: each evaluation starts a fresh meter."""
    start = _METER.set

    def metered(v: Any, dp: Any) -> Any:
        start(limits, route_id)
        return fn(v, dp)

    return metered


# ------------------------------------------------------------------- tokens

# ASCII only: names and numbers of other scripts are not part of the language.
_DIGITS: Final = frozenset("0123456789")
_NAME_START: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_NUMBER_RE: Final = re.compile(
    r"(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?(?P<unit>ms|s|m|h|d)?(?![A-Za-z0-9_])", re.ASCII
)
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_OPERATORS: Final = (
    "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%",
    "(", ")", "[", "]", "{", "}", ",", ":", "|",
)  # fmt: skip
_HINTS: Final = {
    "**": "'**' (power) is not supported",
    "&&": "use 'and' instead of '&&'",
    "||": "use 'or' instead of '||'",
    "!": "use 'not' instead of '!'",
    "=": "use '==' to compare",
    ".": "attribute access is not allowed",
    "//": "'//' is not supported; use round() or int()",
}
_KEYWORDS: Final = frozenset({"and", "or", "not", "in"})
_LITERAL_NAMES: Final = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "num", "str", "name", "op", "end"
    value: Any
    pos: int  # 0-based


class _Source:
    """The text being parsed and how to complain about it."""

    def __init__(self, text: str, kind: str, route_id: str | None) -> None:
        self.text = text
        self.kind = kind
        self.route_id = route_id

    def error(self, message: str, pos: int) -> RouteError:
        return RouteError(
            f"bad {self.kind}: {message}",
            route_id=self.route_id,
            expression=self.text,
            position=pos + 1,
        )


def _tokenize(src: _Source) -> list[_Token]:
    text = src.text
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in _DIGITS or (ch == "." and i + 1 < n and text[i + 1] in _DIGITS):
            m = _NUMBER_RE.match(text, i)
            if m is None:
                raise src.error("malformed number", i)
            tokens.append(_Token("num", _number(src, m, i), i))
            i = m.end()
            continue
        if ch in _NAME_START:
            m = _NAME_RE.match(text, i)
            assert m is not None
            word = m.group()
            if word.startswith("__"):
                raise src.error(f"names starting with '__' are not allowed ({word!r})", i)
            tokens.append(_Token("name", word, i))
            i = m.end()
            continue
        if ch in "'\"":
            value, end = _string(src, i)
            tokens.append(_Token("str", value, i))
            i = end
            continue
        two = text[i : i + 2]
        if two in _HINTS:
            raise src.error(_HINTS[two], i)
        if two in _OPERATORS:
            tokens.append(_Token("op", two, i))
            i += 2
            continue
        if ch in _HINTS:
            raise src.error(_HINTS[ch], i)
        if ch in _OPERATORS:
            tokens.append(_Token("op", ch, i))
            i += 1
            continue
        shown = ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else repr(ch)
        raise src.error(f"unexpected character {shown!r}", i)
    tokens.append(_Token("end", None, n))
    return tokens


def _number(src: _Source, m: re.Match[str], pos: int) -> int | float:
    unit = m.group("unit")
    body = m.group()[: len(m.group()) - len(unit)] if unit else m.group()
    if body.isdigit():
        if len(body) > MAX_INT_DIGITS:
            raise src.error(f"integer literal longer than {MAX_INT_DIGITS} digits", pos)
        value: int | float = int(body)
    else:
        mantissa = body.lower().partition("e")[0]
        if len(mantissa.replace(".", "")) > MAX_INT_DIGITS:
            raise src.error(f"number literal longer than {MAX_INT_DIGITS} digits", pos)
        value = float(body)
        if not math.isfinite(value):
            raise src.error("number literal out of range", pos)
    if unit:
        value = value * _UNITS[unit]
        if not math.isfinite(value):
            raise src.error("duration out of range", pos)
    return value


def _string(src: _Source, start: int) -> tuple[str, int]:
    text = src.text
    quote = text[start]
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= n:
                break
            esc = text[i + 1]
            if esc in _ESCAPES:
                out.append(_ESCAPES[esc])
                i += 2
            elif esc == "u":
                digits = text[i + 2 : i + 6]
                if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise src.error("bad \\u escape (needs 4 hex digits)", i)
                out.append(chr(int(digits, 16)))
                i += 6
            else:
                raise src.error(f"unknown escape '\\{esc}'", i)
        else:
            out.append(ch)
            i += 1
        if len(out) > MAX_STRING_LENGTH:
            raise src.error(f"string literal longer than {MAX_STRING_LENGTH} characters", start)
    raise src.error("unterminated string", start)


# ------------------------------------------------------------- syntax tree


@dataclass(frozen=True, slots=True)
class Node:
    """One node of a parsed expression.

    ``kind`` is one of ``const name unary binary bool compare call list dict
    index``; ``value`` holds the constant, name or operator(s); ``args`` the
    children. `sexpr` renders it for people and tests: ``(+ value (* 2 3))``.
    """

    kind: str
    pos: int
    value: Any = None
    args: tuple[Node, ...] = ()
    #: Where each operator of a ``binary`` chain sits (for error positions).
    op_pos: tuple[int, ...] = ()

    def sexpr(self) -> str:
        """Return the node as an s-expression, e.g. ``(> value 20)``."""
        k = self.kind
        if k == "const":
            return _const_text(self.value)
        if k == "name":
            return str(self.value)
        inner = " ".join(a.sexpr() for a in self.args)
        if k in ("unary", "bool", "call"):
            return f"({self.value} {inner})"
        if k == "binary":
            # value holds the operators between successive args: a + b - c
            parts = [self.args[0].sexpr()]
            for op, arg in zip(self.value, self.args[1:], strict=True):
                parts = [f"({op} {' '.join(parts)} {arg.sexpr()})"]
            return parts[0]
        if k == "compare":
            pairs = [
                f"({op} {a.sexpr()} {b.sexpr()})"
                for op, a, b in zip(self.value, self.args, self.args[1:], strict=False)
            ]
            return pairs[0] if len(pairs) == 1 else f"(and {' '.join(pairs)})"
        if k == "list":
            return f"[{inner}]"
        if k == "dict":
            items = [
                f"{a.sexpr()}: {b.sexpr()}"
                for a, b in zip(self.args[::2], self.args[1::2], strict=True)
            ]
            return "{" + ", ".join(items) + "}"
        if k == "index":
            return f"(index {inner})"
        raise AssertionError(k)  # pragma: no cover


def _const_text(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + " ".join(_const_text(v) for v in value) + "]"
    return repr(value)


class _Parser:
    """Recursive descent over the tokens, precedence from loose to tight.

    ``or`` < ``and`` < ``not`` < comparisons (``== != < <= > >= in, not in``)
    < ``+ -`` < ``* / %`` < unary ``- +`` < primary (literal, name, call,
    parentheses, list, object, indexing).
    """

    def __init__(self, src: _Source, tokens: list[_Token]) -> None:
        self.src = src
        self.tokens = tokens
        self.i = 0
        self.depth = 0
        self.nodes = 0

    # -- helpers

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def at_op(self, *ops: str) -> bool:
        tok = self.tok
        return tok.kind == "op" and tok.value in ops

    def at_word(self, word: str) -> bool:
        tok = self.tok
        return tok.kind == "name" and tok.value == word

    def expect_op(self, op: str) -> _Token:
        if not self.at_op(op):
            raise self.src.error(f"expected '{op}', found {_describe(self.tok)}", self.tok.pos)
        return self.advance()

    def node(
        self,
        kind: str,
        pos: int,
        value: Any = None,
        args: tuple[Node, ...] = (),
        op_pos: tuple[int, ...] = (),
    ) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.src.error(f"expression has more than {MAX_NODES} parts", pos)
        return Node(kind, pos, value, args, op_pos)

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.src.error(f"nested deeper than {MAX_DEPTH} levels", pos)

    def leave(self) -> None:
        self.depth -= 1

    # -- grammar

    def expression(self) -> Node:
        self.enter(self.tok.pos)
        try:
            return self.or_expr()
        finally:
            self.leave()

    def or_expr(self) -> Node:
        first = self.and_expr()
        if not self.at_word("or"):
            return first
        items = [first]
        while self.at_word("or"):
            self.advance()
            items.append(self.and_expr())
        return self.node("bool", first.pos, "or", tuple(items))

    def and_expr(self) -> Node:
        first = self.not_expr()
        if not self.at_word("and"):
            return first
        items = [first]
        while self.at_word("and"):
            self.advance()
            items.append(self.not_expr())
        return self.node("bool", first.pos, "and", tuple(items))

    def not_expr(self) -> Node:
        if self.at_word("not"):
            tok = self.advance()
            self.enter(tok.pos)
            try:
                operand = self.not_expr()
            finally:
                self.leave()
            return self.node("unary", tok.pos, "not", (operand,))
        return self.comparison()

    def comparison(self) -> Node:
        first = self.additive()
        ops: list[str] = []
        args = [first]
        while True:
            tok = self.tok
            if tok.kind == "op" and tok.value in ("==", "!=", "<", "<=", ">", ">="):
                ops.append(self.advance().value)
            elif self.at_word("in"):
                self.advance()
                ops.append("in")
            elif self.at_word("not") and self._next_is_word("in"):
                self.advance()
                self.advance()
                ops.append("not in")
            else:
                break
            args.append(self.additive())
        if not ops:
            return first
        return self.node("compare", first.pos, tuple(ops), tuple(args))

    def _next_is_word(self, word: str) -> bool:
        nxt = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else None
        return nxt is not None and nxt.kind == "name" and nxt.value == word

    def additive(self) -> Node:
        return self._chain(self.term, ("+", "-"))

    def term(self) -> Node:
        return self._chain(self.unary, ("*", "/", "%"))

    def _chain(self, operand: Callable[[], Node], ops: tuple[str, ...]) -> Node:
        # Left-associative chains are kept flat (one node, n operands), so a
        # long ``1+1+1+...`` does not build a tree as deep as it is long.
        first = operand()
        if not self.at_op(*ops):
            return first
        found: list[str] = []
        where: list[int] = []
        args = [first]
        while self.at_op(*ops):
            tok = self.advance()
            found.append(tok.value)
            where.append(tok.pos)
            args.append(operand())
        return self.node("binary", first.pos, tuple(found), tuple(args), tuple(where))

    def unary(self) -> Node:
        if self.at_op("-", "+"):
            tok = self.advance()
            self.enter(tok.pos)
            try:
                operand = self.unary()
            finally:
                self.leave()
            return self.node("unary", tok.pos, tok.value, (operand,))
        return self.postfix()

    def postfix(self) -> Node:
        node = self.primary()
        while self.at_op("["):
            tok = self.advance()
            key = self.expression()
            self.expect_op("]")
            node = self.node("index", tok.pos, None, (node, key))
        return node

    def primary(self) -> Node:
        tok = self.tok
        if tok.kind in ("num", "str"):
            self.advance()
            return self.node("const", tok.pos, tok.value)
        if tok.kind == "name":
            word = tok.value
            if word in _LITERAL_NAMES:
                self.advance()
                return self.node("const", tok.pos, _LITERAL_NAMES[word])
            if word in _KEYWORDS:
                raise self.src.error(f"unexpected '{word}'", tok.pos)
            self.advance()
            if self.at_op("("):
                return self.call(tok)
            return self.node("name", tok.pos, word)
        if self.at_op("("):
            self.advance()
            inner = self.expression()
            self.expect_op(")")
            return inner
        if self.at_op("["):
            return self.list_literal()
        if self.at_op("{"):
            return self.dict_literal()
        raise self.src.error(f"unexpected {_describe(tok)}", tok.pos)

    def call(self, name: _Token) -> Node:
        self.advance()  # (
        args: list[Node] = []
        if not self.at_op(")"):
            while True:
                args.append(self.expression())
                if len(args) > MAX_COLLECTION_ITEMS:
                    raise self.src.error("too many arguments", name.pos)
                if not self.at_op(","):
                    break
                self.advance()
        self.expect_op(")")
        return self.node("call", name.pos, name.value, tuple(args))

    def list_literal(self) -> Node:
        start = self.advance()
        items: list[Node] = []
        while not self.at_op("]"):
            items.append(self.expression())
            if len(items) > MAX_COLLECTION_ITEMS:
                raise self.src.error(f"list longer than {MAX_COLLECTION_ITEMS} items", start.pos)
            if not self.at_op(","):
                break
            self.advance()
        self.expect_op("]")
        return self.node("list", start.pos, None, tuple(items))

    def dict_literal(self) -> Node:
        start = self.advance()
        items: list[Node] = []
        while not self.at_op("}"):
            items.append(self.expression())
            self.expect_op(":")
            items.append(self.expression())
            if len(items) > 2 * MAX_COLLECTION_ITEMS:
                raise self.src.error(
                    f"object with more than {MAX_COLLECTION_ITEMS} entries", start.pos
                )
            if not self.at_op(","):
                break
            self.advance()
        self.expect_op("}")
        return self.node("dict", start.pos, None, tuple(items))


def _describe(tok: _Token) -> str:
    if tok.kind == "end":
        return "end of input"
    if tok.kind == "str":
        return "string"
    if tok.kind == "num":
        return f"number {tok.value!r}"
    return f"'{tok.value}'"


def _start(text: Any, kind: str, route_id: str | None) -> tuple[_Source, list[_Token]]:
    if not isinstance(text, str):
        raise RouteError(
            f"bad {kind}: must be a string, got {type(text).__name__}", route_id=route_id
        )
    src = _Source(text, kind, route_id)
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise src.error(f"longer than {MAX_EXPRESSION_LENGTH} characters", MAX_EXPRESSION_LENGTH)
    if not text.strip():
        raise src.error("is empty", 0)
    return src, _tokenize(src)


def parse_expression(text: str, *, route_id: str | None = None, kind: str = "condition") -> Node:
    """Parse an expression into its syntax tree.

    Raises:
        RouteError: for any syntax problem, naming the position.
    """
    src, tokens = _start(text, kind, route_id)
    parser = _Parser(src, tokens)
    node = parser.expression()
    if parser.tok.kind != "end":
        raise src.error(f"unexpected {_describe(parser.tok)}", parser.tok.pos)
    return node


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    pos: int
    args: tuple[Node, ...]


def parse_transform(text: str, *, route_id: str | None = None) -> list[tuple[str, list[Node]]]:
    """Parse a transform chain into ``[(step name, [argument nodes]), ...]``.

    Raises:
        RouteError: for any syntax problem or an unknown step, naming the position.
    """
    _, steps = _parse_steps(text, route_id)
    return [(s.name, list(s.args)) for s in steps]


def _parse_steps(text: str, route_id: str | None) -> tuple[_Source, list[_Step]]:
    src, tokens = _start(text, "transform", route_id)
    parser = _Parser(src, tokens)
    steps: list[_Step] = []
    while True:
        tok = parser.tok
        if tok.kind != "name":
            raise src.error(f"expected a transform step, found {_describe(tok)}", tok.pos)
        if tok.value not in TRANSFORM_STEPS:
            known = ", ".join(sorted(TRANSFORM_STEPS))
            hint = " (for an expression write expr(...))" if tok.value in CONDITION_NAMES else ""
            raise src.error(f"unknown transform {tok.value!r}{hint}; known: {known}", tok.pos)
        parser.advance()
        if not parser.at_op("("):
            raise src.error(f"expected '(' after {tok.value!r}", parser.tok.pos)
        call = parser.call(tok)
        steps.append(_Step(tok.value, tok.pos, call.args))
        if len(steps) > MAX_STEPS:
            raise src.error(f"more than {MAX_STEPS} steps", tok.pos)
        if parser.at_op("|"):
            parser.advance()
            continue
        if parser.tok.kind != "end":
            raise src.error(
                f"expected '|' or the end, found {_describe(parser.tok)}", parser.tok.pos
            )
        return src, steps


# ----------------------------------------------------------------- runtime
#
# The helpers below are the language's semantics. Each compiled closure tries
# the plain Python operation on the common types first and falls back to
# these only when the types differ, so a number compared with a number costs
# one operation.

_NUMERIC_TEXT: Final = re.compile(
    r"\s*[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)\s*", re.ASCII
)
_INT_TEXT: Final = re.compile(r"\s*[+-]?\d+\s*", re.ASCII)
_BOOL_TEXT: Final = {"true": True, "false": False}


def _text_number(text: str) -> int | float | None:
    if len(text) > _MAX_NUMERIC_TEXT or not _NUMERIC_TEXT.fullmatch(text):
        return None
    return int(text) if _INT_TEXT.fullmatch(text) else float(text)


def to_number(value: Any) -> int | float:
    """Return ``value`` as a number (numbers, booleans and numeric strings).

    Raises:
        EvalError: for anything else.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        number = _text_number(value)
        if number is not None:
            return number
        raise EvalError(f"not a number: {_short(value)}")
    raise EvalError(f"not a number: {type(value).__name__}")


def _short(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > _TEXT_BITS:
        return f"<integer of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)


def _loose(a: Any, b: Any) -> tuple[Any, Any]:
    """Bring a number/numeric-string or bool/"true"-string pair to one type."""
    if isinstance(a, str) and not isinstance(b, str):
        if isinstance(b, bool):
            flag = _BOOL_TEXT.get(a.strip().lower())
            return (flag, b) if flag is not None else (a, b)
        if _is_number(b):
            number = _text_number(a)
            return (number, b) if number is not None else (a, b)
    elif isinstance(b, str) and not isinstance(a, str):
        b2, a2 = _loose(b, a)
        return a2, b2
    return a, b


def loose_equal(a: Any, b: Any) -> bool:
    """Equality of the language: ``"21.5" == 21.5`` and ``"true" == true`` hold."""
    if type(a) is type(b):
        return bool(a == b)
    a, b = _loose(a, b)
    return bool(a == b)


def _order(op: Callable[[Any, Any], bool], a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    a2, b2 = _loose(a, b)
    try:
        return op(a2, b2)
    except TypeError:
        raise EvalError(f"cannot compare {type(a).__name__} with {type(b).__name__}") from None


def _contains(item: Any, container: Any, walk: bool = True) -> bool:
    # ``walk``: the container may be any size (not a constant of the expression).
    if isinstance(container, str):
        if not isinstance(item, str):
            item = _plain_str(item)
        return item in container
    if isinstance(container, Mapping):
        if item in container:
            return True
        if walk:
            _check_walk(container)
        return any(loose_equal(item, k) for k in container)
    if isinstance(container, list | tuple | set | frozenset):
        if walk and not isinstance(container, set | frozenset):
            _check_walk(container)
        return any(loose_equal(item, x) for x in container)
    raise EvalError(f"'in' needs a string, list or object, got {type(container).__name__}")


def _plain_str(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        _check_int(value, entry=True)
    elif isinstance(value, list | tuple | Mapping):
        _check_walk(value)
    elif isinstance(value, str | bytes | bytearray) and len(value) > _METER.string:
        raise _over(
            f"string of {len(value)} characters", "max_string_length", _METER.string, entry=True
        )
    text = str(value)
    if len(text) > _METER.string:
        raise _over(f"text of {len(text)} characters", "max_string_length", _METER.string)
    _charge(len(text))
    return text


def _check_int(x: int, *, entry: bool = False) -> int:
    """An integer within the digit cap (``entry``: it came in that way), else `LimitError`."""
    bits = x.bit_length()
    if bits > _METER.bits:
        digits = int(bits * _LOG10_2) + 1
        raise _over(
            f"integer of about {digits} digits", "max_int_digits", _METER.digits, entry=entry
        )
    return x


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, str) and isinstance(b, str):
        _check_text(a, b)
        return a + b
    try:
        x = to_number(a) + to_number(b)
    except OverflowError:
        raise EvalError("number too large") from None
    return _check_int(x) if x.__class__ is int else x


def _sub(a: Any, b: Any) -> Any:
    try:
        x = to_number(a) - to_number(b)
    except OverflowError:
        raise EvalError("number too large") from None
    return _check_int(x) if x.__class__ is int else x


def _mul(a: Any, b: Any) -> Any:
    # Numbers only: "x" * 10**9 would be a gigabyte of text.
    x, y = to_number(a), to_number(b)
    if x.__class__ is int and y.__class__ is int:
        # Checked before multiplying: a product's bits are about the sum of its factors'.
        bits = x.bit_length() + y.bit_length()
        if bits > _METER.bits:
            _check_int(x, entry=True)
            _check_int(y, entry=True)
            digits = int(bits * _LOG10_2) + 1
            raise _over(f"integer of about {digits} digits", "max_int_digits", _METER.digits)
    try:
        return x * y
    except OverflowError:
        raise EvalError("number too large") from None


def _div(a: Any, b: Any) -> Any:
    try:
        return to_number(a) / to_number(b)
    except ZeroDivisionError:
        raise EvalError("division by zero") from None
    except OverflowError:
        raise EvalError("number too large") from None


def _mod(a: Any, b: Any) -> Any:
    # Numbers only: "%s" % x would be string formatting.
    try:
        return to_number(a) % to_number(b)
    except ZeroDivisionError:
        raise EvalError("modulo by zero") from None


_BINARY: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "+": _add,
    "-": _sub,
    "*": _mul,
    "/": _div,
    "%": _mod,
}
_ORDER_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "==":
        return loose_equal(a, b)
    if op == "!=":
        return not loose_equal(a, b)
    if op == "in":
        return _contains(a, b)
    if op == "not in":
        return not _contains(a, b)
    fn = _ORDER_OPS[op]
    if type(a) is type(b) and a is not None:
        try:
            return fn(a, b)
        except TypeError:
            raise EvalError(f"cannot order {type(a).__name__} values") from None
    return _order(fn, a, b)


def _index(obj: Any, key: Any) -> Any:
    if isinstance(obj, Mapping):
        try:
            return obj[key]
        except KeyError:
            pass
        except TypeError:
            raise EvalError(f"bad key {_short(key)}") from None
        if isinstance(key, str):
            number = _text_number(key)
            if number is not None and number in obj:
                return obj[number]
        elif _is_number(key) and _printable(key) and str(key) in obj:
            return obj[str(key)]
        raise EvalError(f"no key {_short(key)}")
    if isinstance(obj, list | tuple | str):
        if isinstance(key, bool) or not isinstance(key, int):
            raise EvalError(f"index must be an integer, got {type(key).__name__}")
        try:
            return obj[key]
        except IndexError:
            raise EvalError(f"index {key} out of range") from None
    raise EvalError(f"cannot index {type(obj).__name__}")


def _printable(x: Any) -> bool:
    """True unless ``x`` is an integer too long to turn into text."""
    return not isinstance(x, int) or x.bit_length() <= _TEXT_BITS


def _fn_round(x: Any, n: Any = None) -> Any:
    x = to_number(x)
    if n is None:
        try:
            return round(x)
        except (OverflowError, ValueError):
            raise EvalError("cannot round a non-finite number") from None
    if isinstance(n, bool) or not isinstance(n, int) or not -15 <= n <= 15:
        raise EvalError("round() digits must be an integer between -15 and 15")
    return round(x, n)


def _fn_int(x: Any) -> int:
    try:
        return int(to_number(x))
    except (OverflowError, ValueError):
        raise EvalError("cannot convert a non-finite number to an integer") from None


def _fn_float(x: Any) -> float:
    try:
        return float(to_number(x))
    except OverflowError:
        raise EvalError("number too large for a float") from None


def _fn_bool(x: Any) -> bool:
    if isinstance(x, str):
        flag = _BOOL_TEXT.get(x.strip().lower())
        if flag is not None:
            return flag
        number = _text_number(x)
        if number is not None:
            return bool(number)
    return bool(x)


def _fn_len(x: Any) -> int:
    if isinstance(x, str | list | tuple | Mapping):
        return len(x)
    raise EvalError(f"len() of {type(x).__name__}")


def _many(args: tuple[Any, ...], name: str) -> list[Any]:
    if len(args) == 1 and isinstance(args[0], list | tuple):
        _check_walk(args[0])
        items = list(args[0])
    else:
        items = list(args)
    if not items:
        raise EvalError(f"{name}() of nothing")
    return [to_number(x) for x in items]


def _fn_min(*args: Any) -> Any:
    return min(_many(args, "min"))


def _fn_max(*args: Any) -> Any:
    return max(_many(args, "max"))


def _fn_abs(x: Any) -> Any:
    return abs(to_number(x))


#: The functions expressions may call: name -> (function, least args, most args).
_FUNCTIONS: Final[dict[str, tuple[Callable[..., Any], int, int]]] = {
    "abs": (_fn_abs, 1, 1),
    "bool": (_fn_bool, 1, 1),
    "float": (_fn_float, 1, 1),
    "int": (_fn_int, 1, 1),
    "len": (_fn_len, 1, 1),
    "max": (_fn_max, 1, MAX_COLLECTION_ITEMS),
    "min": (_fn_min, 1, MAX_COLLECTION_ITEMS),
    "num": (to_number, 1, 1),
    "round": (_fn_round, 1, 2),
    "str": (_plain_str, 1, 1),
}


def _truthy(value: Any) -> bool:
    return bool(value)


# ---------------------------------------------------------------- compiler

#: What conditions (and ``expr()``) may name; ``value`` is the datapoint's
#: value (in a transform: the value so far), the rest are read off the datapoint.
CONDITION_NAMES: Final = ("value", "quality", "source", "tag", "ts", "address", "metadata")
_DP_INDEX: Final = {"address": 0, "ts": 2, "quality": 3, "source": 4, "metadata": 5}

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


def _is_value(node: Node) -> bool:
    return node.kind == "name" and node.value == "value"


class _Compiler:
    def __init__(self, src: _Source, limits: ExprLimits = DEFAULT_LIMITS) -> None:
        self.src = src
        self.limits = limits
        #: True once a closure uses a bounded operation (the result needs `_metered`).
        self.metered = False
        #: Variable operands joined by + or * so far (compared with ``max_terms``).
        self.terms = 0
        _METER.set(limits, src.route_id)  # constant folding is bounded too

    def fail(self, message: str, where: Node | int) -> RouteError:
        return self.src.error(message, where if isinstance(where, int) else where.pos)

    def fold(self, where: Node | int, fn: Callable[[], Any]) -> _Const:
        try:
            return _Const(fn())
        except EvalError as exc:
            raise self.fail(str(exc), where) from None
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise self.fail(f"{type(exc).__name__}: {exc}", where) from None

    def compile(self, node: Node) -> _Compiled:
        method: Callable[[Node], _Compiled] = getattr(self, "c_" + node.kind)
        return method(node)

    def constant(self, node: Node, what: str) -> Any:
        c = self.compile(node)
        if not isinstance(c, _Const):
            raise self.fail(f"{what} must be a constant", node)
        return c.value

    # -- leaves

    def c_const(self, node: Node) -> _Compiled:
        return _Const(node.value)

    def c_name(self, node: Node) -> _Compiled:
        name = node.value
        if name == "value":
            return _VALUE_FN
        if name == "tag":
            return _tag_of
        index = _DP_INDEX.get(name)
        if index is None:
            if name in _FUNCTIONS:
                raise self.fail(f"{name!r} is a function: call it as {name}(...)", node)
            known = ", ".join(CONDITION_NAMES)
            raise self.fail(f"unknown name {name!r} (known: {known})", node)
        return lambda v, dp: dp[index]

    def c_list(self, node: Node) -> _Compiled:
        items = [self.compile(a) for a in node.args]
        if all(isinstance(i, _Const) for i in items):
            return _Const(tuple(i.value for i in items))  # type: ignore[union-attr]
        fns = [_fn(i) for i in items]
        return lambda v, dp: [f(v, dp) for f in fns]

    def c_dict(self, node: Node) -> _Compiled:
        keys = [self.compile(a) for a in node.args[::2]]
        values = [self.compile(a) for a in node.args[1::2]]
        if all(isinstance(k, _Const) for k in keys) and all(isinstance(x, _Const) for x in values):
            out: dict[Any, Any] = {}
            for knode, k, x in zip(node.args[::2], keys, values, strict=True):
                key = k.value  # type: ignore[union-attr]
                if key is not None and not isinstance(key, str | int | float):
                    raise self.fail("object keys must be strings, numbers, booleans or null", knode)
                if key in out:
                    raise self.fail(f"duplicate key {_const_text(key)}", knode)
                out[key] = x.value  # type: ignore[union-attr]
            return _Const(out)
        raise self.fail("object literals must be constant", node)

    # -- operators

    def c_unary(self, node: Node) -> _Compiled:
        op = node.value
        inner = self.compile(node.args[0])
        if op == "not":
            if isinstance(inner, _Const):
                return self.fold(node, lambda: not _truthy(inner.value))
            f = inner
            return lambda v, dp: not f(v, dp)
        if op == "+":
            if isinstance(inner, _Const):
                return self.fold(node, lambda: to_number(inner.value))
            f = inner
            return lambda v, dp: to_number(f(v, dp))
        if isinstance(inner, _Const):
            return self.fold(node, lambda: -to_number(inner.value))
        f = inner

        def neg(v: Any, dp: Any) -> Any:
            x = f(v, dp)
            t = type(x)
            if t is int or t is float:
                return -x
            return -to_number(x)

        return neg

    def c_binary(self, node: Node) -> _Compiled:
        parts = [self.compile(a) for a in node.args]
        if "+" in node.value or "*" in node.value:
            self.terms += sum(not isinstance(p, _Const) for p in parts)
            cap = self.limits.max_terms
            if self.terms > cap:
                raise self.fail(
                    f"{self.terms} variable terms joined by + or * (the cap is max_terms={cap}; "
                    "each may be a copy of the input)",
                    node,
                )
        acc = parts[0]
        for op, pos, part in zip(node.value, node.op_pos, parts[1:], strict=True):
            acc = self.binary(pos, op, acc, part)
        return acc

    def binary(self, pos: int, op: str, left: _Compiled, right: _Compiled) -> _Compiled:
        slow = _BINARY[op]
        if isinstance(left, _Const) and isinstance(right, _Const):
            a, b = left.value, right.value
            return self.fold(pos, lambda: slow(a, b))
        if isinstance(right, _Const) and _is_number(right.value):
            if op in ("/", "%") and right.value == 0:
                raise self.fail("division by zero", pos)
            return _binary_const(op, _fn(left), right.value)
        lf, rf = _fn(left), _fn(right)
        self.metered = True

        def binop(v: Any, dp: Any) -> Any:
            return slow(lf(v, dp), rf(v, dp))

        return binop

    def c_bool(self, node: Node) -> _Compiled:
        parts = [self.compile(a) for a in node.args]
        if all(isinstance(p, _Const) for p in parts):
            values = [p.value for p in parts]  # type: ignore[union-attr]
            if node.value == "and":
                return self.fold(node, lambda: _fold_and(values))
            return self.fold(node, lambda: _fold_or(values))
        fns = tuple(_fn(p) for p in parts)
        if node.value == "and":
            if len(fns) == 2:
                f1, f2 = fns
                return lambda v, dp: f1(v, dp) and f2(v, dp)

            def all_of(v: Any, dp: Any) -> Any:
                result: Any = True
                for f in fns:
                    result = f(v, dp)
                    if not result:
                        return result
                return result

            return all_of
        if len(fns) == 2:
            f1, f2 = fns
            return lambda v, dp: f1(v, dp) or f2(v, dp)

        def any_of(v: Any, dp: Any) -> Any:
            result: Any = False
            for f in fns:
                result = f(v, dp)
                if result:
                    return result
            return result

        return any_of

    def c_compare(self, node: Node) -> _Compiled:
        parts = [self.compile(a) for a in node.args]
        ops: tuple[str, ...] = node.value
        for op, right in zip(ops, parts[1:], strict=True):
            # ``in`` walks or converts its operands unless the container is a
            # constant list or object (those are bounded at parse time).
            if op in ("in", "not in") and not (
                isinstance(right, _Const) and isinstance(right.value, tuple | dict)
            ):
                self.metered = True
        if all(isinstance(p, _Const) for p in parts):
            values = [p.value for p in parts]  # type: ignore[union-attr]
            return self.fold(
                node,
                lambda: all(
                    _compare(op, a, b) for op, a, b in zip(ops, values, values[1:], strict=False)
                ),
            )
        if len(ops) == 1:
            return _compare_pair(ops[0], parts[0], parts[1])
        pairs = [
            _fn(_compare_pair(op, a, b)) for op, a, b in zip(ops, parts, parts[1:], strict=False)
        ]

        def chained(v: Any, dp: Any) -> bool:
            # a < b < c evaluates b twice; names and constants make that harmless.
            return all(p(v, dp) for p in pairs)

        return chained

    def c_index(self, node: Node) -> _Compiled:
        obj = self.compile(node.args[0])
        key = self.compile(node.args[1])
        if isinstance(obj, _Const) and isinstance(key, _Const):
            o, k = obj.value, key.value
            return self.fold(node, lambda: _index(o, k))
        of = _fn(obj)
        if isinstance(key, _Const):
            kv = key.value
            return lambda v, dp: _index(of(v, dp), kv)
        kf = key
        return lambda v, dp: _index(of(v, dp), kf(v, dp))

    def c_call(self, node: Node) -> _Compiled:
        name = node.value
        spec = _FUNCTIONS.get(name)
        if spec is None:
            if name in TRANSFORM_STEPS:
                raise self.fail(f"{name}() is a transform step, not a function", node)
            known = ", ".join(sorted(_FUNCTIONS))
            raise self.fail(f"unknown function {name!r} (known: {known})", node)
        fn, least, most = spec
        n = len(node.args)
        if not least <= n <= most:
            want = str(least) if least == most else f"{least} to {most}"
            raise self.fail(f"{name}() takes {want} argument(s), got {n}", node)
        args = [self.compile(a) for a in node.args]
        if all(isinstance(a, _Const) for a in args):
            values = [a.value for a in args]  # type: ignore[union-attr]
            return self.fold(node, lambda: fn(*values))
        fns = [_fn(a) for a in args]
        self.metered = True
        if len(fns) == 1:
            f1 = fns[0]
            return lambda v, dp: fn(f1(v, dp))
        return lambda v, dp: fn(*[f(v, dp) for f in fns])


def _fold_and(values: list[Any]) -> Any:
    result: Any = True
    for x in values:
        result = x
        if not x:
            return x
    return result


def _fold_or(values: list[Any]) -> Any:
    result: Any = False
    for x in values:
        result = x
        if x:
            return x
    return result


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


def compile_condition(
    text: str, *, route_id: str | None = None, limits: ExprLimits | None = None
) -> Condition:
    """Compile a condition to ``condition(value, datapoint) -> truthy``.

    The closure raises `EvalError` (or another ``Exception``) when one
    evaluation cannot be done, `LimitError` when it would go over one of
    ``limits`` (default `DEFAULT_LIMITS`); the router counts that as a route error.

    Raises:
        RouteError: for a syntax error, an unknown name or function, or a
            constant part that cannot be evaluated (``1/0``), naming the
            expression and the 1-based position. Never anything else.
    """
    node = parse_expression(text, route_id=route_id, kind="condition")
    src = _Source(text, "condition", route_id)
    compiler = _Compiler(src, limits or DEFAULT_LIMITS)
    fn = _finish(compiler.compile(node))
    return _metered(fn, compiler.limits, route_id) if compiler.metered else fn


def _finish(c: _Compiled) -> _Fn:
    if isinstance(c, _Const):
        k = c.value
        return lambda v, dp: k
    return c


# --------------------------------------------------------- transform steps


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


#: The transform steps: name -> what it does (for docs and error messages).
TRANSFORM_STEPS: Final = {
    "scale": "scale(k): value * k",
    "offset": "offset(k): value + k",
    "round": "round(n=0): round to n digits",
    "clamp": "clamp(lo, hi): keep within lo..hi",
    "invert": "invert(): logical not (true<->false, 0<->1)",
    "map": "map({from: to, ...}[, default]): look the value up",
    "deadband": "deadband(d): pass only when it moved by d or more since the last pass",
    "throttle": "throttle(period): pass at most one value per period",
    "expr": "expr(expression): any expression of the condition language",
    "avg": "avg(window): mean over the last window (e.g. 60s)",
    "min": "min(window): least value over the last window",
    "max": "max(window): greatest value over the last window",
    "sum": "sum(window): sum over the last window",
    "count": "count(window): values received in the last window",
}


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


def iter_names(node: Node) -> Iterator[str]:
    """Yield every name an expression reads (for tools and tests)."""
    if node.kind == "name":
        yield node.value
    for child in node.args:
        yield from iter_names(child)
