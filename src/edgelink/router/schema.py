"""The ``routing.json`` file: its models, loading and validation.

The shape is the changelog seed's::

    {"version": "1.0", "routes": [
      {"id": "bms_to_plc", "from": "bt.bms_001.voltage",
       "to": "plc_1.MAIN.fbBattery.fVoltage", "transform": "scale(0.001)"},
      {"id": "alarm_multi_target", "from": "plc_1.MAIN.bAlarmActive",
       "to": ["mqtt.broker_local.alarms/critical", "webhook.alert_service", "log.system"],
       "condition": "value == true"}]}

A route: ``id`` (required, unique), ``from`` and ``to`` (an address or a list
of them), optional ``condition``, ``transform``, ``enabled`` (true),
``description``. Unknown keys are errors. Every problem is a `RouteError`
naming the file, the JSON path (``routes[1].condition``) and the reason;
all of a document's problems are collected in ``RouteError.errors``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgelink._documents import read_document
from edgelink.errors import ConfigError, RouteError

__all__ = [
    "RouteSpec",
    "RoutingConfig",
    "load_routing",
    "routing_json_schema",
]

#: The ``file`` of a `RouteError` for routes given as a dict.
DICT_SOURCE: Final = "<dict>"
#: Most routes in one file.
MAX_ROUTES: Final = 100_000
_ROUTE_ID: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}$")

_MODEL_CONFIG: Final = ConfigDict(
    extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
)

Addresses = Annotated[
    str | list[Annotated[str, Field(min_length=1)]],
    Field(description="an address, or a list of addresses"),
]


class RouteSpec(BaseModel):
    """One route as written in ``routing.json``."""

    model_config = _MODEL_CONFIG

    id: str = Field(description="unique id: letters, digits, _ . : -")
    from_: Addresses = Field(alias="from", description="source address pattern(s)")
    to: Addresses = Field(description="target address(es); may use {1}, {2}, {tag}, {source}")
    condition: str | None = Field(default=None, description="an expression, e.g. value > 20")
    transform: str | None = Field(default=None, description="steps chained with |")
    enabled: bool = True
    description: str | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _ROUTE_ID.match(value):
            raise ValueError(
                "route id must be 1 to 128 letters, digits or _ . : - (not starting with . : -)"
            )
        return value

    @field_validator("from_", "to")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("needs at least one address")
        if isinstance(value, str) and not value:
            raise ValueError("must not be empty")
        return value

    @property
    def sources(self) -> tuple[str, ...]:
        """The ``from`` patterns as a tuple."""
        return (self.from_,) if isinstance(self.from_, str) else tuple(self.from_)

    @property
    def targets(self) -> tuple[str, ...]:
        """The ``to`` addresses as a tuple."""
        return (self.to,) if isinstance(self.to, str) else tuple(self.to)

    def as_dict(self) -> dict[str, Any]:
        """Return the route as written (``from`` under its own name)."""
        return self.model_dump(by_alias=True, exclude_none=True)


class RoutingConfig(BaseModel):
    """A whole ``routing.json``."""

    model_config = _MODEL_CONFIG

    schema_: str | None = Field(default=None, alias="$schema")
    version: str = Field(default="1.0", description="format version; 1.x is understood")
    routes: list[RouteSpec] = Field(default_factory=list, max_length=MAX_ROUTES)

    @field_validator("version", mode="before")
    @classmethod
    def _check_version(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and (value == "1" or value.startswith("1.")):
            return value
        raise ValueError("unsupported version: this edgelink reads routing.json version 1.x")


def routing_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of ``routing.json``."""
    schema = RoutingConfig.model_json_schema(by_alias=True)
    schema["title"] = "edgelink routing.json"
    return schema


def load_routing(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[RoutingConfig, str]:
    """Read and validate a ``routing.json`` (JSON, or YAML by suffix) or an already-parsed dict.

    Returns:
        The validated document and the file name (``<dict>`` for a mapping).

    Raises:
        RouteError: naming the file, the JSON path and the reason, for a
            missing or unreadable file, a syntax error, a bad shape, or
            duplicate route ids. Messages never echo input values.
    """
    file: str
    data: Any
    if isinstance(source, str | os.PathLike):
        file = os.fspath(source)
        data = _read(Path(file), file)
    else:
        file, data = DICT_SOURCE, source
    if not isinstance(data, Mapping):
        raise RouteError("the top level must be an object with 'routes'", file=file)
    try:
        config = RoutingConfig.model_validate(dict(data))
    except ValidationError as exc:
        items = [
            (_format_path(err["loc"]), _reason(err["type"], err["msg"]))
            for err in exc.errors(include_url=False, include_input=False)
        ]
        path, message = items[0]
        raise RouteError(message, file=file, path=path or None, errors=items) from None
    seen: dict[str, int] = {}
    dupes: list[tuple[str, str]] = []
    for i, route in enumerate(config.routes):
        if route.id in seen:
            dupes.append(
                (
                    f"routes[{i}].id",
                    f"duplicate route id {route.id!r} (also routes[{seen[route.id]}])",
                )
            )
        else:
            seen[route.id] = i
    if dupes:
        path, message = dupes[0]
        raise RouteError(message, file=file, path=path, route_id=None, errors=dupes)
    return config, file


def _reason(error_type: str, msg: str) -> str:
    if error_type == "extra_forbidden":
        return "unknown key"
    return msg.removeprefix("Value error, ")


def _format_path(loc: Iterable[Any]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int) and not isinstance(item, bool):
            parts.append(f"[{item}]")
            continue
        key = str(item)
        if key == "from_":
            key = "from"
        # a str | list union reports which branch failed: not a path step
        if key in ("str", "list[str]", "list[constrained-str]"):
            continue
        parts.append(f".{key}" if parts else key)
    return "".join(parts)


def _read(path: Path, file: str) -> Any:
    try:
        return read_document(path)
    except ConfigError as exc:
        raise RouteError(exc.message, file=file) from None
