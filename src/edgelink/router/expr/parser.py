"""The parser: tokens to a syntax tree of `Node`s, and transform chains to steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from edgelink.router.expr.lexer import _describe, _Source, _start, _Token
from edgelink.router.expr.limits import MAX_COLLECTION_ITEMS, MAX_DEPTH, MAX_NODES, MAX_STEPS
from edgelink.router.expr.semantics import CONDITION_NAMES, TRANSFORM_STEPS

_KEYWORDS: Final = frozenset({"and", "or", "not", "in"})
_LITERAL_NAMES: Final = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}


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


def iter_names(node: Node) -> Iterator[str]:
    """Yield every name an expression reads (for tools and tests)."""
    if node.kind == "name":
        yield node.value
    for child in node.args:
        yield from iter_names(child)
