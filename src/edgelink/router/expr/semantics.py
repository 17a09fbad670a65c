"""The language's semantics: names, the whitelist of functions and steps, the operations.

Each compiled closure tries the plain Python operation on the common types
first and falls back to the helpers here only when the types differ, so a
number compared with a number costs one operation.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from edgelink.router.expr.base import EvalError
from edgelink.router.expr.limits import (
    _LOG10_2,
    _MAX_NUMERIC_TEXT,
    _METER,
    _TEXT_BITS,
    MAX_COLLECTION_ITEMS,
    _charge,
    _check_int,
    _check_text,
    _check_walk,
    _over,
)

#: What conditions (and ``expr()``) may name; ``value`` is the datapoint's
#: value (in a transform: the value so far), the rest are read off the datapoint.
CONDITION_NAMES: Final = ("value", "quality", "source", "tag", "ts", "address", "metadata")
_DP_INDEX: Final = {"address": 0, "ts": 2, "quality": 3, "source": 4, "metadata": 5}


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
    "set": 'set(path, expression): a copy of the object value with one field set ("a.b", ["a", 0])',
    "delete": "delete(path): a copy of the object value without one field",
    "avg": "avg(window): mean over the last window (e.g. 60s)",
    "min": "min(window): least value over the last window",
    "max": "max(window): greatest value over the last window",
    "sum": "sum(window): sum over the last window",
    "count": "count(window): values received in the last window",
}


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
