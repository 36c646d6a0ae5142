"""A worker for tests: a trivial deterministic engine served by ``router.workers``.

    python tests/e2e/echo_worker.py --model-id echo --port 0 [--load-s S] [--fail-load CODE]
        [--exit-while-loading N] [--max-batch N] [--max-queue N] [--token-s S]

Chat replies ``echo: <last user message>``; streamed, one chunk per word. A message
starting with ``die`` makes the process kill itself with SIGKILL after two chunks (a native crash, as
far as the supervisor can tell). ``{"warm": true}`` in a chat body, or ``POST /warm``,
reaches the ``warm`` extension.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from router.errors import ContextLengthExceeded, ModelLoadFailed
from router.workers import Engine, Extension, Job, run_worker


class EchoEngine(Engine):
    owned_by = "echo"
    label = "the echo engine"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.max_batch = args.max_batch
        self.batches: list[int] = []

    @property
    def model_id(self) -> str:
        return str(self.args.model_id)

    def load(self) -> None:
        print("echo engine: loading", file=sys.stderr, flush=True)
        time.sleep(self.args.load_s)
        if self.args.exit_while_loading is not None:
            print("echo engine: out of luck while loading", file=sys.stderr, flush=True)
            os._exit(self.args.exit_while_loading)
        if self.args.fail_load:
            raise ModelLoadFailed(f"cannot load {self.model_id}: told to fail", code=self.args.fail_load)

    def info(self) -> dict[str, Any]:
        return {"engine": "echo", "max_batch": self.max_batch}

    def card(self) -> dict[str, Any]:
        return {"path": "/dev/null"}

    def extensions(self) -> list[Extension]:
        return [Extension("warm", self.warm, path="/warm", body_flag="warm")]

    def warm(self, payload: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
        return {"object": "echo.warm", "messages": len(payload.get("messages") or [])}

    def chat(self, payload: dict[str, Any], stop: threading.Event) -> dict[str, Any] | Iterator[dict[str, Any]]:
        text = str((payload.get("messages") or [{}])[-1].get("content", ""))
        if len(text) > 1000:
            raise ContextLengthExceeded(1000, len(text))
        words = ["echo:", *text.split()]
        if not payload.get("stream"):
            return {"object": "chat.completion", "model": self.model_id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                                 "finish_reason": "stop"}]}
        return self._stream(words, text.startswith("die"))

    def _stream(self, words: list[str], die: bool) -> Iterator[dict[str, Any]]:
        repeat = words * 100_000 if words[-1] == "forever" else words
        for i, word in enumerate(repeat):
            if die and i == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(self.args.token_s)
            yield {"object": "chat.completion.chunk", "model": self.model_id,
                   "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}

    def run_batch(self, jobs: Sequence[Job]) -> None:
        self.batches.append(len(jobs))
        time.sleep(self.args.token_s)
        for job in jobs:
            text = str((job.payload.get("messages") or [{}])[-1].get("content", ""))
            job.result({"object": "chat.completion", "batch_size": len(jobs),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo: {text}"}}]})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-id", default="echo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--load-s", type=float, default=0.0)
    parser.add_argument("--fail-load")
    parser.add_argument("--exit-while-loading", type=int)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--token-s", type=float, default=0.0)
    args = parser.parse_args()
    return run_worker(EchoEngine(args), name="echo", host=args.host, port=args.port, max_queue=args.max_queue)


if __name__ == "__main__":
    sys.exit(main())
