"""The ``dynamic`` provider plugin: models loaded on demand from a models folder, with a
TTL, LRU eviction, grouped swaps, ``cmd`` engines, an inventory and Hugging Face downloads,
behind XandRouting's management API (docs/dynamic.md).

Importing this package imports no engine and no download library: the engines run in
worker processes (the gguf and gptq providers' workers, or a ``cmd``), and
``huggingface_hub``/``aiosqlite`` (the ``dynamic`` extra) are imported by the downloads.
"""

from __future__ import annotations

from collections.abc import Callable

from router import Command, Provider, Route, RouterView, hookimpl


@hookimpl
def register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    from plugins.dynamic.provider import DynamicProvider

    register("dynamic", DynamicProvider)


@hookimpl
def register_routes(register: Callable[[Route], None], router: RouterView) -> None:
    from plugins.dynamic.api import ManagementAPI

    for route in ManagementAPI(router).routes():
        register(route)


@hookimpl
def register_commands(register: Callable[[Command], None]) -> None:
    from plugins.dynamic.pull import COMMAND

    register(COMMAND)
