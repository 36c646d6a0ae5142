"""The plugin manager: built-in plugins and third-party ones, registered the same way.

Third-party plugins arrive through the ``router`` setuptools entry-point group.
``ROUTER_LOAD_PLUGINS`` restricts what loads: a comma-separated list of plugin names
(built-in module names such as ``plugins.gguf``, or entry-point names); empty loads none.
``ROUTER_TRACE_PLUGINS=1`` prints every hook call to stderr.

Nothing else in the core names a built-in plugin: they are modules in ``DEFAULT_PLUGINS``.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points

import pluggy

from router import hookspecs

DEFAULT_PLUGINS: tuple[str, ...] = (
    "plugins.strategies",
    "plugins.openai_compatible",
    "plugins.gguf",
    "plugins.gptq",
    "plugins.dynamic",
    "plugins.keys",
    "plugins.response_cache",
    "plugins.generation",
    "plugins.reasoning",
    "plugins.routing_info",
    "plugins.dashboard",
    "plugins.compat_api",
    "plugins.anthropic_messages",
    "plugins.responses_api",
)


def make_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    wanted = _wanted_plugins()
    for module_name in DEFAULT_PLUGINS:
        if wanted is None or module_name in wanted:
            pm.register(importlib.import_module(module_name), name=module_name)
    if wanted is None:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    else:
        for ep in entry_points(group=hookspecs.PROJECT):
            if ep.name in wanted and not pm.has_plugin(ep.name):
                pm.register(ep.load(), name=ep.name)
    pm.check_pending()
    if os.environ.get("ROUTER_TRACE_PLUGINS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def _wanted_plugins() -> set[str] | None:
    value = os.environ.get("ROUTER_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}
