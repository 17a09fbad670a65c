"""A plugin's ``manifest.json``: its schema, and loading it with errors that name plugin and field.

The seed's schema (name, version, author, description, repository,
dependencies {python, packages}, config_schema) plus ``entry`` (the
``module:function`` that registers what the plugin provides) and ``provides``
(``drivers``, ``targets``, ``bms_parsers``, ``widgets``: the names it will
register). ``config_schema`` is either a JSON Schema (an object with
``type``/``properties``) or, as in the seed, an object of defaults whose
types become the schema.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from edgelink.errors import ConfigError

__all__ = ["MANIFEST_SCHEMA", "PluginManifest", "config_schema_of", "load_manifest"]

#: The JSON Schema every manifest.json is checked against.
MANIFEST_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["name", "version", "entry"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z][a-z0-9_]{0,63}$"},
        "version": {"type": "string", "pattern": r"^\d+(\.\d+){0,2}([-+.][0-9A-Za-z.-]+)?$"},
        "author": {"type": "string"},
        "description": {"type": "string"},
        "repository": {"type": "string"},
        "entry": {"type": "string", "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"},
        "dependencies": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "python": {"type": "string"},
                "packages": {"type": "array", "items": {"type": "string", "minLength": 1}},
            },
        },
        "config_schema": {"type": "object"},
        "isolation": {"type": ["string", "object"]},
        "provides": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                key: {"type": "array", "items": {"type": "string", "minLength": 1}}
                for key in ("drivers", "targets", "bms_parsers", "widgets")
            },
        },
    },
}

_JSON_TYPES: Final = {bool: "boolean", int: "integer", float: "number", str: "string"}


@dataclass(frozen=True)
class PluginManifest:
    """A validated manifest and where its plugin lives."""

    folder: Path
    name: str
    version: str
    entry: str
    author: str = ""
    description: str = ""
    repository: str = ""
    python: str = ""
    packages: tuple[str, ...] = ()
    config_schema: dict[str, Any] = field(default_factory=dict)
    provides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: How the connections of its types run unless a connection says otherwise
    #: (``"process"`` or the isolation object of docs/isolation.md; None: in process).
    isolation: str | dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return it JSON-ready."""
        return {
            "name": self.name,
            "version": self.version,
            "author": self.author,
            "description": self.description,
            "repository": self.repository,
            "entry": self.entry,
            "dependencies": {"python": self.python, "packages": list(self.packages)},
            "config_schema": self.config_schema,
            "provides": {k: list(v) for k, v in self.provides.items()},
            "isolation": self.isolation,
        }


def config_schema_of(declared: dict[str, Any]) -> dict[str, Any]:
    """Return a JSON Schema for a manifest's ``config_schema`` (a schema, or defaults)."""
    if "properties" in declared or declared.get("type") == "object":
        return declared
    properties: dict[str, Any] = {}
    for key, default in declared.items():
        kind = _JSON_TYPES.get(type(default))
        spec: dict[str, Any] = {"default": default}
        if kind is not None:
            spec["type"] = ["number", "integer"] if kind == "number" else kind
        properties[key] = spec
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _where(error: Any) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        return missing[0] if missing else path or "(top)"
    if error.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)'", error.message)
        return ".".join(p for p in (path, extra[0] if extra else "") if p)
    return path or "(top)"


def load_manifest(folder: str | Path) -> PluginManifest:
    """Read and validate ``<folder>/manifest.json``.

    Raises:
        ConfigError: naming the plugin (its folder) and the field, for a missing
            or unreadable file, bad JSON, or a schema violation (the first one).
    """
    import jsonschema

    folder = Path(folder)
    path = folder / "manifest.json"
    label = f"plugin {folder.name}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{label}: no manifest.json", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: manifest.json cannot be read: {exc}", file=str(path)) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{label}: manifest.json is not JSON: {exc.msg} (line {exc.lineno})", file=str(path)
        ) from None
    validator = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = _where(first)
        raise ConfigError(f"{label}: {first.message}", file=str(path), path=where)
    if data["name"] != folder.name:
        raise ConfigError(
            f"{label}: {data['name']!r} must be the folder's name {folder.name!r}",
            file=str(path),
            path="name",
        )
    deps = data.get("dependencies") or {}
    schema = config_schema_of(data.get("config_schema") or {})
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(
            f"{label}: not a valid JSON Schema: {exc.message}",
            file=str(path),
            path="config_schema",
        ) from None
    return PluginManifest(
        folder=folder,
        name=data["name"],
        version=data["version"],
        entry=data["entry"],
        author=data.get("author", ""),
        description=data.get("description", ""),
        repository=data.get("repository", ""),
        python=deps.get("python", ""),
        packages=tuple(deps.get("packages") or ()),
        config_schema=schema,
        provides={k: tuple(v) for k, v in (data.get("provides") or {}).items()},
        isolation=_isolation(data.get("isolation"), label, path),
    )


def _isolation(value: Any, label: str, path: Path) -> str | dict[str, Any] | None:
    """Check a manifest's ``isolation`` as a connection's is checked."""
    if value is None:
        return None
    from edgelink.isolation.spec import parse_isolation

    try:
        parse_isolation(value)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc.message}", file=str(path), path="isolation") from None
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}", file=str(path), path="isolation") from None
    return value if isinstance(value, str) else dict(value)
