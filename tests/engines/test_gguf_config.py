"""The gguf knobs, declared once: the same keys at the backend level and per model, with
today's defaults and bounds, and the worker flags the router passes reproduce them (no
llama.cpp needed)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from plugins.gguf.provider import GGUFProvider
from plugins.gguf.settings import GGUFKnobs, GGUFModel, WorkerSettings
from plugins.gguf.worker import COMMAND
from router.config.loader import ConfigError, parse_config
from router.workers import from_flags, to_flags

PROVIDERS = {"gguf": GGUFProvider}


def backend(text: str) -> GGUFProvider:
    cfg = parse_config("backends:\n  - name: local\n    provider: gguf\n" + text, PROVIDERS, base_dir=Path("/srv"))
    return GGUFProvider(cfg.backends[0])


def settings(provider: GGUFProvider) -> dict[str, WorkerSettings]:
    entries = [GGUFModel(path=e) if isinstance(e, str) else e for e in provider.options.models]
    return {s.served_id: s for s in map(provider.settings_for, entries)}


def test_defaults_are_todays() -> None:
    (s,) = settings(backend("    models: [./a.gguf]\n")).values()
    assert s.knobs == GGUFKnobs()
    k = s.knobs
    assert (k.n_ctx, k.n_gpu_layers, k.n_batch, k.prompt_cache_mb, k.max_tokens_limit, k.max_queue) == \
        (4096, 0, 512, 1024, 4096, 64)
    assert (k.n_threads, k.n_threads_batch, k.prompt_cache, k.chat_format, k.embedding, k.verbose) == \
        (None, None, None, None, False, False)
    assert s.model == "/srv/a.gguf" and s.served_id == "a"


def test_backend_level_defaults_and_per_model_overrides() -> None:
    provider = backend("""\
    n_ctx: 8192
    n_threads: 2
    max_tokens_limit: 64
    max_queue: 5
    verbose: true
    models:
      - ./plain.gguf
      - {name: q, path: ./q.gguf, n_ctx: 1024, max_queue: 1, prompt_cache: ram, prompt_cache_dir: ./cache,
         embedding: true, chat_format: chatml, preload: true}
""")
    assert provider.config.max_queue == 5  # still the common backend key too
    models = settings(provider)
    plain, q = models["plain"].knobs, models["q"].knobs
    assert (plain.n_ctx, plain.n_threads, plain.max_tokens_limit, plain.max_queue, plain.verbose) == (8192, 2, 64, 5, True)
    assert (q.n_ctx, q.n_threads, q.max_queue, q.prompt_cache, q.embedding, q.chat_format) == \
        (1024, 2, 1, "ram", True, "chatml")
    assert q.prompt_cache_dir == "/srv/cache"  # relative to the config's folder


def test_the_worker_flags_reproduce_the_settings() -> None:
    provider = backend("""\
    n_threads_batch: 1
    models:
      - {name: q, path: ./q.gguf, n_ctx: 0, n_gpu_layers: -1, prompt_cache: disk, embedding: true}
""")
    wanted = settings(provider)["q"]
    parser = argparse.ArgumentParser()
    COMMAND.add_arguments(parser)
    flags = to_flags(wanted)
    assert "--port" in flags and flags[flags.index("--port") + 1] == "0"
    assert from_flags(WorkerSettings, parser.parse_args(flags)) == wanted
    assert dataclasses.asdict(wanted)["knobs"]["n_ctx"] == 0


@pytest.mark.parametrize(("text", "message"), [
    ("    prompt_cache: ssd\n", "backends[0].prompt_cache: must be one of ram, disk, got 'ssd'"),
    ("    n_ctx: -1\n", "backends[0].n_ctx: must be at least 0, got -1"),
    ("    n_threads: two\n", "backends[0].n_threads: expected an integer, got 'two'"),
    ("    nctx: 5\n", "backends[0].nctx: unknown key"),
    ("    models: [{path: x.gguf, n_ctx: -1}]\n", "backends[0].models[0]"),
])
def test_bad_knobs_are_located(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        backend(text)
    assert message in str(info.value)
