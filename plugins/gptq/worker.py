"""The standalone worker: ``python -m router worker --provider gptq --model DIR --port P``.

The router starts one per model (with ``--port 0``); a GPU box with no API server of its
own runs one by hand. The flags are ``WorkerSettings``' fields; the server is the
toolkit's (``router.workers.run_worker``, continuous batching through its
``ContinuousScheduler``); only the engine is transformers'.

``import gptqmodel`` (pulled in by transformers for GPTQ folders) writes ``./logs`` in the
working directory and sets environment variables: the router starts its workers in a
directory of their own, and a worker started by hand moves to one first
(``GPTQ_WORKDIR``, default: a folder under the system's temporary directory).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from plugins.gptq.settings import INSTALL_HINT, WorkerSettings, engine_installed
from router import Command
from router.workers import add_flags, from_flags, run_worker


def workdir() -> Path:
    """Where workers and quantize run (gptqmodel writes ./logs there)."""
    path = Path(os.environ.get("GPTQ_WORKDIR") or Path(tempfile.gettempdir()) / "router-gptq")
    path.mkdir(parents=True, exist_ok=True)
    return path


def worker_env() -> dict[str, str]:
    """The environment a worker runs with: offline (a local folder needs no hub), quiet."""
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "GPTQMODEL_DISABLE_PACK_EXT": os.environ.get("GPTQMODEL_DISABLE_PACK_EXT", "1")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, WorkerSettings)


def run(args: argparse.Namespace) -> int:
    if not engine_installed():
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    settings = from_flags(WorkerSettings, args)
    settings.model = str(Path(settings.model).resolve())  # before leaving the caller's directory
    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    os.chdir(workdir())
    from plugins.gptq.engine import TransformersEngine  # the only engine import

    return run_worker(TransformersEngine(settings), name="gptq", host=settings.host, port=settings.port,
                      max_queue=settings.knobs.max_queue)


COMMAND = Command(name="gptq", help="serve one Hugging Face model folder (GPTQ or fp16/bf16/fp32) "
                  "over the OpenAI API (transformers), with continuous batching",
                  run=run, add_arguments=add_arguments)
