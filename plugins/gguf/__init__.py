"""The ``gguf`` provider plugin: local GGUF models through llama-cpp-python worker processes.

Importing this package imports no engine code: ``llama_cpp`` is loaded only inside the
worker processes (``plugins.gguf.engine``). The machinery (processes, pool, worker
server) is the toolkit's, ``router.workers``; what is GGUF's is the knobs
(``settings``), the provider's config (``provider``) and the engine (``engine``).
"""

from __future__ import annotations

from collections.abc import Callable

from plugins.gguf.worker import COMMAND
from router import Command, Provider, hookimpl


@hookimpl
def register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    from plugins.gguf.provider import GGUFProvider

    register("gguf", GGUFProvider)


@hookimpl
def register_workers(register: Callable[[Command], None]) -> None:
    register(COMMAND)
