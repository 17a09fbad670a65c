"""The ``set(path, expression)`` and ``delete(path)`` steps: one field of an object value.

A path is a constant: ``"value"``, ``"a.b.c"`` (object keys split on dots)
or a list ``["a", "b", 0]`` (strings are object keys, integers list indexes;
the list form also reaches keys that contain dots). The steps never change
the value they get, which other routes may share: they copy the objects and
lists along the path (shallow copies, each within ``max_items``) and leave
the rest shared. ``set`` creates the objects missing along the path;
anything else in the way (a number, null, a list reached with a key, an index
out of range) fails that datapoint. ``delete`` of a path that is not there
passes the value unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from edgelink.router.expr.base import EvalError, _Fn
from edgelink.router.expr.limits import _CONTAINERS, _FLAT_TYPES, LimitError, _check_built

#: One step of a path: an object key or a list index.
Key = str | int
Path = tuple[Key, ...]

_MISSING: Final = object()


def parse_path(raw: Any, most: int) -> Path:
    """Return the path written as ``raw`` (a string or a list), at most ``most`` keys long.

    Raises:
        ValueError: naming what is wrong with it.
    """
    if isinstance(raw, str):
        if not raw:
            raise ValueError('path is empty (write "field", "a.b.c" or ["a", "b", 0])')
        parts: tuple[Any, ...] = tuple(raw.split("."))
        if "" in parts:
            raise ValueError(f"path {raw!r} has an empty part (for odd keys write a list)")
    elif isinstance(raw, tuple):
        parts = raw
        if not parts:
            raise ValueError("path is empty")
        for part in parts:
            if isinstance(part, bool) or not isinstance(part, str | int):
                raise ValueError(
                    "path lists hold object keys (strings) and list indexes (integers), "
                    f"not {_kind(part)}"
                )
    else:
        raise ValueError(f'path must be a string ("a.b.c") or a list (["a", 0]), not {_kind(raw)}')
    if len(parts) > most:
        raise ValueError(f"path of {len(parts)} keys is longer than max_nesting={most}")
    return parts


def path_text(path: Path) -> str:
    """The path as people write it: ``a.b.c``, or ``["a", 0]`` when dots would not do."""
    if all(isinstance(k, str) and "." not in k for k in path):
        return ".".join(path)  # type: ignore[arg-type]
    return "[" + ", ".join(repr(k) if isinstance(k, int) else f'"{k}"' for k in path) + "]"


#: How a value's kind is named in errors (JSON's words), first match wins.
_KINDS: Final = (
    (bool, "a boolean"),
    (int | float, "a number"),
    (str, "a string"),
    (list | tuple, "a list"),
    (Mapping, "an object"),
)


def _kind(x: Any) -> str:
    if x is None:
        return "null"
    for types, name in _KINDS:
        if isinstance(x, types):
            return name
    return type(x).__name__


class _Place:
    """What a compiled step needs to copy along its path and to complain."""

    __slots__ = ("cap", "path", "route_id", "step")

    def __init__(self, step: str, path: Path, cap: int, route_id: str | None) -> None:
        self.step = step
        self.path = path
        self.cap = cap
        self.route_id = route_id

    def where(self, depth: int) -> str:
        return "the value" if depth == 0 else path_text(self.path[:depth])

    def fail(self, depth: int, problem: str) -> EvalError:
        return EvalError(f"{self.step}({path_text(self.path)!r}): {self.where(depth)} {problem}")

    def copy(self, node: Any, key: Key, depth: int) -> Any:
        """A shallow copy of ``node`` (at ``depth`` of the path), which ``key`` must fit."""
        if isinstance(key, int):
            if not isinstance(node, list | tuple):
                raise self.fail(depth, f"is {_kind(node)}, not a list (the path has index {key})")
            out: Any = list(node)
            if not -len(out) <= key < len(out):
                raise self.fail(depth, f"has no index {key} (length {len(out)})")
        elif isinstance(node, Mapping):
            out = node.copy() if node.__class__ is dict else dict(node)
        else:
            raise self.fail(depth, f"is {_kind(node)}, not an object")
        if len(out) > self.cap:
            raise LimitError(
                f"{self.step}(): {self.where(depth)} has {len(out)} items, "
                f"over the cap max_items={self.cap}",
                route_id=self.route_id,
                cap="max_items",
                entry=True,
            )
        return out

    def parent(self, v: Any) -> Any:
        """Copy the objects and lists from ``v`` to the last key's container; return both."""
        path = self.path
        out = node = self.copy(v, path[0], 0)
        for depth in range(1, len(path)):
            key, next_key = path[depth - 1], path[depth]
            child = node.get(key, _MISSING) if isinstance(key, str) else node[key]
            if child is _MISSING:
                if isinstance(next_key, int):
                    raise self.fail(depth, f"is missing (the path has index {next_key})")
                child = {}
            else:
                child = self.copy(child, next_key, depth)
            node[key] = child
            node = child
        return out, node

    def has(self, v: Any) -> bool:
        """True if the whole path is there in ``v`` (nothing copied)."""
        node = v
        for key in self.path:
            if isinstance(key, int):
                if not isinstance(node, list | tuple) or not -len(node) <= key < len(node):
                    return False
                node = node[key]
            elif isinstance(node, Mapping) and key in node:
                node = node[key]
            else:
                return False
        return True


def setter(path: Path, fn: _Fn, nested: bool, cap: int, route_id: str | None) -> _Fn:
    """Compile ``set(path, fn)``.

    ``nested``: ``fn`` may return a list or an object (the copy is then
    walked against the caps when it does, as it may hold the value twice).
    """
    place = _Place("set", path, cap, route_id)
    if len(path) == 1 and isinstance(path[0], str) and not nested:
        key = path[0]

        def set_key(v: Any, dp: Any) -> Any:
            # The one-key case inline: a dict copy and a store.
            x = fn(v, dp)
            out = v.copy() if v.__class__ is dict and len(v) <= cap else place.copy(v, key, 0)
            out[key] = x
            return out

        return set_key
    last = path[-1]

    def set_path(v: Any, dp: Any) -> Any:
        x = fn(v, dp)
        out, node = place.parent(v)
        node[last] = x
        if nested and x.__class__ not in _FLAT_TYPES and isinstance(x, _CONTAINERS):
            _check_built(out, (v, x))
        return out

    return set_path


def deleter(path: Path, cap: int, route_id: str | None) -> _Fn:
    """Compile ``delete(path)``: a copy without that field, or the value itself if it has none."""
    place = _Place("delete", path, cap, route_id)
    last = path[-1]

    def delete(v: Any, dp: Any) -> Any:
        if not place.has(v):
            return v
        out, node = place.parent(v)
        del node[last]
        return out

    return delete
