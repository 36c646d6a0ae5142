"""Local engines through the router vs called directly (tokens/s), when available.

This section is a plug-in point of ``bench.run``: ``run(args)`` returns a result dict, or
one with ``skipped`` saying why nothing was measured. The local-engine providers
(llama-cpp-python behind the ``gguf`` provider, transformers) are built separately; until
the router has such a provider and the engine is installed, the section is skipped with a
clear note instead of failing the run.

What it should measure once present (see shared notes on local engines): on the same tiny
GGUF, tokens/s and the added time per token (µs) through the router vs calling
``llama_cpp.Llama`` directly in the same run; and the tokens/s ratio on a random GGUF with
a realistic per-token cost. Target: at least 95% of direct tokens/s.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any


def _provider_names() -> set[str]:
    from router.plugins import make_plugin_manager, providers

    return set(providers(make_plugin_manager()))


def availability() -> tuple[bool, str]:
    """Whether the local-engine section can run, and if not, why."""
    if importlib.util.find_spec("llama_cpp") is None:
        return False, "llama-cpp-python is not installed (pip install 'router[gguf]')"
    try:
        names = _provider_names()
    except Exception as exc:  # noqa: BLE001 - report, don't fail the benchmark
        return False, f"the router's plugins could not be loaded: {exc}"
    if "gguf" not in names:
        return False, "the router has no 'gguf' provider on this branch yet"
    if importlib.util.find_spec("bench.engines_gguf") is None:
        return False, "the gguf provider is present but bench/engines_gguf.py (its measurement) is not"
    return True, "ok"


def run(args: Any) -> dict[str, Any]:
    ok, why = availability()
    if not ok:
        return {"skipped": why}
    module = importlib.import_module("bench.engines_gguf")
    return module.run(args)  # type: ignore[no-any-return]
