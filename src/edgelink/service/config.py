"""The service's config folder: ``connections.json``, ``routing.json``, ``edgelink.json``.

Each file may be JSON or YAML (``.json``, ``.yaml``, ``.yml``). Only
``connections`` is required; a folder without ``routing`` has no routes and
one without ``edgelink`` runs with the defaults below.

``edgelink.json``::

    {"api": {"host": "127.0.0.1", "port": 8080, "token": null},
     "bridge": {"connection": "broker_local", "base_topic": "smarthome", "qos": 0,
                "retain": true, "buffer": {"max_items": 100000, "max_age_s": 86400}},
     "storage": {"path": "system_logs.db"},
     "webhooks": {"alert_service": {"url": "https://alerts.example/hook", "retries": 3}},
     "ui": {"enabled": true, "session_hours": 12,
            "users": {"alice": {"password_hash": "$argon2id$v=19$m=65536,t=3,p=4$..."}},
            "warn": {"cpu_percent": 50, "memory_percent": 80, "error_count": 10}}}
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from edgelink.bridge.settings import BridgeSettings, BufferSettings, DiscoveryEntry
from edgelink.config import read_document, validation_error
from edgelink.errors import ConfigError

__all__ = [
    "ApiSettings",
    "BridgeSettings",
    "BufferSettings",
    "ConfigFolder",
    "DiscoveryEntry",
    "PluginSettings",
    "RouterSettings",
    "ServiceSettings",
    "StorageSettings",
    "UiSettings",
    "UiUser",
    "UiWarnings",
    "WebhookSettings",
    "load_service_settings",
]

_SUFFIXES = (".json", ".yaml", ".yml")


class ApiSettings(BaseModel):
    """The admin API: where it listens and how it is guarded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="bind address; loopback unless told")
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port (0 = any free port)")
    token: SecretStr | None = Field(
        default=None, description="bearer token; else EDGELINK_TOKEN, else a generated 0600 file"
    )
    token_file: str = Field(
        default=".edgelink_token", description="where a generated token is kept (config folder)"
    )
    stream_rate: float = Field(
        default=500.0, gt=0, description="messages/s a stream client gets at most"
    )
    stream_clients: int = Field(default=32, ge=1, description="stream clients at once")
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="largest request body (and stream message) accepted; larger is 413",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="browser origins (scheme://host:port) allowed on the stream besides the"
        " API's own; a client without an Origin header (not a browser) needs only the token",
    )


class WebhookSettings(BaseModel):
    """One webhook target, ``webhook.<name>`` in routes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://\S+$", description="where each datapoint is POSTed")
    headers: dict[str, str] = Field(default_factory=dict)
    api_key: SecretStr | None = Field(default=None, description="sent as a bearer token")
    timeout: float = Field(default=5.0, gt=0, le=120)
    retries: int = Field(default=3, ge=0, le=20)
    retry_delay: float = Field(
        default=0.5, gt=0, le=60, description="first retry delay, s; doubles, jittered, up to 10 s"
    )


class StorageSettings(BaseModel):
    """The SQLite system log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(default="system_logs.db", description="relative to the config folder")
    max_rows: int = Field(default=100_000, ge=1)
    max_age_s: float = Field(default=30 * 86400.0, gt=0)
    audit_max_rows: int = Field(default=100_000, ge=1, description="audit records kept at most")
    audit_max_age_s: float = Field(
        default=365 * 86400.0, gt=0, description="audit records older than this are deleted"
    )


class RouterSettings(BaseModel):
    """The router's expression caps, its quarantine of poison routes and sources, its bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_string_length: int = Field(
        default=1_048_576, ge=1, description="longest string an expression may build or copy"
    )
    max_int_digits: int = Field(
        default=1000, ge=1, le=4000, description="most digits of an integer an expression builds"
    )
    max_items: int = Field(
        default=10_000, ge=1, description="longest list or object an expression may walk"
    )
    max_nesting: int = Field(default=32, ge=1, description="deepest nesting an expression walks")
    max_terms: int = Field(
        default=64, ge=1, description="most variable operands joined by + or * in one expression"
    )
    budget: int = Field(default=8_000_000, ge=1, description="cost units one evaluation may spend")
    quarantine_after: int = Field(
        default=5, ge=1, description="strikes within quarantine_window that quarantine"
    )
    quarantine_window: float = Field(default=60.0, gt=0, description="seconds")
    max_addresses: int = Field(
        default=100_000,
        ge=1,
        description="addresses the data space keeps; a new one evicts the least recently updated",
    )
    max_plans: int = Field(
        default=200_000, ge=1, description="route plans cached; past it the cache starts over"
    )


class UiUser(BaseModel):
    """One user of the web UI: a name (the key in ``ui.users``) and an argon2 password hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    password_hash: SecretStr = Field(
        description="argon2 hash of the password (``$argon2id$...``), never the password itself",
    )

    @field_validator("password_hash")
    @classmethod
    def _is_argon2(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("$argon2id$", "$argon2i$", "$argon2d$")):
            raise ValueError(
                "not an argon2 hash (it starts with $argon2id$); make one with"
                " `edgelink hash-password`, see docs/ui.md"
            )
        return value


class UiWarnings(BaseModel):
    """When an instance card of the web UI shows a warning (a figure at or above its threshold)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_percent: float = Field(
        default=50.0, gt=0, description="CPU of one connection, % of one core"
    )
    memory_percent: float = Field(
        default=80.0, gt=0, le=100, description="RAM, % of the machine's (per process)"
    )
    error_count: int = Field(default=10, ge=1, description="errors of one connection")


class UiSettings(BaseModel):
    """The admin web UI (``pip install edgelink[ui]``), served on the API's port at ``/``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="serve the UI when nicegui is installed")
    name: str | None = Field(
        default=None,
        max_length=100,
        description="the gateway's name in the header (default: the folder's)",
    )
    users: dict[str, UiUser] = Field(
        default_factory=dict,
        max_length=256,
        description="users who may log in with a password besides the admin token",
    )
    session_hours: float = Field(
        default=12.0, gt=0, le=24 * 30, description="how long a login lasts"
    )
    storage_secret: SecretStr | None = Field(
        default=None,
        description="signs the UI's browser storage; else a generated 0600 file in the folder",
    )
    storage_secret_file: str = Field(
        default=".edgelink_ui_secret", description="where a generated storage secret is kept"
    )
    warn: UiWarnings = Field(
        default_factory=UiWarnings, description="thresholds of the instance cards' warnings"
    )

    @field_validator("users")
    @classmethod
    def _user_names(cls, users: dict[str, UiUser]) -> dict[str, UiUser]:
        for name in users:
            if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
                raise ValueError(f"user name {name!r}: 1 to 64 letters, digits or _ . @ - only")
        return users


class SentrySettings(BaseModel):
    """``sentry``: send the errors of guarded instance code to a Sentry server (off by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dsn: SecretStr | None = Field(
        default=None, description="the project's DSN; null = off (needs edgelink[sentry])"
    )
    environment: str | None = Field(default=None, description="the environment tag")
    sample_rate: float = Field(default=1.0, ge=0, le=1, description="share of errors sent")


class PluginSettings(BaseModel):
    """``plugins``: the scheduled update check and the index of installable plugins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    update_check_hours: float = Field(
        default=24.0,
        ge=0,
        le=24 * 365,
        description="check every git plugin for a newer version this often; 0 = on demand only",
    )
    index: str | None = Field(
        default=None,
        max_length=2048,
        description="installable plugins: a JSON file (relative to the config folder) or a git"
        " repository (URL or path of a repository); null = plugins/index.json when present",
    )
    index_file: str = Field(
        default="index.json",
        max_length=256,
        description="the index's file inside a git repository",
    )

    @field_validator("index_file")
    @classmethod
    def _inside(cls, value: str) -> str:
        parts = value.replace("\\", "/").split("/")
        if value.startswith("/") or ".." in parts or not value.strip():
            raise ValueError("a relative path inside the repository, without '..'")
        return value


class ServiceSettings(BaseModel):
    """``edgelink.json``: the service around the connections."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api: ApiSettings = ApiSettings()
    bridge: BridgeSettings = BridgeSettings()
    storage: StorageSettings = StorageSettings()
    router: RouterSettings = RouterSettings()
    ui: UiSettings = UiSettings()
    sentry: SentrySettings = SentrySettings()
    plugins: PluginSettings = PluginSettings()
    webhooks: dict[str, WebhookSettings] = Field(
        default_factory=dict, description="webhook targets by name (webhook.<name> in routes)"
    )


def load_service_settings(
    source: str | os.PathLike[str] | dict[str, Any] | None,
) -> ServiceSettings:
    """Load ``edgelink.json`` (or YAML); None gives the defaults.

    Raises:
        ConfigError: naming the file, the JSON path and the reason.
    """
    if source is None:
        return ServiceSettings()
    if isinstance(source, dict):
        file, data = "<dict>", source
    else:
        file = os.fspath(source)
        data = read_document(file)
    if not isinstance(data, dict):
        raise ConfigError("the top level must be an object", file=file)
    try:
        return ServiceSettings.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, file=file) from None


@dataclass(frozen=True, slots=True)
class ConfigFolder:
    """The files of one config folder (each path None when the file is absent).

    Raises:
        ConfigError: from `find` when the folder or its connections file is missing,
            or a file exists in two formats.
    """

    root: Path
    connections: Path
    routing: Path | None
    service: Path | None

    @classmethod
    def find(cls, root: str | os.PathLike[str]) -> ConfigFolder:
        """Find the config files in ``root``."""
        folder = Path(root)
        if not folder.is_dir():
            raise ConfigError("config folder not found", file=str(folder))
        connections = _one(folder, "connections")
        if connections is None:
            raise ConfigError(
                "no connections.json (or .yaml) in the config folder", file=str(folder)
            )
        return cls(folder, connections, _one(folder, "routing"), _one(folder, "edgelink"))

    def kind_of(self, path: str | os.PathLike[str]) -> str | None:
        """Return which file ``path`` is (``connections``, ``routing``, ``edgelink``) or None."""
        p = Path(path)
        if p.parent.resolve() != self.root.resolve() or p.suffix.lower() not in _SUFFIXES:
            return None
        return p.stem if p.stem in ("connections", "routing", "edgelink") else None

    def resolve(self, relative: str) -> Path:
        """Return ``relative`` resolved against the folder (absolute paths stay)."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p


def _one(folder: Path, stem: str) -> Path | None:
    found = [
        folder / f"{stem}{suffix}" for suffix in _SUFFIXES if (folder / f"{stem}{suffix}").exists()
    ]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ConfigError(
            f"{stem} exists in more than one format ({names}); keep one", file=str(folder)
        )
    return found[0] if found else None
