"""The gptq knobs, declared once: backend-level defaults, per-model overrides and worker
flags all come from ``GPTQKnobs`` (the config loader reads ``setting``'s bounds and
choices; ``router.workers.add_flags`` turns each field into ``--max-batch`` and so on,
with its help).

Also here, because the provider needs them without torch: what a model folder holds
(``inspect_folder``: config.json, weights, the context length, the estimated size), and
the errors that say what is wrong with one. No engine code is imported here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from router import ModelLoadFailed, flatten, overrides_of, setting

INSTALL_HINT = "transformers/gptqmodel are not installed; install the extra: pip install '.[gptq]'"
ENGINE_MODULES = ("torch", "transformers")

#: ``device`` values: auto, cpu, cuda, cuda:N.
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
#: Weight files a Hugging Face folder may hold.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
#: config.json keys that give a model's context length, in order of preference.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def engine_installed() -> bool:
    """Whether workers can import torch and transformers (checked without importing them)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ENGINE_MODULES)
    except (ValueError, AttributeError):  # e.g. blocked with sys.modules["torch"] = None
        return False


@dataclasses.dataclass
class GPTQKnobs:
    """How transformers loads and serves one model."""

    device: str = setting("auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    dtype: str = setting("auto", choices=("auto", "float16", "bfloat16", "float32"),
                         help="weights' dtype (auto: float32 on the CPU, the folder's own on a GPU)")
    max_batch: int = setting(4, ge=1, help="requests decoded together (continuous batching)")
    max_queue: int = setting(64, ge=0, help="requests waiting beyond the batch before 429")
    max_tokens_limit: int = setting(4096, ge=1, help="upper bound on max_tokens per request")
    context_length: int | None = setting(None, ge=2, help="prompt plus completion tokens "
                                         "(default: the model's max_position_embeddings)")
    threads: int = setting(1, ge=1, help="torch CPU threads (1 suits small machines)")
    trust_remote_code: bool = setting(False, help="let transformers run the folder's own model code")


@dataclasses.dataclass
class WorkerSettings:
    """One worker: the model, where it listens, and its knobs (``--help`` lists them)."""

    model: str = dataclasses.field(metadata={"help": "the Hugging Face model folder"})
    model_id: str = setting("", help="model name to serve (default: the folder's name)")
    host: str = setting("127.0.0.1", help="address to listen on")
    port: int = setting(8080, ge=0, le=65535, help="port (0: a free one, printed once bound)")
    knobs: GPTQKnobs = flatten(GPTQKnobs)

    @property
    def served_id(self) -> str:
        return self.model_id or Path(self.model).name


@dataclasses.dataclass
class GPTQModel:
    """One entry of ``models:``; knobs it leaves out take the backend-level value."""

    path: str
    name: str | None = None
    preload: bool = False
    idle_ttl_s: float | None = setting(None, ge=0)  # None: the backend's; 0: stay loaded
    overrides: dict[str, Any] = overrides_of(GPTQKnobs)


@dataclasses.dataclass
class GPTQOptions:
    """The ``gptq`` provider's backend keys (docs/gptq.md)."""

    models: list[str | GPTQModel] = dataclasses.field(default_factory=list)
    models_dir: str | None = None
    idle_ttl_s: float | None = setting(None, ge=0)
    startup_timeout_s: float = setting(300.0, gt=0)
    max_loaded: int | None = setting(None, ge=1)
    max_memory_gb: float | None = setting(None, gt=0)
    defaults: GPTQKnobs = flatten(GPTQKnobs)


# -- a model folder, read without torch ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Folder:
    """What a Hugging Face causal-LM folder holds."""

    path: Path
    config: dict[str, Any]
    weights: tuple[Path, ...]

    @property
    def size_bytes(self) -> int:
        """The weights' size on disk: roughly what the model takes in memory."""
        return sum(_size(p) for p in self.weights)

    @property
    def quantization(self) -> dict[str, Any] | None:
        q = self.config.get("quantization_config")
        if isinstance(q, dict):
            return q
        file = self.path / "quantize_config.json"
        if file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return data if isinstance(data, dict) else None
        return None

    @property
    def trained_context(self) -> int | None:
        for key in CONTEXT_KEYS:
            value = self.config.get(key)
            if isinstance(value, int) and value > 0:
                return value
        text = self.config.get("text_config")
        if isinstance(text, dict):
            for key in CONTEXT_KEYS:
                value = text.get(key)
                if isinstance(value, int) and value > 0:
                    return value
        return None

    def context_length(self, knobs: GPTQKnobs) -> int | None:
        trained = self.trained_context
        if knobs.context_length is None:
            return trained
        return min(knobs.context_length, trained) if trained else knobs.context_length

    def describe(self) -> str:
        q = self.quantization
        if q:
            kind = f"{q.get('quant_method', 'gptq')} {q.get('bits', '?')}-bit"
        else:
            kind = str(self.config.get("torch_dtype") or self.config.get("dtype") or "full precision")
        size = self.size_bytes
        shown = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
        return f"{self.config.get('model_type', 'unknown')} model, {kind}, {shown} of weights"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def missing_folder(path: str | Path, context: str = "") -> ModelLoadFailed:
    where = f"{context}: " if context else ""
    return ModelLoadFailed(f"{where}model folder not found: {path} (put the Hugging Face model folder "
                           "there, or fix the path)", code="model_not_found_on_disk")


def inspect_folder(path: str | Path, context: str = "") -> Folder:
    """Read a model folder's config.json and find its weights; raises ``ModelLoadFailed``
    naming ``context`` (the model) and the path when it is not a servable folder."""
    root = Path(path)
    where = f"{context}: " if context else ""
    if not root.exists():
        raise missing_folder(root, context)
    if not root.is_dir():
        raise ModelLoadFailed(f"{where}{root} is a file, not a model folder (the gptq provider serves "
                              "Hugging Face folders with config.json; a .gguf file goes to the gguf provider)",
                              code="not_a_model")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise ModelLoadFailed(f"{where}{root} is not a Hugging Face model folder: it has no config.json "
                              "(download the whole repository, e.g. with `hf download REPO --local-dir DIR`)",
                              code="not_a_model")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadFailed(f"{where}{config_file} cannot be read as JSON: {exc}", code="not_a_model") from exc
    if not isinstance(config, dict) or "model_type" not in config and "architectures" not in config:
        raise ModelLoadFailed(f"{where}{config_file} is not a model config (no model_type or architectures)",
                              code="not_a_model")
    weights = tuple(sorted(p for pattern in WEIGHT_PATTERNS for p in root.glob(pattern)
                           if p.name not in ("training_args.bin", "optimizer.pt", "scheduler.pt")))
    if not weights:
        raise ModelLoadFailed(f"{where}{root} has a config.json but no weights (no *.safetensors or *.bin "
                              "file); the download may be incomplete", code="weights_missing")
    return Folder(root, config, weights)


def check_device(device: str) -> None:
    if not DEVICE_PATTERN.match(device):
        raise ModelLoadFailed(f"device {device!r} is not one of auto, cpu, cuda, cuda:N", code="invalid_device")
