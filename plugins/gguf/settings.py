"""The GGUF knobs, declared once: backend-level defaults, per-model overrides and worker
flags all come from ``GGUFKnobs`` (the config loader reads ``setting``'s bounds and
choices; ``router.workers.add_flags`` turns each field into ``--n-ctx`` and so on, with
its help). No engine code is imported here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

from router import ModelLoadFailed, flatten, overrides_of, setting

INSTALL_HINT = "llama-cpp-python is not installed; install the extra: pip install '.[gguf]'"


def engine_installed() -> bool:
    """Whether workers can import llama-cpp-python (checked without importing it here)."""
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ValueError, AttributeError):  # e.g. blocked with sys.modules["llama_cpp"] = None
        return False


def missing_model(path: str | Path, context: str = "") -> ModelLoadFailed:
    where = f"{context}; " if context else ""
    return ModelLoadFailed(f"model file not found: {path} ({where}put the .gguf file there or fix the path)",
                           code="model_not_found_on_disk")


@dataclasses.dataclass
class GGUFKnobs:
    """How llama.cpp loads and serves one model."""

    n_ctx: int = setting(4096, ge=0, help="context length (0: the model's trained length)")
    n_gpu_layers: int = setting(0, ge=-1, help="layers on the GPU (-1: all)")
    n_threads: int | None = setting(None, ge=1, help="generation threads (default: all cores)")
    n_threads_batch: int | None = setting(None, ge=1, help="prompt-processing threads (default: all cores)")
    n_batch: int = setting(512, ge=1, help="prompt tokens evaluated per batch")
    embedding: bool = setting(False, help="serve /v1/embeddings with this model (mean pooling)")
    chat_format: str | None = setting(None, help="a llama-cpp-python chat format (default: the GGUF's template)")
    prompt_cache: str | None = setting(None, choices=("ram", "disk"), help="keep evaluated prompts for reuse")
    prompt_cache_dir: str | None = setting(None, help="directory of the disk prompt cache (default: next to the model)")
    prompt_cache_mb: int = setting(1024, ge=0, help="prompt cache capacity in MB")
    max_tokens_limit: int = setting(4096, ge=1, help="upper bound on max_tokens per request")
    max_queue: int = setting(64, ge=0, help="requests waiting per model before 429")
    verbose: bool = setting(False, help="print llama.cpp's log")


@dataclasses.dataclass
class WorkerSettings:
    """One worker: the model, where it listens, and its knobs (``--help`` lists them)."""

    model: str = dataclasses.field(metadata={"help": "path of the .gguf file"})
    model_id: str = setting("", help="model name to serve (default: the file stem)")
    host: str = setting("127.0.0.1", help="address to listen on")
    port: int = setting(8080, ge=0, le=65535, help="port (0: a free one, printed once bound)")
    knobs: GGUFKnobs = flatten(GGUFKnobs)

    @property
    def served_id(self) -> str:
        return self.model_id or Path(self.model).stem


@dataclasses.dataclass
class GGUFModel:
    """One entry of ``models:``; knobs it leaves out take the backend-level value."""

    path: str
    name: str | None = None
    preload: bool = False
    overrides: dict[str, Any] = overrides_of(GGUFKnobs)


@dataclasses.dataclass
class GGUFOptions:
    """The ``gguf`` provider's backend keys (docs/gguf.md)."""

    models_dir: str | None = None
    models: list[str | GGUFModel] = dataclasses.field(default_factory=list)
    demo_model: bool = False
    idle_ttl_s: float | None = setting(None, ge=0)
    startup_timeout_s: float = setting(120.0, gt=0)
    max_loaded: int | None = setting(None, ge=1)
    max_memory_gb: float | None = setting(None, gt=0)
    defaults: GGUFKnobs = flatten(GGUFKnobs)
