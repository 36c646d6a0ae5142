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
    from router.plugins import make_plugin_manager
    from router.registry import Registry

    return set(Registry.collect(make_plugin_manager()).providers)


def availability() -> tuple[bool, str]:
    """Whether the local-engine section can run, and if not, why."""
    if importlib.util.find_spec("llama_cpp") is None:
        return False, "llama-cpp-python is not installed (pip install 'router[gguf]')"
    try:
        names = _provider_names()
    except Exception as exc:  # noqa: BLE001 - report, don't fail the benchmark
        return False, f"the router's plugins could not be loaded: {exc}"
    if "gguf" not in names:
        return False, "the router has no 'gguf' provider"
    if importlib.util.find_spec("bench.gguf_tokens") is None:
        return False, "bench/gguf_tokens.py (the gguf measurement) is missing"
    return True, "ok"


def run(args: Any) -> dict[str, Any]:
    """The tiny demo GGUF through the router vs llama-cpp-python directly (``bench.gguf_tokens``);
    ``--engines-big`` adds the ~100M-parameter model whose per-token cost is realistic."""
    ok, why = availability()
    if not ok:
        return {"skipped": why}
    import tempfile
    from pathlib import Path

    from bench import gguf_tokens
    from plugins.gguf.demo import write_demo_model

    tokens = getattr(args, "engine_tokens", 1000)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_demo_model(Path(tmp) / "tiny.gguf")
        out["tiny (2x64, f32)"] = gguf_tokens.measure(tiny, tokens, 3)
        if getattr(args, "engines_big", False):
            big = write_demo_model(Path(tmp) / "big.gguf", layers=12, hidden=768, heads=12, ff=2048, f16=True)
            out["~100M (12x768, f16)"] = gguf_tokens.measure(big, 256, 5)
    # The target is read on the ~100M model only: on the tiny one the per-token relay cost
    # dominates by design (see docs/performance.md), so its ratio says little.
    if "~100M (12x768, f16)" in out:
        out["router_over_direct_tokens_per_s"] = out["~100M (12x768, f16)"]["ratio"]
    else:
        out["target_note"] = "not measured: the ~100M model runs in full runs or with --engines-big"
    out["summary"] = "; ".join(
        f"{name}: direct {r['direct_tok_s']:,} tok/s, router {r['router_tok_s']:,} tok/s "
        f"(ratio {r['ratio']:.3f}, +{r['added_us_per_token']} µs/token)"
        for name, r in out.items() if isinstance(r, dict)
    )
    return out
