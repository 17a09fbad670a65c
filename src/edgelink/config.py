"""The ``connections.json`` file: models, loading, validation and the reload diff.

This module owns DESIGN section 6. It turns a JSON or YAML file (or an
already-parsed dict) into a validated `GatewayConfig`, resolves every
connection to a `ConnectionSpec` (top-level ``settings`` are defaults, a
connection's own ``settings`` override them), and compares two configs for
hot reload (`diff_configs`). It does no I/O beyond reading the one file.

Every failure is a `ConfigError` naming the file (or ``<dict>``), the JSON
path (``connections.plc_1.poll[0].interval``) and the reason; all validation
errors of a document are collected in ``ConfigError.errors``. Messages never
echo input values, so a secret typed in the wrong place does not end up in a
log, and reprs of configs and specs show secret-named values as ``***``.

Example:
    >>> cfg = load_config({"connections": {"dev": {"type": "tcp", "config": {"port": 5000}}}})
    >>> sorted(cfg.specs())
    ['dev']
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue, models_json_schema
from pydantic_core import CoreSchema

from edgelink._documents import read_document
from edgelink._validation import format_path as _format_path
from edgelink._validation import reason, unknown_key_reason
from edgelink.drivers.configs import BUILTIN_CONFIG_MODELS
from edgelink.errors import ConfigError
from edgelink.isolation.spec import IsolationSpec, parse_isolation
from edgelink.redact import redact
from edgelink.settings import ConnectionSettings, ManagerSettings

__all__ = [
    "ConfigDiff",
    "ConnectionConfig",
    "ConnectionSpec",
    "GatewayConfig",
    "PollGroup",
    "WatchSpec",
    "build_spec",
    "check_config",
    "config_json_schema",
    "diff_configs",
    "diff_specs",
    "load_config",
    "read_document",
    "validate_connection_id",
    "validation_error",
]

#: The ``file`` of a `ConfigError` for a config given as a dict.
DICT_SOURCE: Final = "<dict>"
#: Longest connection id accepted.
MAX_CONNECTION_ID_LENGTH: Final = 128
#: How many ids `check_config` lists before it abbreviates.
_CHECK_LIST_MAX: Final = 10
_SCHEMA_TITLE: Final = "edgelink connections.json"

# Ids become router addresses (``<id>.<tag>``, resolved by the longest id
# prefix, with ``*``/``**`` as wildcards) and MQTT topic levels, where ``+``
# and ``#`` are wildcards a publisher may not use. So besides whitespace these
# characters are refused, and a dot may only separate non-empty segments.
_ID_FORBIDDEN_CHARS: Final = frozenset("*+#")

_MODEL_CONFIG: Final = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def validate_connection_id(connection_id: str) -> str:
    """Check a connection id and return it unchanged.

    An id is 1 to 128 characters without whitespace or control characters,
    without ``*``, ``+`` or ``#``, and may contain dots between non-empty
    segments (``bt.bms_001``).

    Raises:
        ValueError: naming the rule that was broken (never echoing the id).
    """
    if not connection_id:
        raise ValueError("connection id must not be empty")
    if len(connection_id) > MAX_CONNECTION_ID_LENGTH:
        raise ValueError(f"connection id must be at most {MAX_CONNECTION_ID_LENGTH} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in connection_id):
        raise ValueError("connection id must not contain whitespace or control characters")
    if any(ch in _ID_FORBIDDEN_CHARS for ch in connection_id):
        raise ValueError("connection id must not contain '*', '+' or '#'")
    if "" in connection_id.split("."):
        raise ValueError("connection id must not start or end with '.' or contain '..'")
    return connection_id


ConnectionId = Annotated[
    str,
    AfterValidator(validate_connection_id),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CONNECTION_ID_LENGTH,
            "pattern": r"^[^\s*+#.]+(\.[^\s*+#.]+)*$",
        }
    ),
]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def _settings_overrides_model() -> type[BaseModel]:
    """Build the model of a connection's ``settings``: every field optional, same constraints.

    A field left out stays unset (and so is taken from the top-level
    defaults); a field set to ``null`` is validated like any other value, so
    ``reconnect_max_attempts: null`` (never give up) stays possible.
    """
    fields: dict[str, Any] = {}
    for name, info in ConnectionSettings.model_fields.items():
        annotation: Any = info.annotation
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        fields[name] = (annotation, Field(default=None, description=info.description))
    return create_model(
        "ConnectionSettingsOverrides",
        __config__=_MODEL_CONFIG,
        __doc__="A connection's own settings; each overrides the top-level default.",
        **fields,
    )


_SettingsOverrides: Final = _settings_overrides_model()


def _validate_overrides(value: Any) -> Any:
    # A ValidationError raised here is merged into the outer one with the
    # location prefixed, so errors point at ``...settings.<field>``.
    if value is None:
        return {}
    return _SettingsOverrides.model_validate(value).model_dump(exclude_unset=True)


class _OverridesJsonSchema:
    """Document a connection's ``settings`` dict as the overrides model, without defaults."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(_SettingsOverrides.__pydantic_core_schema__)
        target = handler.resolve_ref_schema(schema)
        for prop in target.get("properties", {}).values():
            prop.pop("default", None)  # unset means "the top-level default", not null
        return schema


SettingsOverrides = Annotated[
    dict[str, Any], BeforeValidator(_validate_overrides), _OverridesJsonSchema()
]


class PollGroup(BaseModel):
    """Tags read together every ``interval`` seconds while the connection is up.

    Example:
        >>> PollGroup(tags=("MAIN.temperature",), interval=1.0).interval
        1.0
    """

    model_config = _MODEL_CONFIG

    tags: tuple[NonEmptyStr, ...] = Field(min_length=1, description="tags to read")
    interval: StrictFloat = Field(gt=0, description="seconds between reads")


class WatchSpec(BaseModel):
    """A vital sign: a tag whose readings below/above a limit raise warnings (DESIGN section 3).

    ``warning_after`` consecutive bad readings emit ``power_warning``,
    ``critical_after`` emit ``power_critical``; with ``health_check`` a bad
    reading also triggers an early health check.

    Example:
        >>> WatchSpec(tag="power", below=0.1).critical_after
        3
    """

    model_config = _MODEL_CONFIG

    tag: NonEmptyStr = Field(description="the watched tag")
    below: StrictFloat | None = Field(default=None, description="a reading below this is bad")
    above: StrictFloat | None = Field(default=None, description="a reading above this is bad")
    warning_after: StrictInt = Field(
        default=1, ge=1, description="consecutive bad readings for a warning"
    )
    critical_after: StrictInt = Field(
        default=3, ge=1, description="consecutive bad readings for critical"
    )
    health_check: StrictBool = Field(
        default=False, description="run a health check on a bad reading"
    )

    @model_validator(mode="after")
    def _check_limits(self) -> Self:
        if self.below is None and self.above is None:
            raise ValueError("at least one of 'below' and 'above' is required")
        if self.below is not None and self.above is not None and self.below >= self.above:
            # Otherwise every reading is bad: almost certainly swapped limits.
            raise ValueError("'below' must be less than 'above'")
        if self.critical_after < self.warning_after:
            raise ValueError("'critical_after' must be >= 'warning_after'")
        return self


# A YAML key left empty parses as null; for these fields that means "empty".
_NULL_MEANS_EMPTY: Final = frozenset({"config", "settings", "poll", "watch", "endpoints"})


class ConnectionConfig(BaseModel):
    """One entry of ``connections``: which driver, its config and how it is supervised.

    ``config`` is the driver's own block and is passed to it as it is, except
    for ``auto_reconnect``: the seed configs kept it there, so it is moved into
    this connection's ``settings`` (an ``auto_reconnect`` in ``settings`` wins).
    A ``null`` ``config``, ``settings``, ``poll`` or ``watch`` (an empty YAML
    key) counts as empty.

    Example:
        >>> c = ConnectionConfig(type="tcp", config={"port": 5000, "auto_reconnect": False})
        >>> c.config, c.settings
        ({'port': 5000}, {'auto_reconnect': False})
    """

    model_config = _MODEL_CONFIG

    type: NonEmptyStr = Field(description="driver type name, e.g. tcp, modbus_tcp, ads")
    name: StrictStr | None = Field(default=None, description="display name")
    enabled: StrictBool = Field(default=True, description="start this connection with the manager")
    config: dict[str, Any] = Field(default_factory=dict, description="the driver's own settings")
    settings: SettingsOverrides = Field(
        default_factory=dict, description="overrides of the top-level settings"
    )
    poll: list[PollGroup] = Field(default_factory=list, description="tags read periodically")
    watch: list[WatchSpec] = Field(default_factory=list, description="vital signs")
    endpoints: list[dict[str, Any]] = Field(
        default_factory=list,
        description="the preferred endpoint first, then alternates, each with the config "
        "fields that differ from config (docs/failover.md)",
    )
    isolation: Literal["none", "process"] | IsolationSpec | None = Field(
        default=None,
        description='"process" runs the driver in a child process, or an object with '
        "the limits (docs/isolation.md); none or null runs it in the gateway's process",
    )

    @model_validator(mode="after")
    def _check_isolation(self) -> Self:
        if parse_isolation(self.isolation) is not None and self.endpoints:
            raise ValueError("isolation cannot be combined with endpoints (failover) yet")
        return self

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = {k: v for k, v in data.items() if not (k in _NULL_MEANS_EMPTY and v is None)}
        config = data.get("config")
        if isinstance(config, Mapping) and "auto_reconnect" in config:
            config = dict(config)
            auto_reconnect = config.pop("auto_reconnect")
            settings = data.get("settings")
            if settings is None or isinstance(settings, Mapping):
                settings = dict(settings or {})
                settings.setdefault("auto_reconnect", auto_reconnect)
                data["settings"] = settings
                data["config"] = config
        return data

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for key, value in super().__repr_args__():
            yield key, (redact(value) if key == "config" else value)


@dataclass(frozen=True, slots=True, eq=False)
class ConnectionSpec:
    """One connection fully resolved: what a Supervisor is built from.

    ``settings`` are the top-level defaults merged with the connection's
    overrides. Two specs are equal exactly when rebuilding one from the other
    would change nothing: every field counts, ``config`` is compared by value
    and type (``1`` differs from ``true`` and from ``1.0``) but not by key
    order. Specs are hashable; treat them, ``config`` included, as
    read-only (equality is computed once, at construction). The repr shows
    secret-named config values as ``***`` and only the settings that differ
    from the built-in defaults.

    Example:
        >>> spec = load_config({"connections": {"dev": {"type": "tcp"}}}).specs()["dev"]
        >>> spec.settings.health_check_interval
        30.0
    """

    connection_id: str
    type: str
    name: str | None
    enabled: bool
    config: dict[str, Any]
    settings: ConnectionSettings
    poll: tuple[PollGroup, ...] = ()
    watch: tuple[WatchSpec, ...] = ()
    #: The endpoints' config fields that differ from ``config`` (empty: one endpoint).
    endpoints: tuple[dict[str, Any], ...] = ()
    #: How the driver is isolated (None: in the gateway's process).
    isolation: IsolationSpec | None = None
    # Computed once: a reload of tens of thousands of connections compares
    # every spec, so equality must not re-walk the config each time.
    _identity: tuple[Any, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Settings, poll groups and watch rules are frozen, hashable pydantic
        # models with coerced values; only the free-form config needs the
        # canonical form.
        identity = (
            self.connection_id,
            self.type,
            self.name,
            self.enabled,
            _canonical_config(self.config),
            self.settings,
            self.poll,
            self.watch,
            tuple(_canonical_config(e) for e in self.endpoints),
            self.isolation,
        )
        object.__setattr__(self, "_identity", identity)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConnectionSpec):
            return NotImplemented
        return self._identity == other._identity

    def __hash__(self) -> int:
        return hash(self._identity)

    def __repr__(self) -> str:
        settings = self.settings.model_dump(exclude_defaults=True)
        return (
            f"ConnectionSpec(connection_id={self.connection_id!r}, type={self.type!r}, "
            f"name={self.name!r}, enabled={self.enabled!r}, config={redact(self.config)!r}, "
            f"settings={settings!r}, poll={list(self.poll)!r}, watch={list(self.watch)!r}"
            + (f", endpoints={[redact(e) for e in self.endpoints]!r}" if self.endpoints else "")
            + (f", isolation={self.isolation!r})" if self.isolation is not None else ")")
        )


def _canonical_config(config: Mapping[str, Any]) -> Any:
    """Return a hashable form of a driver config: by value and type, not key order."""
    try:
        # Fast path (C): JSON text tells true from 1 and 1 from 1.0, and
        # sort_keys drops the key order; NaN prints as NaN, so it equals itself.
        return json.dumps(config, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return _canonical(config)  # YAML oddities: mixed key types, cycles


def _canonical(value: Any, _depth: int = 0) -> Any:
    """Return a hashable, order-independent, type-tagged form of a YAML-like value."""
    if _depth > 100:
        return ("deep", id(value))
    if isinstance(value, Mapping):
        items = [(_canonical(k, _depth + 1), _canonical(v, _depth + 1)) for k, v in value.items()]
        return ("map", tuple(sorted(items, key=repr)))
    if isinstance(value, list | tuple):
        return ("seq", tuple(_canonical(v, _depth + 1) for v in value))
    if value is None or isinstance(value, bool | int | str):
        return (type(value).__name__, value)
    # floats by repr, so that nan equals itself; anything else (YAML dates...) likewise
    return (type(value).__name__, repr(value))


class GatewayConfig(BaseModel):
    """A whole ``connections.json``: top-level defaults and the connections.

    Build it with `load_config` (which reports errors with file and path);
    `specs` resolves every connection against the defaults.

    Example:
        >>> cfg = GatewayConfig(connections={"dev": ConnectionConfig(type="tcp")})
        >>> cfg.specs()["dev"].type
        'tcp'
    """

    model_config = _MODEL_CONFIG

    schema_uri: str | None = Field(
        default=None,
        alias="$schema",
        repr=False,
        description="the JSON Schema this file follows (for editors)",
    )
    settings: ManagerSettings = Field(
        default_factory=lambda: ManagerSettings.model_validate({}),
        description="manager limits and the defaults of every connection's settings",
    )
    connections: dict[ConnectionId, ConnectionConfig] = Field(
        default_factory=dict, description="connections by id"
    )

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "connections" in data and data["connections"] is None:
            data = {k: v for k, v in data.items() if k != "connections"}
        return data

    def specs(self) -> dict[str, ConnectionSpec]:
        """Return every connection resolved against the top-level settings, by id.

        Raises:
            ConfigError: if a connection's merged settings are inconsistent
                (e.g. its ``reconnect_max_delay`` below the default
                ``reconnect_initial_delay``); all such errors are collected.
        """
        return _resolve_all(self, file=None)


def _resolve_all(config: GatewayConfig, *, file: str | None) -> dict[str, ConnectionSpec]:
    defaults = config.settings.connection_defaults()
    specs: dict[str, ConnectionSpec] = {}
    errors: list[tuple[tuple[Any, ...], str]] = []
    for cid, conn in config.connections.items():
        try:
            specs[cid] = _resolve(cid, conn, defaults)
        except ValidationError as exc:
            errors += _error_items(exc, prefix=("connections", cid, "settings"))
    if errors:
        raise _config_error(errors, file=file)
    return specs


def _resolve(cid: str, conn: ConnectionConfig, defaults: ConnectionSettings) -> ConnectionSpec:
    return ConnectionSpec(
        connection_id=cid,
        type=conn.type,
        name=conn.name,
        enabled=conn.enabled,
        config=dict(conn.config),
        settings=defaults.merged(conn.settings),
        poll=tuple(conn.poll),
        watch=tuple(conn.watch),
        endpoints=tuple(dict(e) for e in conn.endpoints),
        isolation=parse_isolation(conn.isolation),
    )


def build_spec(
    connection_id: str,
    data: Mapping[str, Any],
    defaults: ConnectionSettings | None = None,
    *,
    file: str | None = None,
) -> ConnectionSpec:
    """Validate one connection entry (the shape of a ``connections`` value) and resolve it.

    This is what `ConnectionManager.add_connection` uses; paths in errors are
    the ones the entry would have in a file (``connections.<id>.…``).

    Args:
        connection_id: The id the connection gets.
        data: ``{"type": ..., "config": ..., "settings": ..., ...}``.
        defaults: The settings the connection's overrides apply to
            (built-in defaults if omitted).
        file: The file to name in errors, if any.

    Raises:
        ConfigError: for a bad id, a bad entry or inconsistent merged settings.
    """
    try:
        validate_connection_id(connection_id)
    except ValueError as exc:
        raise ConfigError(
            str(exc), file=file, path=_format_path(("connections", connection_id))
        ) from None
    prefix = ("connections", connection_id)
    try:
        conn = ConnectionConfig.model_validate(data)
    except ValidationError as exc:
        # ``from None``: the pydantic error's text carries the input values.
        raise _config_error(_error_items(exc, prefix=prefix), file=file) from None
    try:
        return _resolve(connection_id, conn, defaults or ConnectionSettings.model_validate({}))
    except ValidationError as exc:
        raise _config_error(_error_items(exc, prefix=(*prefix, "settings")), file=file) from None


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> GatewayConfig:
    """Load and validate a ``connections.json`` (DESIGN section 6).

    Args:
        source: A path to a JSON or YAML file (chosen by the suffix ``.json``,
            ``.yaml`` or ``.yml``; any other suffix is tried as JSON, then as
            YAML) or an already-parsed mapping.

    Returns:
        The validated config; its `GatewayConfig.specs` are known to resolve.

    Raises:
        ConfigError: naming the file (``<dict>`` for a mapping), the JSON path
            and the reason, for a missing or unreadable file, a JSON or YAML
            syntax error (with its line), a top level that is not an object,
            and every validation error (all collected in ``errors``). No
            pydantic, JSON or YAML exception escapes, and no message echoes an
            input value.
    """
    file: str
    data: Any
    if isinstance(source, str | os.PathLike):
        file = os.fspath(source)
        data = read_document(file)
    else:
        # Already parsed; anything but a mapping is reported as a bad top level.
        file, data = DICT_SOURCE, source
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"the top level must be an object with 'settings' and 'connections', "
            f"got {_json_type(data)}",
            file=file,
        )
    try:
        config = GatewayConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise _config_error(_error_items(exc), file=file) from None
    _resolve_all(config, file=file)
    return config


def validation_error(
    exc: ValidationError, *, file: str | None, prefix: tuple[Any, ...] = ()
) -> ConfigError:
    """Turn a pydantic ValidationError into a `ConfigError` naming the file and JSON paths.

    No input value is echoed in the messages (a bad value may be a secret).
    """
    return _config_error(_error_items(exc, prefix=prefix), file=file)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _known_keys(parent: tuple[Any, ...]) -> tuple[set[str], str | None]:
    """Return the keys allowed at ``parent`` and, for a connection's settings, a hint."""
    match parent:
        case ():
            return {"$schema", "settings", "connections"}, None
        case ("settings",):
            return set(ManagerSettings.model_fields), None
        case ("connections", _):
            return set(ConnectionConfig.model_fields), None
        case ("connections", _, "settings"):
            return set(ConnectionSettings.model_fields), "settings"
        case ("connections", _, "poll", int()):
            return set(PollGroup.model_fields), None
        case ("connections", _, "watch", int()):
            return set(WatchSpec.model_fields), None
    return set(), None


def _unknown_key_reason(loc: tuple[Any, ...]) -> str:
    key = loc[-1]
    known, kind = _known_keys(loc[:-1])
    if kind == "settings" and key in ManagerSettings.model_fields:
        return "unknown key: this is a manager-wide setting, allowed only in the top-level settings"
    return unknown_key_reason(key, known)


def _reason(error_type: str, msg: str, loc: tuple[Any, ...], ctx: Mapping[str, Any]) -> str:
    if error_type == "extra_forbidden":
        return _unknown_key_reason(loc)
    return reason(error_type, msg, ctx)


def _error_items(
    exc: ValidationError, prefix: tuple[Any, ...] = ()
) -> list[tuple[tuple[Any, ...], str]]:
    """Turn a ValidationError into ``(location, reason)`` items, never including input values."""
    items: list[tuple[tuple[Any, ...], str]] = []
    # The context holds limits (min_length...), never the input.
    for err in exc.errors(include_url=False, include_input=False):
        loc = (*prefix, *err["loc"])
        why = _reason(err["type"], err["msg"], loc, err.get("ctx") or {})
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
            what = "connection id" if len(loc) == 2 and loc[0] == "connections" else "key"
            if not why.startswith(what):
                why = f"invalid {what}: {why}"
        items.append((loc, why))
    return items


def _config_error(items: list[tuple[tuple[Any, ...], str]], *, file: str | None) -> ConfigError:
    errors = [(_format_path(loc), why) for loc, why in items]
    path, message = errors[0]
    # The connection all errors belong to, if they all belong to one.
    owners = {loc[1] if len(loc) >= 2 and loc[0] == "connections" else None for loc, _ in items}
    owner = owners.pop() if len(owners) == 1 else None
    return ConfigError(
        message,
        file=file,
        path=path or None,
        errors=errors,
        connection_id=owner if isinstance(owner, str) else None,
    )


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """What a reload changes, by connection id (each list sorted).

    ``added`` start, ``removed`` stop, ``changed`` restart with their new
    spec, ``unchanged`` are not touched. ``retuned`` (set by
    `ConnectionManager.reload`) are the ``changed`` ones whose new spec
    differed only in settings that apply without a restart
    (``spam_max_pps``): they were updated in place and kept running.

    Example:
        >>> diff_configs(None, load_config({"connections": {"a": {"type": "tcp"}}})).added
        ['a']
    """

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    retuned: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        """True if the reload would add, remove and restart nothing."""
        return not (self.added or self.removed or self.changed)


def diff_specs(old: Mapping[str, ConnectionSpec], new: Mapping[str, ConnectionSpec]) -> ConfigDiff:
    """Compare two sets of resolved specs by id (see `ConnectionSpec` for equality)."""
    both = new.keys() & old.keys()
    changed = {cid for cid in both if new[cid] != old[cid]}
    return ConfigDiff(
        added=sorted(new.keys() - old.keys()),
        removed=sorted(old.keys() - new.keys()),
        changed=sorted(changed),
        unchanged=sorted(both - changed),
    )


def diff_configs(old: GatewayConfig | None, new: GatewayConfig) -> ConfigDiff:
    """Compare two configs connection by connection, on their resolved specs.

    A changed top-level default therefore changes exactly the connections
    that do not override it; manager-wide settings (``max_connections``...)
    change no connection. ``old=None`` means nothing runs yet: all are added.

    Raises:
        ConfigError: if either config's specs do not resolve (`GatewayConfig.specs`).
    """
    return diff_specs(old.specs() if old is not None else {}, new.specs())


def config_json_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of ``connections.json``.

    A connection's ``config`` is described by its driver's model
    (`edgelink.drivers.configs`), chosen by ``type`` with an if/then per
    built-in type; a custom type's ``config`` stays a free object.
    """
    schema = GatewayConfig.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})
    _, drivers = models_json_schema(
        [(model, "validation") for model in BUILTIN_CONFIG_MODELS.values()],
        ref_template="#/$defs/{model}",
    )
    defs.update(drivers.get("$defs", {}))
    defs["ConnectionConfig"]["allOf"] = [
        {
            "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
            "then": {"properties": {"config": {"$ref": f"#/$defs/{model.__name__}"}}},
        }
        for name, model in BUILTIN_CONFIG_MODELS.items()
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": _SCHEMA_TITLE,
    }


def check_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> list[str]:
    """Check a config for ``edgelink check CONFIG``; return the lines to print.

    Returns:
        ``["OK: N connections (a, b, …)"]`` if the config is valid, else the
        error lines, the first starting with ``ERROR:``. Never raises a
        `ConfigError`.
    """
    try:
        config = load_config(source)
    except ConfigError as exc:
        first, *rest = str(exc).splitlines()
        return [f"ERROR: {first}", *rest]
    return [_ok_line(sorted(config.connections))]


def _ok_line(ids: list[str]) -> str:
    count = f"{len(ids)} connection{'' if len(ids) == 1 else 's'}"
    if not ids:
        return f"OK: {count}"
    shown = ", ".join(ids[:_CHECK_LIST_MAX])
    more = f", … (+{len(ids) - _CHECK_LIST_MAX} more)" if len(ids) > _CHECK_LIST_MAX else ""
    return f"OK: {count} ({shown}{more})"
