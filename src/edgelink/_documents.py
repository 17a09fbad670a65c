"""Reading config documents: one JSON or YAML file, parsed strictly. Pure but for the read.

Shared by the connections config, the route table and the service settings,
so every file gets the same errors: the file, and for a syntax error its line
and column, never the offending text (it may hold a secret). Duplicate keys
are refused in both formats. `write_atomically` is how the service writes one
back: whole or not at all, even across a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Final

import yaml

from edgelink.errors import ConfigError

__all__ = ["read_document", "write_atomically"]

_JSON_SUFFIXES: Final = frozenset({".json"})
_YAML_SUFFIXES: Final = frozenset({".yaml", ".yml"})


def read_document(path: str | os.PathLike[str]) -> Any:
    """Read and parse one JSON or YAML config file (by suffix; others tried as both).

    Raises:
        ConfigError: naming the file, for a missing, unreadable, empty or
            malformed file (with the line of a syntax error).
    """
    file = os.fspath(path)
    return _parse(Path(file), file)


def write_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` so that it is the old or the new file, never half of one.

    The text goes to a temporary file in the same folder, which is flushed
    to disk (fsync) and renamed over ``path``; then the folder is fsynced so
    the rename itself survives a power cut. The new file keeps the old one's
    mode, or is 0600 if there was none. A reader (the folder watch) never
    sees a partial file.

    Raises:
        OSError: if the folder cannot be written; ``path`` is then unchanged
            and no temporary file is left.
    """
    target = Path(path)
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _parse(path: Path, file: str) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a file", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", file=file) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 (byte {exc.start})", file=file) from None
    if not text.strip():
        raise ConfigError("the file is empty", file=file)
    suffix = path.suffix.lower()
    if suffix in _JSON_SUFFIXES:
        return _parse_json(text, file)
    if suffix in _YAML_SUFFIXES:
        return _parse_yaml(text, file)
    try:
        return _parse_json(text, file)
    except ConfigError as json_error:
        try:
            return _parse_yaml(text, file)
        except ConfigError as yaml_error:
            # Report in the language the file appears to be written in.
            looks_like_json = text.lstrip()[:1] in ("{", "[")
            raise (json_error if looks_like_json else yaml_error) from None


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of duplicate keys silently; a duplicated connection
    # id would then vanish without a word.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def _parse_json(text: str, file: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_object)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}", file=file
        ) from None
    except _DuplicateKeyError as exc:
        raise ConfigError(f"duplicate key {exc.key!r}", file=file) from None
    except RecursionError:
        raise ConfigError("JSON nesting is too deep", file=file) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate mapping keys (YAML 1.2 forbids them)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys may be overridden, that is what `<<` is for
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: the base constructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, file: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        # Only problem, context and position: str(exc) quotes the offending
        # line, which may hold a secret. ``from None`` keeps it out of tracebacks.
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context:
            reason = f"{exc.problem} ({exc.context})"
        kind = (
            "YAML error"
            if isinstance(exc, yaml.constructor.ConstructorError)
            else "YAML syntax error"
        )
        raise ConfigError(f"{kind}{where}: {reason}", file=file) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            f"YAML error: unacceptable character at position {exc.position}", file=file
        ) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"YAML error: {type(exc).__name__}", file=file) from None
