"""The gptq knobs, declared once (backend level and per model, today's defaults, worker
flags that reproduce them, located errors), the model-folder checks the provider and
worker share, and the text helpers: no torch needed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from plugins.gptq.provider import GPTQProvider
from plugins.gptq.settings import GPTQKnobs, GPTQModel, WorkerSettings, inspect_folder
from plugins.gptq.text import Detokenizer, StopMatcher, fallback_prompt, normalize_messages
from plugins.gptq.worker import COMMAND
from router import ModelLoadFailed
from router.config.loader import ConfigError, parse_config
from router.workers import from_flags, to_flags

PROVIDERS = {"gptq": GPTQProvider}


def backend(text: str) -> GPTQProvider:
    cfg = parse_config("backends:\n  - name: local\n    provider: gptq\n" + text, PROVIDERS, base_dir=Path("/srv"))
    return GPTQProvider(cfg.backends[0])


def settings(provider: GPTQProvider) -> dict[str, WorkerSettings]:
    entries = [GPTQModel(path=e) if isinstance(e, str) else e for e in provider.options.models]
    return {s.served_id: s for s in map(provider.settings_for, entries)}


def test_defaults() -> None:
    (s,) = settings(backend("    models: [./Llama-2-7B-GPTQ]\n")).values()
    k = s.knobs
    assert k == GPTQKnobs()
    assert (k.device, k.dtype, k.max_batch, k.max_queue, k.max_tokens_limit, k.context_length, k.threads) == \
        ("auto", "auto", 4, 64, 4096, None, 1)
    assert s.model == "/srv/Llama-2-7B-GPTQ" and s.served_id == "Llama-2-7B-GPTQ"


def test_the_issues_example_with_backend_defaults_and_per_model_overrides() -> None:
    provider = backend("""\
    max_batch: 8
    idle_ttl_s: 600
    models:
      - name: llama-2-7b-chat-gptq
        path: ./models/Llama-2-7B-Chat-GPTQ
        device: auto
        max_batch: 4
        max_queue: 16
        preload: false
        idle_ttl_s: 0
      - {path: ./models/opt-6.7b-4bit, device: "cuda:1", dtype: float16, preload: true}
""")
    models = settings(provider)
    chat, opt = models["llama-2-7b-chat-gptq"].knobs, models["opt-6.7b-4bit"].knobs
    assert (chat.max_batch, chat.max_queue, chat.device) == (4, 16, "auto")
    assert (opt.max_batch, opt.device, opt.dtype) == (8, "cuda:1", "float16")
    entries = provider.options.models
    assert isinstance(entries[0], GPTQModel) and entries[0].idle_ttl_s == 0
    assert isinstance(entries[1], GPTQModel) and entries[1].idle_ttl_s is None and entries[1].preload
    assert provider.options.idle_ttl_s == 600


def test_the_worker_flags_reproduce_the_settings() -> None:
    provider = backend("""\
    threads: 2
    models:
      - {name: q, path: ./q, device: cpu, dtype: bfloat16, max_batch: 2, context_length: 1024, trust_remote_code: true}
""")
    wanted = settings(provider)["q"]
    parser = argparse.ArgumentParser()
    COMMAND.add_arguments(parser)
    flags = to_flags(wanted)
    assert "--port" in flags and flags[flags.index("--port") + 1] == "0"
    assert from_flags(WorkerSettings, parser.parse_args(flags)) == wanted


@pytest.mark.parametrize(("text", "message"), [
    ("    dtype: int3\n", "backends[0].dtype: must be one of auto, float16, bfloat16, float32, got 'int3'"),
    ("    max_batch: 0\n", "backends[0].max_batch: must be at least 1, got 0"),
    ("    models: [{path: x, max_queue: -1}]\n", "backends[0].models[0]"),
    ("    maxbatch: 2\n", "backends[0].maxbatch: unknown key"),
])
def test_bad_knobs_are_located(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        backend(text)
    assert message in str(info.value)


def test_folder_checks(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadFailed) as info:
        inspect_folder(tmp_path / "nope", "model 'm'")
    assert info.value.code == "model_not_found_on_disk" and str(tmp_path / "nope") in info.value.message
    (tmp_path / "file.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadFailed) as info:
        inspect_folder(tmp_path / "file.gguf")
    assert info.value.code == "not_a_model" and "gguf provider" in info.value.message
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 2048,
                                                     "quantization_config": {"quant_method": "gptq", "bits": 4}}))
    with pytest.raises(ModelLoadFailed) as info:
        inspect_folder(folder)
    assert info.value.code == "weights_missing"
    (folder / "model.safetensors").write_bytes(b"x" * 2048)
    found = inspect_folder(folder)
    assert found.context_length(GPTQKnobs()) == 2048 and found.context_length(GPTQKnobs(context_length=512)) == 512
    assert found.describe() == "llama model, gptq 4-bit, 0.0 MiB of weights"


def test_fallback_prompt_is_seed_000s() -> None:
    messages = normalize_messages([{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                                   {"role": "assistant", "content": "Hello!"},
                                   {"role": "user", "content": "Bye"}])
    assert fallback_prompt(messages) == "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Bye\nAssistant:"


def test_stop_strings_across_pieces() -> None:
    stops = StopMatcher(["\nUser:", "END"])
    out = [stops.feed(p) for p in ["Hello", " there\n", "Us", "er: next"]]
    assert out == [("Hello", False), (" there", False), ("", False), ("", True)]
    stops = StopMatcher(["END"])
    assert stops.feed("abcE") == ("abc", False) and stops.feed("x") == ("Ex", False)
    assert stops.feed("EN") == ("", False) and stops.flush() == "EN"


def test_detokenizer_waits_for_whole_characters() -> None:
    table = {1: b"caf", 2: b"\xc3", 3: b"\xa9", 4: b"!"}

    def decode(ids: list[int]) -> str:
        return b"".join(table[i] for i in ids).decode("utf-8", "replace")

    d = Detokenizer(decode)  # type: ignore[arg-type]
    assert [d.add(t) for t in (1, 2, 3, 4)] == ["caf", "", "é", "!"]
