"""The lexer: expression text to tokens, and where a syntax error points."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

from edgelink.errors import RouteError
from edgelink.router.expr.limits import MAX_EXPRESSION_LENGTH, MAX_INT_DIGITS, MAX_STRING_LENGTH

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
