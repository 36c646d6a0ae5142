"""An example plugin: a provider that echoes the last user message, and every hook.

It needs no server, so it shows the whole plugin API in one page: a provider with its own
config keys, a strategy, a CLI command, an HTTP route, authentication, an early answer
(a "cache"), a response transform, and the per-request and lifecycle hooks, sync and
async alike. It imports nothing but ``router``'s public API. Install it
(``pip install ./docs/examples/router-echo``) and declare::

    backends:
      - name: echo
        provider: echo
        prefix: "echo: "
        model_names: [echo-1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiohttp import web

from router import (
    AuthenticationFailed,
    BackendView,
    Command,
    InvalidRequest,
    ModelCard,
    Provider,
    ProxyRequest,
    ResponseTransform,
    Route,
    RouterView,
    SSEEvent,
    StaticResponse,
    Strategy,
    UpstreamRequest,
    UpstreamResponse,
    hookimpl,
)


@dataclasses.dataclass
class EchoOptions:
    """The provider's own backend keys; the router validates them with file:line errors."""

    prefix: str = ""
    model_names: list[str] = dataclasses.field(default_factory=lambda: ["echo-1"])


def _chat(request_id: str, model: str, text: str) -> dict[str, Any]:
    return {"id": f"echo-{request_id}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": len(text.split()),
                      "total_tokens": len(text.split())}}


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
        if not request.stream:
            body = json.dumps(_chat(request.request_id, request.model, text)).encode()
            return StaticResponse(body, headers={"X-Echo": "1"})
        base = {"id": f"echo-{request.request_id}", "created": int(time.time()), "model": request.model}
        events = []
        for word in text.split(" "):
            chunk = {**base, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
            events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return StaticResponse(events, content_type="text/event-stream", headers={"X-Echo": "1"})


@hookimpl
def register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("echo", EchoProvider)


class Alphabetical(Strategy):
    """A routing strategy: always the first candidate by name (predictable, for tests)."""

    def choose(self, candidates: Sequence[BackendView], request: ProxyRequest) -> BackendView:
        return min(candidates, key=lambda b: b.name)


@hookimpl
def register_strategies(register: Callable[[str, type[Strategy]], None]) -> None:
    register("alphabetical", Alphabetical)


def _say(args: argparse.Namespace) -> int:
    print("echo: " + " ".join(args.words))
    return 0


@hookimpl
def register_commands(register: Callable[[Command], None]) -> None:
    # python -m router echo-say hello there
    register(Command("echo-say", "print the words back", _say,
                     lambda parser: parser.add_argument("words", nargs="*")))


@hookimpl
def register_routes(register: Callable[[Route], None], router: RouterView) -> None:
    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"backends": sorted(router.backends),
                                  "models": [m for m, _, _ in router.models()]})

    register(Route("GET", "/echo/stats", stats, "the echo plugin's view of the router"))


def _log(event: dict[str, Any]) -> None:
    """Append an event to $ROUTER_ECHO_LOG (one JSON object a line), if set."""
    path = os.environ.get("ROUTER_ECHO_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")


@hookimpl
async def startup(state: RouterView) -> None:
    # Lifecycle hooks may be coroutines; the router awaits them.
    _log({"event": "startup", "backends": sorted(state.backends)})


@hookimpl
def shutdown(state: RouterView) -> None:
    _log({"event": "shutdown"})


@hookimpl
def authenticate(request: web.Request) -> str | None:
    # A toy scheme: "X-Echo-Deny" is refused, "X-Echo-User: NAME" is NAME, anyone else
    # is left to other plugins (anonymous when none decides).
    if "X-Echo-Deny" in request.headers:
        raise AuthenticationFailed("the echo plugin refuses requests that carry X-Echo-Deny")
    return request.headers.get("X-Echo-User")


@hookimpl
def prepare_request(request: ProxyRequest) -> None:
    # Runs once per request, before a backend is chosen: upper-case on request.
    if request.payload.get("echo_shout"):
        request.update_payload(messages=[
            {**m, "content": str(m.get("content", "")).upper()} for m in request.payload["messages"]
        ])


@hookimpl
def answer_request(request: ProxyRequest) -> UpstreamResponse | None:
    # An early answer, as a cache would give: no backend is called.
    if request.payload.get("echo_cached") and not request.stream:
        return StaticResponse(json.dumps(_chat(request.request_id, request.model, "cached answer")).encode())
    return None


@hookimpl
async def filter_backends(request: ProxyRequest, backends: Sequence[BackendView]) -> list[BackendView] | None:
    # Narrow the candidates (async works too): a request may pin itself to one backend.
    pinned = request.payload.get("echo_backend")
    return [b for b in backends if b.name == pinned] if pinned else None


class Upper(ResponseTransform):
    """Upper-cases the answer's text, in whole bodies and stream events alike."""

    def body(self, body: bytes, content_type: str) -> bytes:
        data = json.loads(body)
        for choice in data.get("choices", []):
            message = choice.get("message") or {}
            if isinstance(message.get("content"), str):
                message["content"] = message["content"].upper()
        return json.dumps(data).encode()

    def event(self, event: SSEEvent) -> Iterable[SSEEvent]:
        if event.is_done:
            return (event,)
        data = json.loads(event.data)
        for choice in data.get("choices", []):
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                delta["content"] = delta["content"].upper()
        return (SSEEvent(json.dumps(data).encode()),)


@hookimpl
def transform_response(request: ProxyRequest, status: int) -> ResponseTransform | None:
    return Upper() if request.payload.get("echo_upper") and status == 200 else None


@hookimpl
async def observe_response(request: ProxyRequest, backend: BackendView | None, status: int, elapsed_s: float) -> None:
    _log({"event": "response", "model": request.model, "status": status, "identity": request.identity,
          "backend": backend.name if backend else None, "elapsed_s": elapsed_s})
