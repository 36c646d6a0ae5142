"""An example provider plugin: a backend that echoes the last user message.

It needs no server, so it shows the whole provider interface in one page: options with
their own config keys, model discovery, non-streaming and streaming answers, and a
per-request hook. Install it (``pip install ./docs/examples/router-echo``) and declare::

    backends:
      - name: echo
        provider: echo
        prefix: "echo: "
        model_names: [echo-1]
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Mapping

from router import hookimpl
from router.errors import InvalidRequest
from router.provider import ModelCard, Provider, UpstreamRequest, UpstreamResponse
from router.strategies import Strategy


@dataclasses.dataclass
class EchoOptions:
    """The provider's own backend keys; the router validates them with file:line errors."""

    prefix: str = ""
    model_names: list[str] = dataclasses.field(default_factory=lambda: ["echo-1"])


class EchoResponse(UpstreamResponse):
    def __init__(self, events: list[bytes], content_type: str) -> None:
        self.status = 200
        self.content_type = content_type
        self.headers: Mapping[str, str] = {"X-Echo": "1"}
        self._events = events

    async def read(self) -> bytes:
        return b"".join(self._events)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for event in self._events:
            yield event

    def close(self) -> None:
        self._events = []


class EchoProvider(Provider):
    options_class = EchoOptions

    async def list_models(self) -> list[ModelCard]:
        options: EchoOptions = self.config.options or EchoOptions()
        return [ModelCard(id=name, owned_by="echo") for name in options.model_names]

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        options: EchoOptions = self.config.options or EchoOptions()
        if request.endpoint != "chat/completions":
            raise InvalidRequest(f"the echo provider only does chat completions, not {request.endpoint}")
        messages = request.payload.get("messages") or []
        user = [m.get("content", "") for m in messages if m.get("role") == "user"]
        text = options.prefix + (user[-1] if user else "")
        base = {"id": f"echo-{request.request_id}", "created": int(time.time()), "model": request.model}
        if not request.stream:
            body = {**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": len(text.split()),
                          "total_tokens": len(text.split())}}
            return EchoResponse([json.dumps(body).encode()], "application/json")
        events = []
        for word in text.split(" "):
            chunk = {**base, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
            events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return EchoResponse(events, "text/event-stream")


@hookimpl
def register_providers(register):
    register("echo", EchoProvider)


class Alphabetical(Strategy):
    """A routing strategy: always the first candidate by name (predictable, for tests)."""

    def choose(self, candidates, request):
        return min(candidates, key=lambda b: b.name)


@hookimpl
def register_strategies(register):
    register("alphabetical", Alphabetical)


def _log(event: dict) -> None:
    """Append an event to $ROUTER_ECHO_LOG (one JSON object a line), if set."""
    path = os.environ.get("ROUTER_ECHO_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")


@hookimpl
async def startup(state):
    # Lifecycle hooks may be coroutines; the router awaits them.
    _log({"event": "startup", "backends": sorted(state.backends)})


@hookimpl
def shutdown(state):
    _log({"event": "shutdown"})


@hookimpl
def prepare_request(request):
    # Runs once per request, before a backend is chosen: upper-case on request.
    if request.payload.get("echo_shout"):
        request.update_payload(messages=[
            {**m, "content": str(m.get("content", "")).upper()} for m in request.payload["messages"]
        ])


@hookimpl
def filter_backends(request, backends):
    # Narrow the candidates: a request may pin itself to one backend by name.
    pinned = request.payload.get("echo_backend")
    return [b for b in backends if b.name == pinned] if pinned else None


@hookimpl
def observe_response(request, backend, status, elapsed_s):
    _log({"event": "response", "model": request.model, "status": status,
          "backend": backend.name if backend else None, "elapsed_s": elapsed_s})
