"""``edgelink migrate plc-configs``: the Edge OS v4.x PLC settings as ``connections.json`` entries.

v4.x talked to one PLC, named by ``plc_ams_net_id`` in its config; v4.6
planned ``plc_configs.json`` with one entry per PLC. Both become ``ads``
connections:

- one object with ``plc_ams_net_id`` (and optionally ``plc_ip`` /
  ``plc_host``, ``plc_ams_port`` / ``plc_port``, ``plc_name``, ``plc_id``);
- ``plc_configs.json``: a list of PLC entries, an object with a ``plcs`` /
  ``plc_configs`` list, or an object of entries by id. An entry names its
  PLC by ``ams_net_id`` (or ``plc_ams_net_id`` / ``net_id``), and may have
  ``id``, ``name``, ``ip`` / ``host`` / ``ip_address``, ``ams_port`` /
  ``port`` (the runtime's port: 801 TwinCAT 2, 851 TwinCAT 3) and
  ``enabled``.

Connection ids are the entry's ``id`` (or its key), else ``plc_001``,
``plc_002``, ... in order, the Edge OS document's names. Every connection
made is validated as ``edgelink run`` would build it; a bad entry is an
error naming the file and the entry's path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgelink.errors import ConfigError

__all__ = ["migrate_plc_configs", "migrate_plc_file", "write_connections"]

_NET_ID_KEYS = ("ams_net_id", "plc_ams_net_id", "net_id", "amsNetId")
_HOST_KEYS = ("ip", "host", "ip_address", "plc_ip", "plc_host", "address")
_PORT_KEYS = ("ams_port", "port", "plc_ams_port", "plc_port")
_NAME_KEYS = ("name", "plc_name", "description")
_ID_KEYS = ("id", "plc_id", "connection_id")
_KNOWN = {*_NET_ID_KEYS, *_HOST_KEYS, *_PORT_KEYS, *_NAME_KEYS, *_ID_KEYS, "enabled"}
#: Ports of the AMS/TCP transport (48898), not the PLC runtime's.
_TRANSPORT_PORT = 48898


def _pick(entry: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in entry and entry[key] not in (None, ""):
            return entry[key]
    return None


def _entries(document: Any, where: str) -> list[tuple[str, str | None, Mapping[str, Any]]]:
    """(path, id from a key, entry) of every PLC in the document."""
    if isinstance(document, Mapping):
        if any(key in document for key in ("plc_ams_net_id", "ams_net_id")):
            return [("", None, document)]
        for key in ("plcs", "plc_configs", "plc"):
            if key in document:
                return [(f"{key}{path}", cid, e) for path, cid, e in _entries(document[key], where)]
        if document and all(isinstance(v, Mapping) for v in document.values()):
            return [(f".{key}", str(key), value) for key, value in document.items()]
        raise ConfigError(
            "no PLC found: expected plc_ams_net_id, a list of PLC entries, "
            "or an object with a 'plcs' list",
            file=where,
        )
    if isinstance(document, list):
        found: list[tuple[str, str | None, Mapping[str, Any]]] = []
        for i, entry in enumerate(document):
            if not isinstance(entry, Mapping):
                raise ConfigError(
                    f"a PLC entry must be an object, got {entry!r}", file=where, path=f"[{i}]"
                )
            found.append((f"[{i}]", None, entry))
        if not found:
            raise ConfigError("the list of PLCs is empty", file=where)
        return found
    raise ConfigError(f"expected an object or a list, got {type(document).__name__}", file=where)


def migrate_plc_configs(
    document: Any, *, source: str = "<plc configs>", notes: list[str] | None = None
) -> dict[str, Any]:
    """Turn a v4.x PLC config (parsed JSON) into a ``connections.json`` document.

    Keys of an entry that have no place in an ``ads`` connection are left
    out; with ``notes``, one line per entry that had any says which.

    Raises:
        ConfigError: naming ``source`` and the entry's path: no net id, a
            malformed one, an id used twice, or anything ``edgelink run``
            would refuse about the connection made.
    """
    from edgelink.manager import ConnectionManager

    checker = ConnectionManager()  # one, for every entry: it builds each driver as run would
    connections: dict[str, Any] = {}
    for n, (path, key_id, entry) in enumerate(_entries(document, source), start=1):
        at = path.lstrip(".") or None
        net_id = _pick(entry, _NET_ID_KEYS)
        if not isinstance(net_id, str):
            raise ConfigError(
                "ams_net_id (or plc_ams_net_id) is required, a.b.c.d.e.f", file=source, path=at
            )
        cid = str(_pick(entry, _ID_KEYS) or key_id or f"plc_{n:03d}")
        if cid in connections:
            raise ConfigError(f"connection id {cid!r} is used twice", file=source, path=at)
        config: dict[str, Any] = {"ams_net_id": net_id.strip()}
        host = _pick(entry, _HOST_KEYS)
        if host is not None:
            config["host"] = host
        port = _pick(entry, _PORT_KEYS)
        if port is not None and port != _TRANSPORT_PORT:
            config["ams_port"] = port
        spec: dict[str, Any] = {"type": "ads", "config": config}
        name = _pick(entry, _NAME_KEYS)
        if name is not None:
            spec["name"] = str(name)
        if entry.get("enabled") is False:
            spec["enabled"] = False
        connections[cid] = spec
        ignored = sorted(str(k) for k in entry if k not in _KNOWN)
        if ignored and notes is not None:
            notes.append(f"{source}: {at or '(root)'}: not migrated: {', '.join(ignored)}")
        try:
            checker.check_config({"connections": {cid: spec}})
        except ConfigError as exc:
            field = (exc.path or "").removeprefix(f"connections.{cid}.config.")
            raise ConfigError(f"{field}: {exc.message}", file=source, path=at) from None
    return {"connections": connections}


def migrate_plc_file(path: str | Path, notes: list[str] | None = None) -> dict[str, Any]:
    """`migrate_plc_configs` of a JSON file.

    Raises:
        ConfigError: the file is missing or not JSON (with line and column),
            or as `migrate_plc_configs`.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(file)) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", file=str(file)
        ) from None
    return migrate_plc_configs(document, source=str(file), notes=notes)


def write_connections(migrated: Mapping[str, Any], out: str | Path) -> list[str]:
    """Add the migrated connections to ``out`` (made if missing); return the ids added.

    An existing file keeps everything it has; the migrated connections are
    added beside its own. The file is written whole to a temporary file and
    renamed over the old one, so a failure leaves it as it was.

    Raises:
        ConfigError: ``out`` is not a connections file, or already has one
            of the ids (nothing is written then).
    """
    target = Path(out)
    existing: dict[str, Any] = {"connections": {}}
    if target.exists():
        try:
            loaded = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read it as JSON: {exc}", file=str(target)) from None
        if not isinstance(loaded, dict) or not isinstance(loaded.get("connections", {}), dict):
            raise ConfigError(
                "not a connections.json ('connections' must be an object)", file=str(target)
            )
        existing = loaded
        existing.setdefault("connections", {})
    taken = sorted(set(existing["connections"]) & set(migrated["connections"]))
    if taken:
        raise ConfigError(
            f"already has connection {', '.join(map(repr, taken))}; "
            "give the PLC entries an 'id' of their own. Nothing was written",
            file=str(target),
        )
    existing["connections"].update(migrated["connections"])
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(existing, indent=2) + "\n", encoding="utf-8")
    tmp.replace(target)
    return list(migrated["connections"])
