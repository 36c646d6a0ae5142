"""What an engine implements to be served by a worker (``router.workers.server``).

An engine is synchronous and runs on the worker's engine thread: ``load`` once, then one
call per request (``max_batch == 1``, for engines that run one sequence at a time), or
batches of requests through ``run_batch`` (``max_batch > 1``), or, with ``continuous``
set (any ``max_batch``), one long ``run_continuous`` call that lets requests join and leave between its
steps (continuous batching). It raises ``router.errors`` classes: ``InvalidRequest``
(bad parameters, 400), ``ContextLengthExceeded``, ``EngineError``, and on load
``ModelLoadFailed`` with a code saying what went wrong (classified here, once).

Operations beyond the OpenAI endpoints are declared as ``Extension``s: a route of their
own, and optionally a flag in an OpenAI request's body that reaches them through the
router (which only forwards the OpenAI endpoints).
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from router.errors import InvalidRequest
from router.workers.bridge import Job, Operation, Result
from router.workers.scheduling import Inbox


def split_prefill(payload: dict[str, Any], messages: list[Any]) -> tuple[list[Any], str | None]:
    """A trailing assistant message with text and no tool calls is a prefill: the model
    goes on from it (vLLM's ``continue_final_message``, llama.cpp's and SGLang's trailing
    assistant message), which is how the router continues a stream broken mid-answer.
    Returns the messages to format with a generation prompt, and the text to append to
    that prompt (None: no prefill). ``continue_final_message: false`` turns it off."""
    last = messages[-1] if messages else None
    if (payload.get("continue_final_message") is False or not isinstance(last, dict)
            or last.get("role") != "assistant" or last.get("tool_calls")
            or not isinstance(last.get("content"), str) or not last["content"]):
        return messages, None
    return messages[:-1], last["content"]


@dataclasses.dataclass(frozen=True)
class Extension:
    """An engine's own operation: ``POST path`` on the worker, and/or an OpenAI request
    to ``endpoint`` whose body sets ``body_flag`` to a true value."""

    name: str
    run: Operation
    path: str | None = None
    body_flag: str | None = None
    endpoint: str = "chat/completions"
    summary: str = ""


class Engine(abc.ABC):
    #: ``owned_by`` in ``/v1/models``.
    owned_by: ClassVar[str] = "local"
    #: Names the engine in errors ("<label> failed: ...").
    label: ClassVar[str] = "the engine"
    #: Requests run together: 1 runs each alone through ``chat``/``complete``/``embed``;
    #: more sends up to this many at once through ``run_batch``.
    max_batch: int = 1
    #: Serve jobs through ``run_continuous`` (continuous batching, up to ``max_batch``
    #: at once, 1 included: a job joins between steps and leaves when done) instead of
    #: ``chat``/``complete`` or ``run_batch``.
    continuous: bool = False

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """The model name served."""

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model (blocking). Raise ``ModelLoadFailed`` with a code and a message
        that says what to do."""

    def info(self) -> dict[str, Any]:
        """Facts for ``/health`` once loaded (context length, load time...)."""
        return {}

    def card(self) -> dict[str, Any]:
        """Extra fields of the model's ``/v1/models`` entry (a path, say)."""
        return {}

    @abc.abstractmethod
    def chat(self, payload: dict[str, Any], stop: threading.Event) -> Result:
        """A chat completion: a dict, or an iterator of chunk dicts when streaming."""

    def complete(self, payload: dict[str, Any], stop: threading.Event) -> Result:
        raise InvalidRequest(f"model {self.model_id!r} does not serve /v1/completions")

    def embed(self, payload: dict[str, Any], stop: threading.Event) -> Result:
        raise InvalidRequest(f"model {self.model_id!r} does not serve embeddings", param="model")

    def extensions(self) -> Sequence[Extension]:
        """Operations of this engine beyond the OpenAI ones (known before ``load``)."""
        return ()

    def run_batch(self, jobs: Sequence[Job]) -> None:
        """Serve up to ``max_batch`` jobs in one engine call, handing each its outcome
        (``job.result``, or ``job.chunk`` per chunk then ``job.end``, or ``job.fail``).
        Jobs whose ``stop`` is set may be skipped (their client has gone)."""
        raise NotImplementedError(f"{type(self).__name__} sets max_batch > 1 but has no run_batch")

    def run_continuous(self, inbox: Inbox[Job]) -> None:
        """Continuous batching (``continuous = True``): the engine's loop. Between steps,
        take newly admitted jobs (``inbox.take()``); hand each its outcome as for
        ``run_batch``; call ``inbox.done(job)`` once per job when finished with it (its
        slot is freed then); holding no job, return once ``inbox.finish()`` is True. Jobs
        whose ``stop`` is set should be dropped at the next step (their client has gone)."""
        raise NotImplementedError(f"{type(self).__name__} sets continuous but has no run_continuous")

    def operation(self, endpoint: str) -> Operation:
        """The method serving an OpenAI endpoint (``chat/completions``, ...)."""
        return {"chat/completions": self.chat, "completions": self.complete,
                "embeddings": self.embed}[endpoint]
