"""Plugins: folders with a manifest under ``<config>/plugins``, enabled at run time.

See docs/plugins.md.
"""

from edgelink.plugins.manager import Badge, Plugin, PluginError, PluginHost, PluginManager
from edgelink.plugins.manifest import PluginManifest, load_manifest

__all__ = [
    "Badge",
    "Plugin",
    "PluginError",
    "PluginHost",
    "PluginManager",
    "PluginManifest",
    "load_manifest",
]
