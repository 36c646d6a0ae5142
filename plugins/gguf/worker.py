"""The standalone worker: ``python -m router worker --provider gguf --model PATH --port P``.

The router starts one per model (with ``--port 0``); a GPU box with no API server of its
own runs one by hand. The flags are ``WorkerSettings``' fields; the server is the
toolkit's (``router.workers.run_worker``); only the engine is llama.cpp's.
"""

from __future__ import annotations

import argparse
import sys

from plugins.gguf.settings import INSTALL_HINT, WorkerSettings, engine_installed
from router import Command
from router.workers import add_flags, from_flags, run_worker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, WorkerSettings)


def run(args: argparse.Namespace) -> int:
    if not engine_installed():
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from plugins.gguf.engine import LlamaEngine  # the only engine import

    settings = from_flags(WorkerSettings, args)
    return run_worker(LlamaEngine(settings), name="gguf", host=settings.host, port=settings.port,
                      max_queue=settings.knobs.max_queue)


COMMAND = Command(name="gguf", help="serve one GGUF model over the OpenAI API (llama.cpp)",
                  run=run, add_arguments=add_arguments)
