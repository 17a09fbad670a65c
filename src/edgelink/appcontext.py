"""`AppContext`: the seed's ``app_context``, which carries the running modules.

The seed's drivers take an ``app_context`` and find the connection manager
through it: ``app_context.module_manager.get_module('connection_manager')``.
A `ConnectionManager` built without a ``context`` makes an `AppContext` and
registers itself there as ``connection_manager``; the service (``edgelink
run``) registers its gateway as ``gateway``. Nothing here runs anything: the
context is a named lookup of objects that exist anyway.

Example:
    manager = ConnectionManager()
    assert manager.context.module_manager.get_module("connection_manager") is manager
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["AppContext", "ModuleManager"]


class ModuleManager:
    """The modules of one application, by name. Thread-safe.

    Example:
        modules = ModuleManager()
        modules.register_module("billing", billing)
        modules.get_module("billing")   # billing; None for an unknown name
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._modules: dict[str, Any] = {}

    def register_module(self, name: str, module: Any, *, replace: bool = False) -> None:
        """Register ``module`` under ``name``.

        Raises:
            ValueError: if ``name`` is empty, or already taken by another
                object and ``replace`` is False.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"module name must be a non-empty string, got {name!r}")
        with self._lock:
            held = self._modules.get(name)
            if held is not None and held is not module and not replace:
                raise ValueError(
                    f"module {name!r} is already registered ({type(held).__name__}); "
                    "pass replace=True to replace it"
                )
            self._modules[name] = module

    def unregister_module(self, name: str) -> None:
        """Remove the module registered under ``name``; nothing if there is none."""
        with self._lock:
            self._modules.pop(name, None)

    def get_module(self, name: str) -> Any | None:
        """Return the module registered under ``name``, or None (as the seed expects)."""
        with self._lock:
            return self._modules.get(name)

    def has_module(self, name: str) -> bool:
        """Return whether a module is registered under ``name``."""
        with self._lock:
            return name in self._modules

    @property
    def modules(self) -> dict[str, Any]:
        """Every module by name (a copy)."""
        with self._lock:
            return dict(self._modules)

    def __repr__(self) -> str:
        return f"<ModuleManager {sorted(self.modules)}>"


class AppContext:
    """What a driver's ``app_context`` (its ``context``) holds: the `ModuleManager`.

    Args:
        modules: Modules to register at once, by name.
    """

    def __init__(self, **modules: Any) -> None:
        self.module_manager = ModuleManager()
        for name, module in modules.items():
            self.module_manager.register_module(name, module)

    def __repr__(self) -> str:
        return f"<AppContext {sorted(self.module_manager.modules)}>"


def context_with(context: Any, name: str, module: Any) -> Any:
    """Return ``context`` with ``module`` registered under ``name`` if it has room for it.

    None becomes a new `AppContext`. A context with a ``module_manager`` gets
    ``module`` registered unless ``name`` is already taken (a facade such as
    `SyncConnectionManager` registers itself first and keeps the name). Any
    other context is the user's own and is returned untouched.
    """
    if context is None:
        context = AppContext()
    modules = getattr(context, "module_manager", None)
    if isinstance(modules, ModuleManager) and not modules.has_module(name):
        modules.register_module(name, module)
    return context
