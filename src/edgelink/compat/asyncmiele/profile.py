"""`DeviceProfile` and the guide's config file: which device, how to reach it.

A profile becomes one supervised edgelink connection: ``type`` names the
driver (``tcp``, ``http``, ``modbus_tcp``, a plugin's or one's own
registered type), ``config`` its settings. Without a ``config`` one is made
from ``host`` and ``port``: ``{"base_url": "http://host:port"}`` for
``http``, ``{"host": ..., "port": ...}`` for the others.

The guide's Miele fields ``group_id`` and ``group_key`` are kept on the
profile (the key is never shown in its ``repr``) and handed to the driver in
its config for a type that is not one of edgelink's built-ins (a Miele driver
of one's own reads them there); edgelink has no driver for Miele's encrypted
protocol itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from edgelink.errors import ConfigError
from edgelink.registry import BUILTIN_DRIVERS

__all__ = ["SETTING_NAMES", "DeviceProfile", "GuideConfig", "load_guide_config"]

#: ``connection_settings`` keys of the guide's config file (the manager's arguments).
SETTING_NAMES: Final = (
    "max_connections",
    "connection_timeout",
    "health_check_interval",
    "retry_count",
    "retry_delay",
)


@dataclass(frozen=True)
class DeviceProfile:
    """One device: its id, where it is, and the edgelink connection that reaches it.

    Args:
        device_id: The device's id (the connection id too).
        host: Its address.
        port: Its port, if the driver needs one.
        type: The edgelink driver type (default ``http``).
        config: The driver's config; made from ``host``/``port`` when None.
        group_id: The guide's Miele group id (kept; see the module doc).
        group_key: The guide's Miele group key (kept, never shown).
        settings: Supervision settings of this connection only (edgelink's
            names, e.g. ``{"health_check_timeout": 2}``).
        state_tags: Tags ``client.get_device_state`` reads.
    """

    device_id: str
    host: str | None = None
    port: int | None = None
    type: str = "http"
    config: Mapping[str, Any] | None = None
    group_id: str | None = None
    group_key: str | None = field(default=None, repr=False)
    settings: Mapping[str, Any] = field(default_factory=dict)
    state_tags: tuple[str, ...] = ()

    def connection_config(self) -> dict[str, Any]:
        """The driver config of the profile's connection."""
        if self.config is not None:
            config = dict(self.config)
        elif self.host is None:
            raise ConfigError(
                f"device {self.device_id!r}: give a host (or a config)",
                path=f"devices.{self.device_id}.host",
            )
        elif self.type == "http":
            port = f":{self.port}" if self.port is not None else ""
            config = {"base_url": f"http://{self.host}{port}"}
        else:
            config = {"host": self.host}
            if self.port is not None:
                config["port"] = self.port
        if self.type not in BUILTIN_DRIVERS:
            for name in ("group_id", "group_key"):
                value = getattr(self, name)
                if value is not None:
                    config.setdefault(name, value)
        return config

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], *, where: str = "device") -> DeviceProfile:
        """A profile from one entry of the guide's ``devices`` list.

        Keys: ``id``, ``host``, ``port``, ``type``, ``config``, ``group_id``,
        ``group_key``, ``settings``, ``state_tags``.

        Raises:
            ConfigError: naming ``where`` and the key, for a missing id or a
                key of the wrong kind or unknown.
        """
        known = {"id", "host", "port", "type", "config", "group_id", "group_key"}
        known |= {"settings", "state_tags", "name"}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})",
                path=f"{where}.{unknown[0]}",
            )
        device_id = entry.get("id")
        if not isinstance(device_id, str) or not device_id:
            raise ConfigError("id is required: the device's id, a string", path=f"{where}.id")
        kinds: dict[str, tuple[type, ...]] = {
            "host": (str,),
            "port": (int,),
            "type": (str,),
            "config": (dict,),
            "group_id": (str,),
            "group_key": (str,),
            "settings": (dict,),
            "state_tags": (list,),
        }
        for key, allowed in kinds.items():
            value = entry.get(key)
            if value is not None and (not isinstance(value, allowed) or isinstance(value, bool)):
                wanted = " or ".join(t.__name__ for t in allowed)
                raise ConfigError(f"must be {wanted}, got {value!r}", path=f"{where}.{key}")
        return cls(
            device_id=device_id,
            host=entry.get("host"),
            port=entry.get("port"),
            type=entry.get("type") or "http",
            config=entry.get("config"),
            group_id=entry.get("group_id"),
            group_key=entry.get("group_key"),
            settings=entry.get("settings") or {},
            state_tags=tuple(str(t) for t in entry.get("state_tags") or ()),
        )


@dataclass(frozen=True)
class GuideConfig:
    """The guide's config file: its devices, and the manager's ``connection_settings``."""

    devices: tuple[DeviceProfile, ...]
    connection_settings: Mapping[str, Any]


def load_guide_config(source: str | Path | Mapping[str, Any]) -> GuideConfig:
    """Read ``{"devices": [...], "connection_settings": {...}}`` from a file or a dict.

    Raises:
        ConfigError: naming the file and the JSON path: not JSON, a missing
            or malformed part, an unknown setting, a device id twice.
    """
    file: str | None = None
    if isinstance(source, Mapping):
        document: Any = source
    else:
        file = str(source)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror or exc}", file=file) from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", file=file
            ) from None
    try:
        return _parse(document)
    except ConfigError as exc:
        raise ConfigError(exc.message, file=file, path=exc.path) from None


def _parse(document: Any) -> GuideConfig:
    if not isinstance(document, Mapping):
        raise ConfigError("the config must be an object with 'devices'")
    devices = document.get("devices", [])
    if not isinstance(devices, list):
        raise ConfigError("must be a list of device objects", path="devices")
    settings = document.get("connection_settings", {})
    if not isinstance(settings, Mapping):
        raise ConfigError("must be an object", path="connection_settings")
    for key in settings:
        if key not in SETTING_NAMES:
            raise ConfigError(
                f"unknown setting (known: {', '.join(SETTING_NAMES)})",
                path=f"connection_settings.{key}",
            )
    profiles: list[DeviceProfile] = []
    seen: set[str] = set()
    for i, entry in enumerate(devices):
        where = f"devices[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"must be an object, got {entry!r}", path=where)
        profile = DeviceProfile.from_dict(entry, where=where)
        if profile.device_id in seen:
            raise ConfigError(f"device id {profile.device_id!r} twice", path=f"{where}.id")
        seen.add(profile.device_id)
        profiles.append(profile)
    return GuideConfig(tuple(profiles), dict(settings))
