"""How one worker loads and serves its model: one dataclass, as CLI flags and back.

The router builds a ``WorkerSettings`` per model from the backend config and starts
``python -m router worker --provider gguf <flags>``; a user starting a standalone worker
types the same flags. Keeping both directions here means the two can never drift apart.
No engine code is imported here.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

# What a worker prints on stderr for its supervisor (plugins.gguf.process) to read.
LISTENING_PREFIX = "gguf worker: listening on "
LOAD_FAILED_PREFIX = "gguf worker: load failed: "

DEFAULT_N_CTX = 4096
DEFAULT_MAX_TOKENS_LIMIT = 4096


@dataclasses.dataclass
class WorkerSettings:
    model: str                          # path of the .gguf file
    model_id: str = ""                  # the name served; default: the file stem
    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int = DEFAULT_N_CTX          # 0: the context length the model was trained with
    n_gpu_layers: int = 0               # -1: every layer on the GPU
    n_threads: int | None = None        # None: llama.cpp's default (all cores)
    n_threads_batch: int | None = None
    n_batch: int = 512
    embedding: bool = False
    chat_format: str | None = None      # None: the chat template stored in the GGUF
    prompt_cache: str | None = None     # None, "ram" or "disk"
    prompt_cache_dir: str | None = None
    prompt_cache_mb: int = 1024
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT
    max_queue: int = 64
    verbose: bool = False

    @property
    def served_id(self) -> str:
        if self.model_id:
            return self.model_id
        from pathlib import Path

        return Path(self.model).stem

    def to_argv(self) -> list[str]:
        """The flags that reproduce these settings (defaults left out)."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default or value is None:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag)
            else:
                argv += [flag, str(value)]
        if "--model" not in argv:  # required even when equal to the (empty) default
            argv = ["--model", self.model, *argv]
        return argv

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        a = parser.add_argument
        a("--model", required=True, help="path of the .gguf file")
        a("--model-id", default="", help="model name to serve (default: the file stem)")
        a("--host", default="127.0.0.1")
        a("--port", type=int, default=8080)
        a("--n-ctx", type=int, default=DEFAULT_N_CTX, help="context length (0: the model's own)")
        a("--n-gpu-layers", type=int, default=0, help="layers on the GPU (-1: all)")
        a("--n-threads", type=int, help="generation threads (default: all cores)")
        a("--n-threads-batch", type=int, help="prompt-processing threads (default: all cores)")
        a("--n-batch", type=int, default=512)
        a("--embedding", action="store_true", help="serve /v1/embeddings with this model")
        a("--chat-format", help="a llama-cpp-python chat format (default: the GGUF's template)")
        a("--prompt-cache", choices=["ram", "disk"], help="keep evaluated prompts for reuse")
        a("--prompt-cache-dir", help="directory of the disk prompt cache")
        a("--prompt-cache-mb", type=int, default=1024, help="prompt cache capacity")
        a("--max-tokens-limit", type=int, default=DEFAULT_MAX_TOKENS_LIMIT,
          help="upper bound on max_tokens per request")
        a("--max-queue", type=int, default=64, help="requests waiting per model before 429")
        a("--verbose", action="store_true", help="print llama.cpp's log")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WorkerSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
        return cls(**values)
