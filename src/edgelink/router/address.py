"""Addresses, address patterns, and the compiled index that matches them.

An address is ``<endpoint>.<tag>``: ``plc_1.MAIN.temperature``,
``bt.bms_001.voltage``, ``mqtt.broker_local.alarms/critical``. Dots separate
*segments*; inside a segment, ``/`` separates MQTT-style *levels*. Endpoint
ids may contain dots, so `resolve_endpoint` takes the longest registered id
that prefixes an address.

A route's ``from`` is a pattern:

==========  =====================================================
``*``       exactly one segment (``plc_1.*.temp``)
``**``      any number of segments, also none (``plc_1.**``)
``+``       exactly one level (``broker_in.bench/in/+``)
``#``       the rest, also nothing (``broker_in.alarms/#``); last only
==========  =====================================================

Each wildcard captures what it matched; a route's ``to`` reuses the captures
as ``{1}``, ``{2}``, ... (`Template`). `PatternIndex` is a trie over levels:
a lookup costs one dict probe per level plus the wildcard branches actually
present, however many patterns it holds.

Example:
    >>> index = PatternIndex()
    >>> index.add(parse_pattern("broker_in.bench/in/+"), "r1")
    >>> index.match("broker_in.bench/in/42")
    [('r1', ('42',))]
"""

from __future__ import annotations

import re
import sys
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from edgelink.errors import RouteError

__all__ = [
    "Pattern",
    "PatternIndex",
    "Template",
    "parse_pattern",
    "parse_template",
    "resolve_endpoint",
    "split_levels",
]

V = TypeVar("V")

#: Longest address or pattern accepted.
MAX_ADDRESS_LENGTH: Final = 1024

_LITERAL, _STAR, _DSTAR, _PLUS, _HASH = range(5)


def split_levels(address: str) -> tuple[list[str], list[int]]:
    """Split an address into level tokens, each with its separator in front.

    Every segment's first level gets a ``.`` (the very first one too), the
    others a ``/``: ``a.b/c`` -> ``[".a", ".b", "/c"]``. Also returns where
    each token's separator sits in the address (-1 for the first).
    """
    tokens: list[str] = []
    starts: list[int] = []
    pos = -1
    for segment in address.split("."):
        sep = "."
        for level in segment.split("/"):
            tokens.append(sep + level)
            starts.append(pos)
            pos += 1 + len(level)
            sep = "/"
    return tokens, starts


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed ``from`` pattern.

    Attributes:
        text: As written.
        tokens: Level tokens with their separators (see `split_levels`).
        kinds: What each token is: literal or one of the wildcards.
        wildcards: How many captures a match yields.
    """

    text: str
    tokens: tuple[str, ...]
    kinds: tuple[int, ...]
    wildcards: int

    @property
    def is_exact(self) -> bool:
        """True if the pattern has no wildcard: it matches only its own text."""
        return self.wildcards == 0


def _check_address_text(text: str, what: str) -> None:
    if not isinstance(text, str) or not text:
        raise RouteError(f"{what} must be a non-empty string")
    if len(text) > MAX_ADDRESS_LENGTH:
        raise RouteError(f"{what} is longer than {MAX_ADDRESS_LENGTH} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise RouteError(f"{what} must not contain whitespace or control characters")
    if "" in text.split("."):
        raise RouteError(f"{what} must not start or end with '.' or contain '..'")


def parse_pattern(text: str) -> Pattern:
    """Parse a ``from`` pattern.

    Raises:
        RouteError: for an empty segment, whitespace, ``*`` that is not a whole
            segment, ``#`` that is not last, or an overlong pattern.
    """
    _check_address_text(text, "an address pattern")
    tokens, _ = split_levels(text)
    kinds: list[int] = []
    wildcards = 0
    for i, tok in enumerate(tokens):
        sep, body = tok[0], tok[1:]
        if body in ("*", "**"):
            whole = sep == "." and (i + 1 == len(tokens) or tokens[i + 1][0] == ".")
            if not whole:
                raise RouteError(
                    f"{body!r} must be a whole segment between dots in {text!r} "
                    "(use '+' for one '/' level)"
                )
            kinds.append(_STAR if body == "*" else _DSTAR)
            wildcards += 1
        elif "*" in body:
            raise RouteError(f"'*' matches whole segments only: {text!r} has it inside {body!r}")
        elif body == "+":
            kinds.append(_PLUS)
            wildcards += 1
        elif body == "#":
            if i + 1 != len(tokens):
                raise RouteError(f"'#' must come last in {text!r}")
            kinds.append(_HASH)
            wildcards += 1
        else:
            kinds.append(_LITERAL)
    return Pattern(text, tuple(tokens), tuple(kinds), wildcards)


class _Node(Generic[V]):
    __slots__ = (
        "dstar",
        "hash_level",
        "hash_seg",
        "level",
        "level_child",
        "level_key",
        "plus_level",
        "plus_seg",
        "seg",
        "seg_child",
        "seg_key",
        "star",
        "values",
        "wild",
    )

    def __init__(self) -> None:
        # Everything starts as None: a lookup touches only what exists, and
        # with thousands of routes each object touched is a likely cache miss.
        # A node with one literal child (most of a route's own chain) keeps it
        # in seg_key/seg_child instead of a dict: two objects fewer per level.
        #: Literal children: levels that start a segment, and ``/`` levels.
        self.seg: dict[str, _Node[V]] | None = None
        self.seg_key: str | None = None
        self.seg_child: _Node[V] | None = None
        self.level: dict[str, _Node[V]] | None = None
        self.level_key: str | None = None
        self.level_child: _Node[V] | None = None
        self.star: _Node[V] | None = None
        self.dstar: _Node[V] | None = None
        self.plus_seg: _Node[V] | None = None
        self.plus_level: _Node[V] | None = None
        self.hash_seg: list[V] | None = None
        self.hash_level: list[V] | None = None
        self.values: list[V] | None = None
        #: True if any wildcard hangs here: literal-only nodes are walked in a loop.
        self.wild = False


def _literal_child(node: _Node[V], text: str, seg: bool) -> _Node[V]:
    """Find or make the literal child ``text`` (of the segment or the level kind)."""
    text = sys.intern(text)
    kind = "seg" if seg else "level"
    children: dict[str, _Node[V]] | None = getattr(node, kind)
    if children is not None:
        child = children.get(text)
        if child is None:
            child = children[text] = _Node()
        return child
    key: str | None = getattr(node, kind + "_key")
    if key is None:
        child = _Node()
        setattr(node, kind + "_key", text)
        setattr(node, kind + "_child", child)
        return child
    only: _Node[V] = getattr(node, kind + "_child")
    if key == text:
        return only
    child = _Node()
    setattr(node, kind, {key: only, text: child})
    setattr(node, kind + "_key", None)
    setattr(node, kind + "_child", None)
    return child


def _child(node: _Node[V], attr: str) -> _Node[V]:
    child: _Node[V] | None = getattr(node, attr)
    if child is None:
        child = _Node()
        setattr(node, attr, child)
    return child


class PatternIndex(Generic[V]):
    """Wildcard patterns compiled into a trie; `match` returns every value whose pattern matches.

    Lookup cost grows with the address's number of levels and the wildcard
    branches present along its path, not with the number of patterns.
    """

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._count = 0
        #: Every literal level or segment of the patterns added (`match_shape`).
        self.literals: set[str] = set()

    def __len__(self) -> int:
        return self._count

    def add(self, pattern: Pattern, value: V) -> None:
        """Add ``value`` under ``pattern`` (exact patterns work too, but a dict is faster)."""
        node = self._root
        for tok, kind in zip(pattern.tokens, pattern.kinds, strict=True):
            seg = tok[0] == "."
            if kind == _LITERAL:
                node = _literal_child(node, tok[1:], seg)
                self.literals.add(tok[1:])
                continue
            node.wild = True
            if kind == _HASH:
                if seg:
                    node.hash_seg = [*(node.hash_seg or ()), value]
                else:
                    node.hash_level = [*(node.hash_level or ()), value]
                self._count += 1
                return
            if kind == _STAR:
                node = _child(node, "star")
            elif kind == _DSTAR:
                node = _child(node, "dstar")
            else:
                node = _child(node, "plus_seg" if seg else "plus_level")
        node.values = [*(node.values or ()), value]
        self._count += 1

    def match(self, address: str) -> list[tuple[V, tuple[str, ...]]]:
        """Return ``(value, captures)`` for every pattern matching ``address``.

        Captures are what the pattern's wildcards matched, left to right. Each
        value comes once (with the first captures found).
        """
        out: list[tuple[V, tuple[str, ...]]] = []
        if "/" in address:
            # Topic-like tags: split into levels, remembering which start a segment.
            levels: list[str] = []
            starts: list[bool] = []
            for segment in address.split("."):
                first = True
                for level in segment.split("/"):
                    levels.append(level)
                    starts.append(first)
                    first = False
            _Walk(levels, starts, out).walk(self._root, 0, ())
        else:
            _walk_segments(self._root, address.split("."), 0, (), out, None)
        if len(out) > 1:
            seen: set[int] = set()
            unique = []
            for item in out:
                if id(item[0]) not in seen:
                    seen.add(id(item[0]))
                    unique.append(item)
            out = unique
        return out


def _walk_segments(
    node: _Node[V],
    segs: list[str],
    i: int,
    caps: tuple[str, ...],
    out: list[tuple[V, tuple[str, ...]]],
    visited: set[tuple[int, int]] | None,
) -> None:
    """The walk for an address without ``/``: every level starts a segment."""
    n = len(segs)
    while True:
        if node.wild:
            if node.hash_seg:
                rest = ".".join(segs[i:])
                out.extend((v, (*caps, rest)) for v in node.hash_seg)
            if node.dstar is not None:
                # '**' may take 0..all of the rest; each (node, i) is walked
                # once, so a pattern full of '**' costs O(nodes x levels).
                if visited is None:
                    visited = set()
                dstar = node.dstar
                for j in range(i, n + 1):
                    seen = (id(dstar), j)
                    if seen not in visited:
                        visited.add(seen)
                        _walk_segments(dstar, segs, j, (*caps, ".".join(segs[i:j])), out, visited)
            if i == n:
                if node.hash_level:
                    out.extend((v, (*caps, "")) for v in node.hash_level)
            else:
                if node.star is not None:
                    _walk_segments(node.star, segs, i + 1, (*caps, segs[i]), out, visited)
                if node.plus_seg is not None:
                    _walk_segments(node.plus_seg, segs, i + 1, (*caps, segs[i]), out, visited)
        if i == n:
            if node.values:
                out.extend((v, caps) for v in node.values)
            return
        key = node.seg_key
        if key is not None:
            if key != segs[i]:
                return
            node = node.seg_child  # type: ignore[assignment]
        else:
            children = node.seg
            if children is None:
                return
            child = children.get(segs[i])
            if child is None:
                return
            node = child
        i += 1


class _Walk(Generic[V]):
    """One lookup of an address with ``/`` levels."""

    __slots__ = ("levels", "n", "out", "starts", "visited")

    def __init__(
        self, levels: list[str], starts: list[bool], out: list[tuple[V, tuple[str, ...]]]
    ) -> None:
        self.levels = levels
        self.starts = starts
        self.n = len(levels)
        self.out = out
        self.visited: set[tuple[int, int]] | None = None

    def next_segment(self, i: int) -> int:
        """The index of the first level of the segment after the one level i is in."""
        starts = self.starts
        j = i + 1
        n = self.n
        while j < n and not starts[j]:
            j += 1
        return j

    def text(self, i: int, j: int) -> str:
        """Levels i..j-1 as they were written (with their dots and slashes)."""
        levels = self.levels
        starts = self.starts
        if i >= j:
            return ""
        rest = [("." if starts[k] else "/") + levels[k] for k in range(i + 1, j)]
        return levels[i] + "".join(rest)

    def walk(self, node: _Node[V], i: int, caps: tuple[str, ...]) -> None:
        levels = self.levels
        n = self.n
        starts = self.starts
        while True:
            if node.wild:
                self.branch(node, i, caps)
            if i == n:
                if node.values:
                    self.out.extend((v, caps) for v in node.values)
                return
            if starts[i]:
                key, only, children = node.seg_key, node.seg_child, node.seg
            else:
                key, only, children = node.level_key, node.level_child, node.level
            if key is not None:
                if key != levels[i]:
                    return
                node = only  # type: ignore[assignment]
            else:
                if children is None:
                    return
                child = children.get(levels[i])
                if child is None:
                    return
                node = child
            i += 1

    def branch(self, node: _Node[V], i: int, caps: tuple[str, ...]) -> None:
        n = self.n
        out = self.out
        at_end = i == n
        seg = at_end or self.starts[i]
        if seg:
            if node.hash_seg:
                rest = self.text(i, n)
                out.extend((v, (*caps, rest)) for v in node.hash_seg)
            if node.dstar is not None:
                if self.visited is None:
                    self.visited = set()
                j = i
                while True:
                    key = (id(node.dstar), j)
                    if key not in self.visited:
                        self.visited.add(key)
                        self.walk(node.dstar, j, (*caps, self.text(i, j)))
                    if j >= n:
                        break
                    j = self.next_segment(j)
        if at_end:
            if node.hash_level:
                out.extend((v, (*caps, "")) for v in node.hash_level)
            return
        if seg:
            if node.star is not None:
                j = self.next_segment(i)
                self.walk(node.star, j, (*caps, self.text(i, j)))
            if node.plus_seg is not None:
                self.walk(node.plus_seg, i + 1, (*caps, self.levels[i]))
        else:
            if node.hash_level:
                rest = self.text(i, self.n)
                out.extend((v, (*caps, rest)) for v in node.hash_level)
            if node.plus_level is not None:
                self.walk(node.plus_level, i + 1, (*caps, self.levels[i]))


_PLACEHOLDER: Final = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class Template:
    """A ``to`` address, possibly with ``{1}``, ``{2}``, ``{tag}``, ``{source}`` placeholders."""

    text: str
    parts: tuple[str | int, ...]
    #: True if the address has no placeholder (read per new address: computed once).
    is_static: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_static", all(isinstance(p, str) for p in self.parts))

    @property
    def highest_capture(self) -> int:
        """The largest ``{n}`` used, 0 if none."""
        return max((p for p in self.parts if isinstance(p, int) and p > 0), default=0)

    def render(self, captures: tuple[str, ...], tag: str, source: str) -> str:
        """Fill the placeholders in."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            elif part == 0:
                out.append(tag)
            elif part == -1:
                out.append(source)
            else:
                out.append(captures[part - 1] if part <= len(captures) else "")
        return "".join(out)


def parse_template(text: str) -> Template:
    """Parse a ``to`` address.

    Raises:
        RouteError: for an empty segment, whitespace, a wildcard, or an unknown placeholder.
    """
    _check_address_text(text, "a target address")
    parts: list[str | int] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        name = m.group(1)
        if name.isdigit() and 1 <= int(name) <= 99:
            parts.append(int(name))
        elif name == "tag":
            parts.append(0)
        elif name == "source":
            parts.append(-1)
        else:
            raise RouteError(
                f"unknown placeholder {{{name}}} in {text!r} "
                "(use {1}..{99}, {tag} or {source})"
            )
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    literal = "".join(p for p in parts if isinstance(p, str))
    if "{" in literal or "}" in literal:
        raise RouteError(f"unbalanced brace in {text!r}")
    for tok in split_levels(literal)[0]:
        if "*" in tok or tok[1:] in ("+", "#"):
            raise RouteError(f"a target address cannot hold wildcards: {text!r}")
    return Template(text, tuple(parts))


def resolve_endpoint(address: str, endpoints: Container[str]) -> tuple[str | None, str]:
    """Split an address into its endpoint and tag, by the longest endpoint id that prefixes it.

    Returns:
        ``(endpoint, tag)``; ``(None, address)`` if no endpoint prefixes it.
        An address that is an endpoint id itself has the tag ``""``.

    Example:
        >>> resolve_endpoint("bt.bms_001.voltage", {"bt", "bt.bms_001"})
        ('bt.bms_001', 'voltage')
    """
    if address in endpoints:
        return address, ""
    i = len(address)
    while True:
        i = address.rfind(".", 0, i)
        if i <= 0:
            return None, address
        head = address[:i]
        if head in endpoints:
            return head, address[i + 1 :]
