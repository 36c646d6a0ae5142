"""Helpers for testing the router and plugins against real servers on 127.0.0.1.

- ``FakeUpstream``: a real OpenAI-compatible aiohttp server whose behaviour a test can
  change while it runs (slow, failing, hanging, resetting).
- ``router_client``: the router in-process (``init_app(config)`` on a real port) with
  aiohttp's test client, for request-path tests; extra plugin objects can be registered.
- ``RouterProcess``: the router started the way a user does (``python -m router serve``),
  for the CLI, signals and processes.

Plugin authors use them to test a provider end to end (docs/plugins.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from router import jsonlib
from router.config.loader import parse_config
from router.config.schema import Config
from router.plugins import make_plugin_manager
from router.registry import Registry
from router.web.app import connection_limits, init_app
from router.web.connections import GuardedAppRunner
from router.web.routes import Handler, add_routes, openai_routes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Behaviour:
    """What the fake upstream does next; tests change fields while it runs."""

    delay_s: float = 0.0            # before the response headers
    chunk_delay_s: float = 0.0      # between stream chunks
    chunks: int = 3                 # content chunks in a stream
    fail_status: int | None = None  # answer every completion with this status
    fail_times: int | None = None   # ... only this many times, then answer normally (None: always)
    fail_body: bytes | None = None  # ... and this body (default: an OpenAI error)
    retry_after: str | None = None  # Retry-After header on failures
    hang: bool = False              # never answer
    gate: asyncio.Event | None = None  # answer once this is set (on the upstream's loop)
    reset: bool = False             # drop the connection before answering
    die_after_chunks: int | None = None  # drop the connection mid-stream
    omit_done: bool = False         # end the stream without data: [DONE]
    omit_finish: bool = False       # ... and without the final finish_reason chunk
    close_delimited: bool = False   # no chunked encoding, no length: the body ends at close
    chunk_pad: int = 0              # extra bytes of content per stream chunk
    body_pad: int = 0               # extra bytes in a non-streamed answer
    body_pieces: int = 1            # write a non-streamed answer in this many pieces...
    body_piece_delay_s: float = 0.0  # ... this far apart
    # Scripted answers (None: the defaults above, "hello from <name>" and "tokN " chunks).
    content: str | None = None      # a non-streamed answer's message.content
    message_extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # more message fields
    usage_extra: dict[str, Any] = dataclasses.field(default_factory=dict)    # more usage fields
    pieces: list[str] | None = None  # a stream's delta.content pieces, one per event
    deltas: list[dict[str, Any]] | None = None  # ... or whole deltas, one per event
    finish_reason: str | None = None  # the finish reason sent (None: stop, or tool_calls for tools)
    choice_extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # more fields of the finishing choice
    # Streams that fail in the ways stream failover must handle.
    role_chunk: bool = False        # send a role-only chunk first (as vLLM does)
    first_token_delay_s: float = 0.0  # after the role chunk, before the first content
    error_event_after: int | None = None  # after this many events, an error event ends the stream
    malformed_after: int | None = None    # after this many events, a malformed (non-JSON) event


_MESSAGE = {"id": "msg_native", "type": "message", "role": "assistant", "model": "native-model",
            "content": [{"type": "text", "text": "native hello"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 2}}
_MESSAGE_STREAM = [
    ("message_start", {"type": "message_start", "message": {**_MESSAGE, "content": [], "stop_reason": None,
                                                            "usage": {"input_tokens": 3, "output_tokens": 0}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "native "}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "hello"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                       "usage": {"output_tokens": 2}}),
    ("message_stop", {"type": "message_stop"}),
]
_RESPONSE = {"id": "resp_native", "object": "response", "created_at": 1, "status": "completed", "model": "native-model",
             "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                         "content": [{"type": "output_text", "text": "native hello", "annotations": []}]}],
             "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
             "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5,
                       "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}}
#: What a fake upstream answers on /v1/messages and /v1/responses (whole, streamed).
NATIVE_ANSWERS: dict[str, tuple[bytes, bytes]] = {
    "messages": (json.dumps(_MESSAGE).encode(),
                 b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in _MESSAGE_STREAM)),
    "responses": (json.dumps(_RESPONSE).encode(),
                  b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in (
                      ("response.created", {"type": "response.created", "sequence_number": 0,
                                            "response": {**_RESPONSE, "status": "in_progress", "output": []}}),
                      ("response.completed", {"type": "response.completed", "sequence_number": 1,
                                              "response": _RESPONSE})))),
}


class FakeUpstream:
    """An OpenAI-compatible server on 127.0.0.1 for tests and benchmarks."""

    def __init__(self, name: str = "upstream", models: list[str] | None = None) -> None:
        self.name = name
        self.models = list(models or ["test-model"])
        self.behaviour = Behaviour()
        self.requests: list[dict[str, Any]] = []
        #: Requests to the native /v1/messages and /v1/responses: (api, raw body, headers).
        self.native_bodies: list[tuple[str, bytes, dict[str, str]]] = []
        #: Their answers: api -> (whole body, stream body).
        self.native_answers: dict[str, tuple[bytes, bytes]] = dict(NATIVE_ANSWERS)
        self.headers_seen: list[dict[str, str]] = []
        self.record = True  # keep every request (off for long runs: the soak)
        self.served = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0
        self.health_checks = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        handlers: dict[str, Handler] = {
            "chat/completions": self.chat, "completions": self.completions, "embeddings": self.embeddings,
        }
        add_routes(app, openai_routes(handlers.__getitem__, self.list_models))
        app.router.add_get("/health", self.health)
        for api in NATIVE_ANSWERS:
            app.router.add_post(f"/v1/{api}", self._native(api))
        return app

    def _native(self, api: str) -> Handler:
        """``POST /v1/messages`` and ``/v1/responses``, served natively: the raw body is
        kept (``native_bodies``) and the answer is ``native_answers[api]`` (stream or not)."""

        async def handler(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            self.native_bodies.append((api, raw, dict(request.headers)))
            self.served += 1
            stream = bool(json.loads(raw).get("stream"))
            body = self.native_answers[api][1 if stream else 0]
            if not stream:
                return web.Response(body=body, content_type="application/json")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for piece in body.split(b"\n\n"):
                if piece:
                    await response.write(piece + b"\n\n")
            return response

        return handler

    async def start(self, port: int = 0) -> FakeUpstream:
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or free_port())
        await site.start()
        self.port = site._port
        return self

    async def kill(self) -> None:
        """Die like a crashed server: stop listening and reset every open connection."""
        if self._runner is None:
            return
        for site in self._runner.sites:
            server = site._server
            if server is not None:
                server.close()
        if self._runner.server is not None:
            for conn in self._runner.server.connections:
                if conn.transport is not None:
                    conn.transport.abort()
        await self.stop()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- endpoints ------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        return web.json_response({"status": "ok"})

    async def list_models(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": self.name} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _begin(self, request: web.Request) -> tuple[dict[str, Any], web.StreamResponse | None]:
        body = await request.json()
        self.served += 1
        if self.record:
            self.requests.append(body)
            self.headers_seen.append(dict(request.headers))
        b = self.behaviour
        if b.hang:
            await asyncio.sleep(3600)
        if b.gate is not None:
            await b.gate.wait()
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if b.reset:
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if b.fail_status is not None and b.fail_times is not None:
            if b.fail_times <= 0:
                b.fail_status = b.fail_times = None
            else:
                b.fail_times -= 1
        if b.fail_status is not None:
            headers = {"Retry-After": b.retry_after} if b.retry_after else {}
            if b.fail_body is not None:
                return body, web.Response(status=b.fail_status, body=b.fail_body, headers=headers)
            error = {"error": {"message": f"{self.name} failed on purpose", "type": "server_error",
                               "param": None, "code": "fake_failure"}}
            return body, web.json_response(error, status=b.fail_status, headers=headers)
        if body.get("model") not in self.models:
            error = {"error": {"message": f"model {body.get('model')!r} not found on {self.name}",
                               "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
            return body, web.json_response(error, status=404)
        return body, None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body, early = await self._begin(request)
            if early is not None:
                return early
            if body.get("stream"):
                return await self._stream(request, body, chat)
            return await self._whole(request, self._completion(body, chat))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def _whole(self, request: web.Request, answer: dict[str, Any]) -> web.StreamResponse:
        b = self.behaviour
        if b.body_pad:
            answer["x_pad"] = "x" * b.body_pad
        data = jsonlib.dumps(answer)
        if b.body_pieces <= 1:
            return web.Response(body=data, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        step = -(-len(data) // b.body_pieces)
        for start in range(0, len(data), step):
            await response.write(data[start:start + step])
            await asyncio.sleep(b.body_piece_delay_s)
        await response.write_eof()
        return response

    def _text(self, body: dict[str, Any]) -> str:
        return f"hello from {self.name}"

    def _completion(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        b = self.behaviour
        text = self._text(body) if b.content is None else b.content
        usage: dict[str, Any] = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9, **b.usage_extra}
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text, **b.message_extra}
            if body.get("tools"):
                tool = body["tools"][0]["function"]["name"]
                message = {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": tool, "arguments": '{"city": "Paris"}'}}]}
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": b.finish_reason or (
                "tool_calls" if body.get("tools") else "stop"), **b.choice_extra}
            return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"], "choices": [choice], "usage": usage,
                    "x_upstream": self.name}
        return {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": usage}

    async def _stream(self, request: web.Request, body: dict[str, Any], chat: bool) -> web.StreamResponse:
        b = self.behaviour
        created = int(time.time())
        events: list[bytes] = []
        deltas = b.deltas
        pieces = b.pieces if b.pieces is not None else [f"tok{i} " + "x" * b.chunk_pad for i in range(b.chunks)]
        messages = body.get("messages") or []
        if chat and b.pieces is not None and messages and isinstance(messages[-1], dict) \
                and messages[-1].get("role") == "assistant":
            pieces = _continued(pieces, str(messages[-1].get("content") or ""))  # a prefill: go on from it
        content_events = len(deltas) if deltas is not None else len(pieces)
        for i in range(content_events):
            piece = pieces[i] if deltas is None else str(deltas[i].get("content") or "")
            if chat:
                delta: dict[str, Any] = {"content": piece} if deltas is None else dict(deltas[i])
                if i == 0:
                    delta["role"] = "assistant"
                if body.get("tools") and i == 0:
                    delta["tool_calls"] = [{"index": 0, "id": "call_1", "type": "function",
                                            "function": {"name": "get_weather", "arguments": ""}}]
                chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                         "model": body["model"], "x_unknown_field": i,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            else:
                chunk = {"id": "cmpl-fake", "object": "text_completion", "created": created,
                         "model": body["model"], "choices": [{"index": 0, "text": piece, "finish_reason": None}]}
            events.append(b"data: " + jsonlib.dumps(chunk) + b"\n\n")
        if b.role_chunk and chat:
            role = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                    "model": body["model"], "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                         "finish_reason": None}]}
            events.insert(0, b"data: " + jsonlib.dumps(role) + b"\n\n")
            content_events += 1
        if b.malformed_after is not None:
            events.insert(b.malformed_after, b"data: not json\n\n")
            content_events += 1
        if b.error_event_after is not None:
            error = {"error": {"message": "the engine failed", "type": "server_error", "code": "engine_error"}}
            events[b.error_event_after:] = [b"data: " + jsonlib.dumps(error) + b"\n\n"]
        if not b.omit_finish and b.error_event_after is None:
            final_choice: dict[str, Any] = {"index": 0, "finish_reason": b.finish_reason or "stop", **b.choice_extra}
            if chat:
                final_choice["delta"] = {}
            else:
                final_choice["text"] = ""
            final: dict[str, Any] = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                                     "model": body["model"], "choices": [final_choice]}
            events.append(b"data: " + jsonlib.dumps(final) + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                         "model": body["model"], "choices": [],
                         "usage": {"prompt_tokens": 5, "completion_tokens": content_events,
                                   "total_tokens": 5 + content_events,
                                   **b.usage_extra}}
                events.append(b"data: " + jsonlib.dumps(usage) + b"\n\n")
        if not b.omit_done and b.error_event_after is None:
            events.append(b"data: [DONE]\n\n")
        if b.close_delimited:  # HTTP/1.0 style: the end of the body is the end of the connection
            assert request.transport is not None
            request.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                    b"Connection: close\r\n\r\n" + b"".join(events))
            request.transport.close()
            raise asyncio.CancelledError
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, event in enumerate(events):
            if b.die_after_chunks is not None and i == b.die_after_chunks:
                assert request.transport is not None
                request.transport.abort()
                return response
            chunk_data = json.loads(event[6:]) if event.startswith(b"data: {") else None
            if chunk_data is not None:  # stamped when sent, for the benchmark's lag figures
                chunk_data["sent_at"] = time.time()
                event = b"data: " + jsonlib.dumps(chunk_data) + b"\n\n"
            await response.write(event)
            if i == 0 and b.role_chunk and b.first_token_delay_s:
                await asyncio.sleep(b.first_token_delay_s)
            elif b.chunk_delay_s and i < content_events:
                await asyncio.sleep(b.chunk_delay_s)
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        body, early = await self._begin(request)
        if early is not None:
            return early  # type: ignore[return-value]
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), 0.2, 0.3]}
                for i in range(len(inputs))]
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})


@contextlib.asynccontextmanager
async def router_client(
    config: Config | str | dict[str, Any], *, plugins: Sequence[object] = (), base_dir: Path | None = None
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The router in-process on 127.0.0.1, with aiohttp's test client::

        async with router_client({"backends": [...]}) as client:
            resp = await client.post("/v1/chat/completions", json={...})

    ``config`` is a ``Config``, YAML text or a dict of it. ``plugins`` are extra plugin
    objects (modules or instances with ``@hookimpl`` methods) registered next to the
    built-in ones. Backends start before the client is handed over, as in ``serve``.
    """
    pm = make_plugin_manager()
    for plugin in plugins:
        pm.register(plugin)
    registry = Registry.collect(pm)
    if not isinstance(config, Config):
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        config = parse_config(text, registry.providers, registry.strategies, base_dir=base_dir)
    server = TestServer(init_app(config, pm, registry), host="127.0.0.1")
    client: TestClient[web.Request, web.Application] = TestClient(server)
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


class BackgroundLoop:
    """An asyncio loop in a daemon thread, so servers keep answering while a test blocks
    (e.g. in the synchronous ``openai`` client)."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_upstream(self, name: str = "upstream", models: list[str] | None = None) -> FakeUpstream:
        return self.run(FakeUpstream(name, models).start())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class _RunningRouter:
    """What RouterServer and RouterProcess share: a URL, a captured log, ``with`` support."""

    port: int
    lines: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def log(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RouterServer(_RunningRouter):
    """The router in-process on a real port, in a ``BackgroundLoop`` (so synchronous
    clients can block while it answers), loaded from a config file as ``serve`` does.
    Same surface as ``RouterProcess``: ``url``, ``start()``, ``stop()``, ``log()``."""

    def __init__(self, config_path: str | Path, loop: BackgroundLoop, *, port: int | None = None,
                 plugins: Sequence[object] = ()) -> None:
        self.config_path = str(config_path)
        self.loop = loop
        self.port = port or 0
        self.plugins = plugins
        self.lines: list[str] = []
        self._runner: GuardedAppRunner | None = None
        self._handler: logging.Handler | None = None
        self._level = logging.NOTSET

    def start(self, timeout: float = 30.0) -> Self:
        self.loop.run(self._start(), timeout)
        return self

    async def _start(self) -> None:
        from router.config.loader import load_config
        from router.serving import bound_port

        pm = make_plugin_manager()
        for plugin in self.plugins:
            pm.register(plugin)
        registry = Registry.collect(pm)
        config = load_config(self.config_path, registry.providers, registry.strategies)
        self._capture_logs()
        self._runner = GuardedAppRunner(init_app(config, pm, registry), connection_limits(config),
                                        handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = bound_port(site, self.port)

    def _capture_logs(self) -> None:
        lines = self.lines

        class Capture(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(self.format(record) + "\n")

        self._handler = Capture(logging.INFO)
        self._handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("router")
        self._level = logger.level
        logger.addHandler(self._handler)
        logger.setLevel(logging.INFO)

    def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            self.loop.run(runner.cleanup())
        if self._handler is not None:
            logger = logging.getLogger("router")
            logger.removeHandler(self._handler)
            logger.setLevel(self._level)
            self._handler = None



class RouterProcess(_RunningRouter):
    """The router started as a user starts it: ``python -m router serve --config PATH``."""

    def __init__(self, config_path: str | Path, *, env: dict[str, str] | None = None,
                 port: int | None = None, extra_args: list[str] | None = None,
                 cwd: str | Path | None = None) -> None:
        self.config_path = str(config_path)
        self.cwd = cwd
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self, timeout: float = 30.0) -> Self:
        cmd = [sys.executable, "-m", "router", "serve", "--config", self.config_path,
               "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=self.env, cwd=self.cwd)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("router exited before it was ready:\n" + "".join(self.lines))
            self.lines.append(line)
            if line.startswith("Router listening on "):
                self._drain()
                return self
        self.stop()
        raise RuntimeError("router did not become ready:\n" + "".join(self.lines))

    def _drain(self) -> None:
        """Keep reading the router's output in the background so its pipe never fills."""
        import threading

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)

        threading.Thread(target=pump, daemon=True).start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()



@contextlib.asynccontextmanager
async def running_upstream(name: str = "upstream", models: list[str] | None = None) -> AsyncIterator[FakeUpstream]:
    upstream = await FakeUpstream(name, models).start()
    try:
        yield upstream
    finally:
        await upstream.stop()


@contextlib.contextmanager
def router_process(config_path: str | Path, **kwargs: Any) -> Iterator[RouterProcess]:
    with RouterProcess(config_path, **kwargs) as proc:
        yield proc


def _continued(pieces: list[str], prefill: str) -> list[str]:
    """The pieces of a scripted answer that follow ``prefill`` (a prefix of it), as a model
    continuing an assistant prefill would produce them."""
    full = "".join(pieces)
    if not full.startswith(prefill):
        return pieces  # not our answer: start over
    out: list[str] = []
    seen = 0
    for piece in pieces:
        end = seen + len(piece)
        if end > len(prefill):
            out.append(piece[max(0, len(prefill) - seen):])
        seen = end
    return out
