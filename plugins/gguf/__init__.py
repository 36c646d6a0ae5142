"""The ``gguf`` provider plugin: local GGUF models through llama-cpp-python worker processes.

Importing this package imports no engine code: ``llama_cpp`` is loaded only inside the
worker processes (``plugins.gguf.worker`` / ``plugins.gguf.engine``).
"""

from __future__ import annotations

from router import hookimpl


@hookimpl
def register_providers(register):  # type: ignore[no-untyped-def]
    from plugins.gguf.provider import GGUFProvider

    register("gguf", GGUFProvider)
