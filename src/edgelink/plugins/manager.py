"""Plugins: discover, enable, disable, configure, check for updates, update with rollback, install.

A plugin is a folder under the config folder's ``plugins/`` with a
``manifest.json`` (`edgelink.plugins.manifest`) and a ``README.md``. Its
``entry`` (``module:function``) is imported from its folder, lazily (when it
is enabled), and called with a `PluginHost` through which it registers what
its manifest ``provides``: connection types (`PluginHost.add_driver`), BMS
parsers, targets. Its ``dependencies.packages`` are installed into the
plugin's own ``.deps`` folder (``pip install --target``), never into
edgelink's environment; a ``python`` requirement that this interpreter does
not meet refuses the plugin with the reason.

Enabled state and configs are kept in ``plugins/state.json``. Updates come
from the plugin's git checkout (its newest tag, else its default branch's
head); an update that fails to load or start is rolled back to the previous
commit and the reason is kept (`Plugin.last_error`). The index (a JSON file:
``{"plugins": [{"name", "description", "repository", "version"}]}``) lists
plugins that can be installed (git clone); it is a file, or a file inside a
git repository (`PluginManager.use_index`, fetched again by `refresh_index`
into ``plugins/.index-<hash>``). `check_all` is what the gateway's schedule calls;
it keeps when it last ran and what failed (`PluginManager.status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import importlib
import json
import logging
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgelink._documents import write_atomically
from edgelink.errors import ConfigError, EdgelinkError
from edgelink.plugins._git import CommandError, run
from edgelink.plugins.manifest import PluginManifest, load_manifest
from edgelink.registry import DriverRegistry

__all__ = ["Badge", "Plugin", "PluginError", "PluginHost", "PluginManager"]

logger = logging.getLogger(__name__)


class PluginError(EdgelinkError):
    """A plugin could not be enabled, updated or installed; the message says why."""


class Badge(enum.StrEnum):
    """The plugins page's four badges (the seed's), plus a broken manifest."""

    ACTIVE = "installed_active"
    INACTIVE = "installed_inactive"
    UPDATE = "update_available"
    AVAILABLE = "available"
    INVALID = "invalid"


class PluginHost:
    """What a plugin's entry function gets: its config, and where it registers what it provides."""

    def __init__(
        self, plugin: Plugin, registry: DriverRegistry, manager: PluginManager | None = None
    ) -> None:
        self.plugin = plugin
        self._registry = registry
        self._manager = manager
        self.config: dict[str, Any] = dict(plugin.config)
        self._undo: list[Callable[[], None]] = []
        self._on_config: list[Callable[[dict[str, Any]], None]] = []

    def _declared(self, kind: str, name: str) -> None:
        manifest = self.plugin.manifest
        declared = manifest.provides.get(kind, ()) if manifest is not None else ()
        if name not in declared:
            raise PluginError(
                f"plugin {self.plugin.name}: {kind[:-1]} {name!r} is not in its manifest's "
                f"provides.{kind} ({', '.join(declared) or 'empty'})"
            )

    def add_driver(self, type_name: str, cls: Any) -> None:
        """Register a connection type (it must be in ``provides.drivers``)."""
        self._declared("drivers", type_name)
        if type_name in self._registry.names() and not self._registry.is_plugin(type_name):
            raise PluginError(
                f"plugin {self.plugin.name}: connection type {type_name!r} exists already"
            )
        self._registry.register(type_name, cls)
        self._registry.mark_plugin(type_name, self.plugin.name)
        manifest = self.plugin.manifest
        if manifest is not None and manifest.isolation is not None:
            from edgelink.isolation.spec import parse_isolation

            self._registry.set_isolation(type_name, parse_isolation(manifest.isolation))
        self._undo.append(lambda: self._registry.unregister(type_name))

    def add_bms_parser(self, name: str, cls: Any) -> None:
        """Register a BMS parser (it must be in ``provides.bms_parsers``)."""
        from edgelink.bms import PARSERS

        self._declared("bms_parsers", name)
        if name in PARSERS:
            raise PluginError(f"plugin {self.plugin.name}: BMS parser {name!r} exists already")
        PARSERS[name] = cls

        def forget() -> None:
            PARSERS.pop(name, None)

        self._undo.append(forget)

    def add_target(self, endpoint_id: str, target: Any) -> None:
        """Register a router target (it must be in ``provides.targets``).

        ``target`` is anything with ``async def send(tag, dp)`` (see
        `edgelink.router.targets.Target`); routes reach it as
        ``<endpoint_id>.<tag>``. It is added to the running router at once
        and removed when the plugin is disabled.
        """
        self._declared("targets", endpoint_id)
        if not callable(getattr(target, "send", None)):
            raise PluginError(
                f"plugin {self.plugin.name}: target {endpoint_id!r} needs an async send(tag, dp)"
            )
        manager = self._manager
        if manager is None:
            raise PluginError(f"plugin {self.plugin.name}: targets need the plugin manager")
        owner = manager.target_owners.get(endpoint_id)
        if owner is not None and owner != self.plugin.name:
            raise PluginError(
                f"plugin {self.plugin.name}: target {endpoint_id!r} is plugin {owner}'s"
            )
        manager.set_target(endpoint_id, target, self.plugin.name)
        self._undo.append(lambda: manager.set_target(endpoint_id, None, self.plugin.name))

    def on_config(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(config)`` when the plugin is configured at run time."""
        self._on_config.append(callback)

    def on_disable(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the plugin is disabled (release what it holds)."""
        self._undo.append(callback)

    def _configured(self, config: dict[str, Any]) -> None:
        self.config = dict(config)
        for callback in self._on_config:
            callback(dict(config))

    def _teardown(self) -> None:
        for undo in reversed(self._undo):
            try:
                undo()
            except Exception:  # one failing cleanup must not keep the rest
                logger.exception("plugin %s: cleanup failed", self.plugin.name)
        self._undo.clear()


@dataclass
class Plugin:
    """One plugin: installed (a folder) or only in the index."""

    name: str
    manifest: PluginManifest | None = None
    enabled: bool = False
    active: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    #: Why it is invalid, could not be enabled, or why the last update was rolled back.
    last_error: str | None = None
    #: The version an update would bring, if one is known.
    update_to: str | None = None
    #: What the index says about it (description, repository, version).
    indexed: dict[str, Any] | None = None
    host: PluginHost | None = None

    def badge(self) -> Badge:
        """Its badge on the plugins page."""
        if self.manifest is None:
            return Badge.AVAILABLE if self.indexed is not None else Badge.INVALID
        if self.update_to is not None:
            return Badge.UPDATE
        return Badge.ACTIVE if self.active else Badge.INACTIVE

    def as_dict(self) -> dict[str, Any]:
        """Return it JSON-ready (for the API and the UI)."""
        manifest = self.manifest
        return {
            "name": self.name,
            "badge": str(self.badge()),
            "enabled": self.enabled,
            "active": self.active,
            "version": manifest.version if manifest else (self.indexed or {}).get("version"),
            "description": manifest.description
            if manifest
            else (self.indexed or {}).get("description", ""),
            "manifest": manifest.as_dict() if manifest else None,
            "config": dict(self.config),
            "update_to": self.update_to,
            "last_error": self.last_error,
        }


class PluginManager:
    """The plugins of one config folder.

    Args:
        folder: The plugins folder (``<config>/plugins``); made if missing.
        registry: The connection manager's driver registry (plugins add types to it).
        index: A JSON file listing installable plugins, or None.
        pip_options: Extra ``pip install`` options (e.g. ``--no-index``).
    """

    def __init__(
        self,
        folder: str | Path,
        registry: DriverRegistry,
        *,
        index: str | Path | None = None,
        pip_options: tuple[str, ...] = (),
    ) -> None:
        self.folder = Path(folder)
        self.registry = registry
        self.index = Path(index) if index is not None else None
        self.pip_options = pip_options
        self.plugins: dict[str, Plugin] = {}
        self._lock = asyncio.Lock()
        #: A git repository holding the index (None: the index is a plain file).
        self.index_repository: str | None = None
        #: The index's file inside that repository.
        self.index_file = "index.json"
        #: Why the index's repository could not be fetched, and why the index could not be read.
        self._fetch_error: str | None = None
        self._read_error: str | None = None
        self._fetched = False
        #: When `check_all` last ran (wall clock), and what it found.
        self.last_check: float | None = None
        self.last_check_errors: dict[str, str] = {}
        #: Router targets the active plugins provide (endpoint id -> target), and whose.
        self.targets: dict[str, Any] = {}
        self.target_owners: dict[str, str] = {}
        #: Called ``(endpoint_id, target)`` when a target comes (None: when it goes).
        self.on_target: Callable[[str, Any], None] | None = None

    def set_target(self, endpoint_id: str, target: Any, owner: str) -> None:
        """Add (``target``) or remove (None) a plugin's router target; tell `on_target`."""
        if target is None:
            self.targets.pop(endpoint_id, None)
            self.target_owners.pop(endpoint_id, None)
        else:
            self.targets[endpoint_id] = target
            self.target_owners[endpoint_id] = owner
        if self.on_target is not None:
            self.on_target(endpoint_id, target)

    # -- the index -----------------------------------------------------------

    def use_index(self, source: str | None, root: Path, file: str = "index.json") -> None:
        """Take the index from ``source``: a JSON file or a git repository.

        Args:
            source: A path (relative to ``root``) of a JSON file; a git URL
                (``https://``, ``ssh://``, ``git@``, ``file://``, ``*.git``) or
                the path of a git repository; None keeps the plugins folder's
                ``index.json`` when there is one.
            root: The config folder.
            file: The index's file inside a repository.
        """
        self._fetch_error = self._read_error = None
        self.index_repository = None
        self.index_file = file
        if source is None:
            default = self.folder / "index.json"
            self.index = default if default.is_file() else None
            return
        local = Path(source) if Path(source).is_absolute() else root / source
        is_url = "://" in source or source.startswith("git@") or source.endswith(".git")
        if is_url or (local / ".git").exists() or (local / "HEAD").is_file():
            self.index_repository = source if is_url else str(local)
            self.index = self._index_cache() / file
        else:
            self.index = local

    async def refresh_index(self) -> None:
        """Fetch the index's repository again (clone it the first time); errors are kept.

        A failed fetch keeps the copy fetched before (if any) and sets
        `index_error`, naming the repository and the reason.
        """
        repository = self.index_repository
        if repository is None:
            return
        cache = self._index_cache()
        try:
            if not (cache / ".git").exists():
                shutil.rmtree(cache, ignore_errors=True)
                self.folder.mkdir(parents=True, exist_ok=True)
                await run(["git", "clone", "--quiet", "--depth", "1", repository, str(cache)])
                for old in self.folder.glob(".index-*"):
                    if old != cache:  # the copy of a repository configured before
                        shutil.rmtree(old, ignore_errors=True)
            else:
                await run(["git", "-C", str(cache), "fetch", "--quiet", "--depth", "1", "origin"])
                await run(["git", "-C", str(cache), "reset", "--quiet", "--hard", "FETCH_HEAD"])
        except CommandError as exc:
            self._fetch_error = f"plugin index {repository}: {exc}"
            logger.warning("%s", self._fetch_error)
            return
        self._fetch_error = None
        self._fetched = True
        self.discover()

    def _index_cache(self) -> Path:
        """Where the index's repository is cloned: one folder per repository."""
        digest = hashlib.sha256((self.index_repository or "").encode()).hexdigest()[:12]
        return self.folder / f".index-{digest}"

    @property
    def index_error(self) -> str | None:
        """Why the index could not be fetched or read (None: it was, or there is none)."""
        return self._fetch_error or self._read_error

    def status(self) -> dict[str, Any]:
        """The index's source and error, and the last update check (for the API and the UI)."""
        return {
            "index": {
                "file": str(self.index) if self.index is not None else None,
                "repository": self.index_repository,
                "error": self.index_error,
            },
            "last_check": self.last_check,
            "last_check_errors": dict(self.last_check_errors),
        }

    # -- state -------------------------------------------------------------

    def _state_path(self) -> Path:
        return self.folder / "state.json"

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state_path().read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.error("plugins/state.json unreadable, starting with no plugin enabled: %s", exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self) -> None:
        state = {
            p.name: {"enabled": p.enabled, "config": p.config}
            for p in self.plugins.values()
            if p.manifest is not None
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(self._state_path(), json.dumps(state, indent=2, sort_keys=True) + "\n")

    def discover(self) -> list[Plugin]:
        """Read every plugin folder and the index; a bad manifest is kept with its error."""
        state = self._read_state()
        found: dict[str, Plugin] = {}
        if self.folder.is_dir():
            for sub in sorted(self.folder.iterdir()):
                if not sub.is_dir() or sub.name.startswith("."):
                    continue
                old = self.plugins.get(sub.name)
                plugin = old or Plugin(sub.name)
                saved = state.get(sub.name) or {}
                try:
                    plugin.manifest = load_manifest(sub)
                    if old is None or (old.last_error and old.last_error.startswith("plugin ")):
                        plugin.last_error = None
                except ConfigError as exc:
                    plugin.manifest = None
                    plugin.last_error = str(exc)
                if old is None:
                    plugin.enabled = bool(saved.get("enabled", False))
                    plugin.config = dict(saved.get("config") or {})
                found[sub.name] = plugin
        for entry in self._read_index():
            name = entry["name"]
            plugin = found.get(name) or self.plugins.get(name) or Plugin(name)
            plugin.indexed = entry
            found.setdefault(name, plugin)
        self.plugins = found
        return list(found.values())

    def _read_index(self) -> list[dict[str, Any]]:
        entries, error = self._index_entries()
        if error is not None and error != self._read_error:
            logger.warning("%s", error)
        self._read_error = error
        return entries

    def _index_entries(self) -> tuple[list[dict[str, Any]], str | None]:
        """The index's usable entries and what is wrong with it (None: nothing)."""
        if self.index is None:
            return [], None
        where = (
            f"plugin index {self.index_file} in {self.index_repository}"
            if self.index_repository
            else f"plugin index {self.index}"
        )
        try:
            data = json.loads(self.index.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if self.index_repository is not None and not self._fetched:
                return [], None  # not fetched yet: `refresh_index` will
            return [], f"{where}: no such file"
        except (OSError, ValueError) as exc:
            return [], f"{where}: unreadable: {exc}"
        entries = data.get("plugins") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            return [], f"{where}: 'plugins' must be a list"
        good = [
            e
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("name"), str) and e.get("repository")
        ]
        if len(good) == len(entries):
            return good, None
        bad = next(i for i, e in enumerate(entries) if e not in good)
        return good, (
            f"{where}: plugins[{bad}] needs a 'name' and a 'repository'"
            f" ({len(entries) - len(good)} left out)"
        )

    def as_list(self) -> list[dict[str, Any]]:
        """Every plugin, installed or available, as dicts."""
        return [p.as_dict() for p in sorted(self.plugins.values(), key=lambda p: p.name)]

    def get(self, name: str) -> Plugin:
        """Return a plugin by name.

        Raises:
            KeyError: for an unknown name.
        """
        plugin = self.plugins.get(name)
        if plugin is None:
            raise KeyError(f"no plugin {name!r}")
        return plugin

    def readme(self, name: str) -> str:
        """Return a plugin's README.md text ('' if it has none)."""
        plugin = self.get(name)
        if plugin.manifest is None:
            return ""
        path = plugin.manifest.folder / "README.md"
        try:
            return path.read_text(encoding="utf-8")[:200_000]
        except OSError:
            return ""

    # -- enable / disable / configure -----------------------------------------

    async def start(self) -> None:
        """Discover, then enable every plugin the state file says is enabled (errors kept)."""
        self.discover()
        for plugin in list(self.plugins.values()):
            if plugin.enabled and plugin.manifest is not None and not plugin.active:
                try:
                    await self._activate(plugin)
                except PluginError as exc:
                    plugin.last_error = exc.message
                    logger.error("%s", exc.message)

    async def enable(self, name: str) -> dict[str, Any]:
        """Enable a plugin: check Python, install its packages, import it, let it register.

        Raises:
            KeyError: for an unknown plugin.
            PluginError: with the reason; the plugin stays disabled.
        """
        async with self._lock:
            plugin = self.get(name)
            if plugin.manifest is None:
                raise PluginError(plugin.last_error or f"plugin {name} is not installed")
            if not plugin.active:
                await self._activate(plugin)
            plugin.enabled = True
            self._save_state()
            return plugin.as_dict()

    async def disable(self, name: str) -> dict[str, Any]:
        """Disable a plugin: it unregisters what it provided and its modules are dropped.

        Raises:
            KeyError: for an unknown plugin.
        """
        async with self._lock:
            plugin = self.get(name)
            self._deactivate(plugin)
            plugin.enabled = False
            self._save_state()
            return plugin.as_dict()

    async def disable_all(self) -> list[str]:
        """Deactivate every active plugin (panic); the state file keeps them enabled."""
        async with self._lock:
            stopped = [p.name for p in self.plugins.values() if p.active]
            for plugin in self.plugins.values():
                self._deactivate(plugin)
            return stopped

    def configure(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """Validate ``config`` against the plugin's config_schema, keep it and hand it over.

        Raises:
            KeyError: for an unknown plugin.
            ConfigError: naming the field and why; nothing changes.
        """
        import jsonschema

        plugin = self.get(name)
        if plugin.manifest is None:
            raise ConfigError(f"plugin {name} is not installed")
        validator = jsonschema.Draft202012Validator(plugin.manifest.config_schema)
        errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.absolute_path) or "(config)"
            raise ConfigError(f"plugin {name}: {where}: {first.message}", path=where)
        plugin.config = dict(config)
        self._save_state()
        if plugin.host is not None:
            plugin.host._configured(plugin.config)
        return plugin.as_dict()

    def defaults(self, manifest: PluginManifest) -> dict[str, Any]:
        """Return the config_schema's defaults."""
        props = manifest.config_schema.get("properties") or {}
        return {k: v["default"] for k, v in props.items() if isinstance(v, dict) and "default" in v}

    async def _activate(self, plugin: Plugin) -> None:
        manifest = plugin.manifest
        assert manifest is not None
        self._check_python(manifest)
        await self._install_packages(manifest)
        config = {**self.defaults(manifest), **plugin.config}
        plugin.config = config
        host = PluginHost(plugin, self.registry, self)
        module_name, _, attr = manifest.entry.partition(":")
        paths = [str(manifest.folder), str(manifest.folder / ".deps")]
        for path in reversed(paths):
            if path not in sys.path:
                sys.path.insert(0, path)
        try:
            self._forget_modules(manifest.folder)
            importlib.invalidate_caches()
            module = importlib.import_module(module_name)
            entry = getattr(module, attr)
            entry(host)
        except PluginError:
            host._teardown()
            self._unload(manifest)
            raise
        except Exception as exc:  # a plugin's bug must never reach the gateway
            host._teardown()
            self._unload(manifest)
            raise PluginError(
                f"plugin {plugin.name}: {manifest.entry} failed: {type(exc).__name__}: {exc}"
            ) from exc
        plugin.host = host
        plugin.active = True
        plugin.last_error = None
        logger.info("plugin %s %s enabled", plugin.name, manifest.version)

    def _deactivate(self, plugin: Plugin) -> None:
        host, plugin.host = plugin.host, None
        if host is not None:
            host._teardown()
        if plugin.manifest is not None:
            self._unload(plugin.manifest)
        plugin.active = False

    def _unload(self, manifest: PluginManifest) -> None:
        self._forget_modules(manifest.folder)
        for path in (str(manifest.folder), str(manifest.folder / ".deps")):
            with contextlib.suppress(ValueError):
                sys.path.remove(path)

    @staticmethod
    def _forget_modules(folder: Path) -> None:
        root = str(folder.resolve())
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if file and str(Path(file).resolve()).startswith(root):
                del sys.modules[name]

    @staticmethod
    def _check_python(manifest: PluginManifest) -> None:
        if not manifest.python:
            return
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            wanted = SpecifierSet(manifest.python)
        except InvalidSpecifier:
            raise PluginError(
                f"plugin {manifest.name}: dependencies.python {manifest.python!r} is not a "
                "version requirement"
            ) from None
        here = platform.python_version()
        if here not in wanted:
            raise PluginError(
                f"plugin {manifest.name} needs Python {manifest.python}; this is {here}"
            )

    async def _install_packages(self, manifest: PluginManifest) -> None:
        if not manifest.packages:
            return
        target = manifest.folder / ".deps"
        marker = target / ".edgelink-installed"
        wanted = "\n".join(manifest.packages)
        if marker.is_file() and marker.read_text(encoding="utf-8") == wanted:
            return
        shutil.rmtree(target, ignore_errors=True)
        try:
            await run(
                [
                    sys.executable, "-m", "pip", "install", "--quiet", "--no-input",
                    "--target", str(target), *self.pip_options, *manifest.packages,
                ]
            )  # fmt: skip
        except CommandError as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise PluginError(
                f"plugin {manifest.name}: its packages cannot be installed "
                f"({', '.join(manifest.packages)}): {exc}"
            ) from None
        marker.write_text(wanted, encoding="utf-8")

    # -- git: updates, install, remove -------------------------------------

    async def check_update(self, name: str) -> dict[str, Any]:
        """Fetch the plugin's repository; set ``update_to`` if a newer tag or head exists.

        Raises:
            KeyError: for an unknown plugin.
            PluginError: if it is not a git checkout or the fetch fails.
        """
        plugin = self.get(name)
        if plugin.manifest is None:
            raise PluginError(f"plugin {name} is not installed")
        target, label = await self._update_target(plugin.manifest.folder)
        head = (await self._git(plugin.manifest.folder, "rev-parse", "HEAD")).strip()
        plugin.update_to = label if target != head else None
        return plugin.as_dict()

    async def check_all(self) -> dict[str, Any]:
        """Check every installed git plugin (the schedule); failures are kept, not raised.

        Returns:
            ``updates`` (plugin -> the version an update brings) and
            ``errors`` (plugin -> why its check failed).
        """
        updates: dict[str, str] = {}
        errors: dict[str, str] = {}
        for plugin in list(self.plugins.values()):
            if plugin.manifest is not None and (plugin.manifest.folder / ".git").exists():
                try:
                    async with self._lock:  # never beside an update of the same checkout
                        await self.check_update(plugin.name)
                except PluginError as exc:
                    logger.warning("%s", exc.message)
                    errors[plugin.name] = exc.message
                    continue
                if plugin.update_to is not None:
                    updates[plugin.name] = plugin.update_to
        self.last_check = time.time()
        self.last_check_errors = errors
        return {"updates": updates, "errors": errors}

    async def _update_target(self, folder: Path) -> tuple[str, str]:
        await self._git(folder, "fetch", "--tags", "--quiet", "origin")
        tags = (await self._git(folder, "tag", "--sort=-v:refname")).split()
        if tags:
            rev = await self._git(folder, "rev-list", "-n", "1", tags[0])
            return rev.strip(), tags[0]
        remote_head = "origin/HEAD"
        try:
            rev = await self._git(folder, "rev-parse", remote_head)
        except PluginError:
            branch = (await self._git(folder, "rev-parse", "--abbrev-ref", "HEAD")).strip()
            remote_head = f"origin/{branch}"
            rev = await self._git(folder, "rev-parse", remote_head)
        return rev.strip(), remote_head

    async def update(self, name: str) -> dict[str, Any]:
        """Update to the newest tag (or head); roll back if the new version fails to load.

        Raises:
            KeyError: for an unknown plugin.
            PluginError: if the update failed (it was rolled back; the reason says why).
        """
        async with self._lock:
            plugin = self.get(name)
            if plugin.manifest is None:
                raise PluginError(f"plugin {name} is not installed")
            folder = plugin.manifest.folder
            previous = (await self._git(folder, "rev-parse", "HEAD")).strip()
            target, label = await self._update_target(folder)
            was_active = plugin.active
            self._deactivate(plugin)
            try:
                await self._git(folder, "checkout", "--quiet", "--detach", target)
                plugin.manifest = load_manifest(folder)
                if was_active or plugin.enabled:
                    await self._activate(plugin)
            except (PluginError, ConfigError) as exc:
                reason = exc.message if isinstance(exc, EdgelinkError) else str(exc)
                self._deactivate(plugin)
                await self._git(folder, "checkout", "--quiet", "--detach", previous)
                plugin.manifest = load_manifest(folder)
                if was_active:
                    await self._activate(plugin)
                plugin.last_error = f"update to {label} rolled back: {reason}"
                raise PluginError(f"plugin {name}: {plugin.last_error}") from None
            plugin.update_to = None
            plugin.last_error = None
            self._save_state()
            return plugin.as_dict()

    async def install(self, name: str) -> dict[str, Any]:
        """Clone an indexed plugin into the plugins folder (disabled until enabled).

        Raises:
            KeyError: if the index does not list it.
            PluginError: if it is installed already, the clone fails or its manifest is bad.
        """
        async with self._lock:
            plugin = self.get(name)
            if plugin.indexed is None:
                raise KeyError(f"the index does not list {name!r}")
            folder = self.folder / name
            if folder.exists():
                raise PluginError(f"plugin {name} is installed already")
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                await run(["git", "clone", "--quiet", plugin.indexed["repository"], str(folder)])
                plugin.manifest = load_manifest(folder)
            except (CommandError, ConfigError) as exc:
                shutil.rmtree(folder, ignore_errors=True)
                plugin.manifest = None
                raise PluginError(f"plugin {name} cannot be installed: {exc}") from None
            plugin.last_error = None
            self._save_state()
            return plugin.as_dict()

    async def _git(self, folder: Path, *args: str) -> str:
        if not (folder / ".git").exists():
            raise PluginError(f"plugin {folder.name} is not a git checkout: no updates")
        try:
            return await run(["git", "-C", str(folder), *args], timeout=120.0)
        except CommandError as exc:
            raise PluginError(f"plugin {folder.name}: {exc}") from None
