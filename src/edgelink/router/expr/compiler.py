"""The compiler: a syntax tree to one closure, constants folded, fast paths chosen."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from edgelink.errors import RouteError
from edgelink.router.expr.base import Condition, EvalError, _Compiled, _Const, _Fn, _fn
from edgelink.router.expr.fastpaths import _VALUE_FN, _binary_const, _compare_pair, _tag_of
from edgelink.router.expr.lexer import _Source
from edgelink.router.expr.limits import (
    _CONTAINERS,
    _FLAT_TYPES,
    _METER,
    DEFAULT_LIMITS,
    ExprLimits,
    _check_built,
    _check_walk,
    _metered,
)
from edgelink.router.expr.parser import Node, _const_text, parse_expression
from edgelink.router.expr.semantics import (
    _BINARY,
    _DP_INDEX,
    _FUNCTIONS,
    CONDITION_NAMES,
    TRANSFORM_STEPS,
    _compare,
    _index,
    _is_number,
    _truthy,
    to_number,
)


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
            values = tuple(i.value for i in items)  # type: ignore[union-attr]
            return self.fold(node, lambda: _sized(values))
        self.static_size(node, items)
        fns = tuple(_fn(i) for i in items)
        nested = tuple(
            j
            for j, (a, i) in enumerate(zip(node.args, items, strict=True))
            if not isinstance(i, _Const) and not _flat(a)
        )
        if not nested:
            if len(fns) == 1:
                f1 = fns[0]
                return lambda v, dp: [f1(v, dp)]
            return lambda v, dp: [f(v, dp) for f in fns]
        self.metered = True

        def build_list(v: Any, dp: Any) -> list[Any]:
            out = [f(v, dp) for f in fns]
            for j in nested:
                x = out[j]
                if x.__class__ not in _FLAT_TYPES and isinstance(x, _CONTAINERS):
                    _check_built(out, out)
                    break
            return out

        return build_list

    def c_dict(self, node: Node) -> _Compiled:
        key_nodes, value_nodes = node.args[::2], node.args[1::2]
        fixed: dict[Any, Any] = {}  # the constant entries, in the order written
        for knode in key_nodes:
            key = self.compile(knode)
            if not isinstance(key, _Const):
                raise self.fail("object keys must be constants (the values may be computed)", knode)
            k = key.value
            if k is not None and not isinstance(k, str | int | float):
                raise self.fail("object keys must be strings, numbers, booleans or null", knode)
            if k in fixed:
                raise self.fail(f"duplicate key {_const_text(k)}", knode)
            fixed[k] = None
        keys = tuple(fixed)
        values = [self.compile(a) for a in value_nodes]
        if all(isinstance(x, _Const) for x in values):
            out = {k: x.value for k, x in zip(keys, values, strict=True)}  # type: ignore[union-attr]
            return self.fold(node, lambda: _sized(out))
        self.static_size(node, values)
        for k, x in zip(keys, values, strict=True):
            fixed[k] = x.value if isinstance(x, _Const) else None
        # Every computed entry is set on a copy of the constant ones (which keeps
        # the written order): a dict copy and one store per computed value.
        flat = tuple(
            (k, x)
            for k, x, n in zip(keys, values, value_nodes, strict=True)
            if not isinstance(x, _Const) and _flat(n)
        )
        nested = tuple(
            (k, x)
            for k, x, n in zip(keys, values, value_nodes, strict=True)
            if not isinstance(x, _Const) and not _flat(n)
        )
        template = fixed
        if not nested:
            if len(flat) == 1:
                ((k1, f1),) = flat
                if len(template) == 1:
                    return lambda v, dp: {k1: f1(v, dp)}

                def build_one(v: Any, dp: Any) -> dict[Any, Any]:
                    out = template.copy()
                    out[k1] = f1(v, dp)
                    return out

                return build_one

            def build_flat(v: Any, dp: Any) -> dict[Any, Any]:
                out = template.copy()
                for k, f in flat:
                    out[k] = f(v, dp)
                return out

            return build_flat
        self.metered = True

        def build_dict(v: Any, dp: Any) -> dict[Any, Any]:
            out = template.copy()
            for k, f in flat:
                out[k] = f(v, dp)
            grown = False
            for k, f in nested:
                x = out[k] = f(v, dp)
                if x.__class__ not in _FLAT_TYPES and isinstance(x, _CONTAINERS):
                    grown = True
            if grown:
                _check_built(out, out.values())
            return out

        return build_dict

    def static_size(self, node: Node, parts: list[_Compiled]) -> None:
        """Refuse at load a computed literal whose own items and constants are over the caps."""
        known = [p.value if isinstance(p, _Const) else None for p in parts]
        self.fold(node, lambda: _check_walk(known, entry=False))

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
            return _index_const(of, key.value)
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


#: Functions whose result is never a list or an object: all of them today (a
#: function that returns one must be left out here, or its results go unchecked).
_FLAT_CALLS: Final = frozenset(_FUNCTIONS)
#: Names whose value may be a list or an object.
_NESTED_NAMES: Final = frozenset({"value", "metadata"})


def _index_const(of: _Fn, k: Any) -> _Fn:
    """``x[k]`` of a constant key: a plain lookup when ``x`` is a dict that has ``k``.

    Anything else (a list, a missing key, ``"1"`` for ``1``) takes `_index`,
    which tries the plain lookup first too, so the result is the same.
    """
    try:
        hash(k)
    except TypeError:
        return lambda v, dp: _index(of(v, dp), k)
    if of is _VALUE_FN:

        def value_key(v: Any, dp: Any) -> Any:
            if v.__class__ is dict:
                try:
                    return v[k]
                except KeyError:
                    pass
            return _index(v, k)

        return value_key

    def key_of(v: Any, dp: Any) -> Any:
        x = of(v, dp)
        if x.__class__ is dict:
            try:
                return x[k]
            except KeyError:
                pass
        return _index(x, k)

    return key_of


def _flat(node: Node) -> bool:
    """True if ``node`` never evaluates to a list or an object (numbers, text, flags, null).

    What may hold a list or an object (``value``, ``metadata``, indexing,
    ``and``/``or`` of such, a list or object literal) is checked at run time
    when it is put into a list or object the expression builds.
    """
    kind = node.kind
    if kind == "const":
        return not isinstance(node.value, tuple | dict)
    if kind in ("binary", "unary", "compare"):
        return True
    if kind == "call":
        return node.value in _FLAT_CALLS
    if kind == "name":
        return node.value not in _NESTED_NAMES
    if kind == "bool":
        return all(_flat(a) for a in node.args)
    return False


def _sized(value: Any) -> Any:
    """A constant list or object, within ``max_items`` and ``max_nesting`` (at load)."""
    _check_walk(value, entry=False)
    return value


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
