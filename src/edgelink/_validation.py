"""Pydantic validation errors as edgelink's `ConfigError`: JSON paths and plain reasons.

Shared by the ``connections.json`` loader (`edgelink.config`) and the driver
config models (`edgelink.drivers.configs`), so that a bad key reads the same
wherever it is found: the dotted JSON path (``connections.plc_1.config.port``)
and a reason that never echoes the input value (a bad value may be a secret).

Example:
    >>> format_path(("connections", "plc_1", "poll", 0, "interval"))
    'connections.plc_1.poll[0].interval'
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from edgelink.errors import ConfigError

__all__ = ["field_error", "format_path", "reason", "unknown_key_reason", "validate_model"]

M = TypeVar("M", bound=BaseModel)

_FRIENDLY: Final = {
    "dict_type": "Input should be an object",
    "model_type": "Input should be an object",
    "model_attributes_type": "Input should be an object",
    "list_type": "Input should be an array",
    "tuple_type": "Input should be an array",
}


def format_path(loc: Iterable[Any]) -> str:
    """Format a location as a dotted JSON path: ``connections.plc_1.poll[0].interval``.

    Keys that are empty or hold whitespace, quotes or brackets are written
    ``["key"]``; a connection id with dots is written as it is.
    """
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int) and not isinstance(item, bool):
            parts.append(f"[{item}]")
            continue
        key = str(item)
        if not key or any(ch.isspace() or ch in '[]"' for ch in key):
            parts.append(f"[{json.dumps(key)}]")
        else:
            parts.append(f".{key}" if parts else key)
    return "".join(parts)


def unknown_key_reason(key: Any, known: Iterable[str]) -> str:
    """Say that ``key`` is unknown, suggesting the closest of ``known`` if one is close."""
    close = difflib.get_close_matches(str(key), sorted(known), n=1)
    return f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"


def reason(error_type: str, msg: str, ctx: Mapping[str, Any]) -> str:
    """Return the reason of one pydantic error, without its input value.

    An unknown key (``extra_forbidden``) is the caller's to word, with
    `unknown_key_reason`: only it knows which keys were allowed there.

    Args:
        error_type: The pydantic error type (``int_type``, ``less_than_equal``...).
        msg: Pydantic's message.
        ctx: The error's context (limits, never the input).
    """
    if error_type == "too_short" and isinstance(ctx.get("min_length"), int):
        n = ctx["min_length"]
        return "must not be empty" if n == 1 else f"needs at least {n} items"
    text = _FRIENDLY.get(error_type, msg)
    return text.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def field_error(field: str | tuple[Any, ...], message: str, value: Any = None) -> ValidationError:
    """Build a ValidationError for one field, to raise from a model validator.

    Pydantic merges it into the outer error with the location prefixed, so a
    cross-field rule (``client_key`` needs ``client_cert``) names the field it
    is about rather than the whole object.
    """
    loc = field if isinstance(field, tuple) else (field,)
    detail = InitErrorDetails(
        type=PydanticCustomError("value_error", message), loc=loc, input=value
    )
    return ValidationError.from_exception_data("config", [detail])


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Return the model that validates the object at ``loc`` inside ``model``, if one does."""
    current: type[BaseModel] | None = model
    for item in loc:
        if current is None:
            return None
        if isinstance(item, int):
            continue
        info = current.model_fields.get(str(item))
        current = None if info is None else _nested_model(info.annotation)
    return current


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def validate_model(
    model: type[M],
    data: Any,
    *,
    prefix: tuple[Any, ...] = (),
    connection_id: str | None = None,
    file: str | None = None,
) -> M:
    """Validate ``data`` with ``model``; every error becomes one line of a `ConfigError`.

    Args:
        model: The pydantic model.
        data: The mapping to validate.
        prefix: The location of ``data`` in its document (``("config",)`` for a
            driver's config block; the manager adds ``connections.<id>``).
        connection_id: The connection the config belongs to, if any.
        file: The file to name, if known.

    Raises:
        ConfigError: naming the JSON path and the reason of each error.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors: list[tuple[str, str]] = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                parent = _model_at(model, loc[:-1])
                known = parent.model_fields if parent is not None else ()
                text = unknown_key_reason(loc[-1], known)
            else:
                text = reason(err["type"], err["msg"], err.get("ctx") or {})
            errors.append((format_path((*prefix, *loc)), text))
        path, message = errors[0]
        raise ConfigError(
            message, file=file, path=path, errors=errors, connection_id=connection_id
        ) from None
