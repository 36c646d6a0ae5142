"""The hook seams, in-process (``router.testing.router_client``) against a real upstream:
sync and async implementations alike, first-answer hooks, transform chains, routes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from router import (
    BackendView,
    ProxyRequest,
    ResponseTransform,
    Route,
    RouterView,
    SSEEvent,
    StaticResponse,
    hookimpl,
)
from router.testing import FakeUpstream, router_client

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def two_upstreams():
    a = await FakeUpstream("a").start()
    b = await FakeUpstream("b").start()
    yield a, b
    await a.stop()
    await b.stop()


def config(*ups: FakeUpstream) -> dict[str, Any]:
    return {"backends": [{"name": u.name, "provider": "openai_compatible", "base_url": u.url} for u in ups]}


async def test_async_filter_backends_and_observe_response_are_awaited(two_upstreams):
    a, b = two_upstreams
    seen: list[tuple[str, int, str | None]] = []

    class Plugin:
        @hookimpl
        async def filter_backends(self, backends: Sequence[BackendView]) -> list[BackendView]:
            return [x for x in backends if x.name == "b"]

        @hookimpl
        async def observe_response(self, request: ProxyRequest, backend: BackendView | None, status: int) -> None:
            seen.append((request.model, status, backend.name if backend else None))

    async with router_client(config(a, b), plugins=[Plugin()]) as client:
        for _ in range(4):
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert resp.status == 200 and resp.headers["X-Router-Backend"] == "b"
        resp = await client.post("/v1/chat/completions", data=b"[1, 2]")
        assert resp.status == 400
    assert len(a.requests) == 0 and len(b.requests) == 4
    assert seen == [("test-model", 200, "b")] * 4 + [("", 400, None)]


async def test_first_answer_wins_and_an_async_none_does_not(two_upstreams):
    a, _ = two_upstreams
    calls: list[str] = []

    class Declines:
        @hookimpl
        async def answer_request(self, request: ProxyRequest) -> None:
            calls.append("declines")
            return None

    class Answers:
        @hookimpl
        def answer_request(self, request: ProxyRequest) -> StaticResponse:
            calls.append("answers")
            return StaticResponse(json.dumps({"cached": request.model}).encode())

    # Registered last, Declines is asked first (pluggy's order); its None passes the turn.
    async with router_client(config(a), plugins=[Answers(), Declines()]) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200 and await resp.json() == {"cached": "test-model"}
        assert "X-Router-Backend" not in resp.headers
    assert calls == ["declines", "answers"] and a.requests == []


class Tag(ResponseTransform):
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def body(self, body: bytes, content_type: str) -> bytes:
        data = json.loads(body)
        data["choices"][0]["message"]["content"] += self.tag
        return json.dumps(data).encode()

    def event(self, event: SSEEvent) -> Iterable[SSEEvent]:
        if event.is_done:
            return (SSEEvent(json.dumps({"tag": self.tag}).encode()), event)
        return (event,)

    def end(self) -> Iterable[SSEEvent]:
        return ()


async def test_transforms_chain_in_registration_order_for_bodies_and_streams(two_upstreams):
    a, _ = two_upstreams

    class First:
        @hookimpl
        def transform_response(self) -> ResponseTransform:
            return Tag("+1")

    class Second:
        @hookimpl
        async def transform_response(self, content_type: str) -> ResponseTransform:
            return Tag("+2")

    async with router_client(config(a), plugins=[First(), Second()]) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert (await resp.json())["choices"][0]["message"]["content"] == "hello from a+1+2"
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        text = await resp.text()
    datas = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    # Each [DONE] passes First (tag +1 before it), then both events pass Second.
    assert datas[-3:] == ['{"tag": "+1"}', '{"tag": "+2"}', "[DONE]"]
    assert sum('"tok' in d for d in datas) == 3


async def test_a_failing_transform_ends_the_stream_with_an_error_event(two_upstreams):
    a, _ = two_upstreams

    class Broken(ResponseTransform):
        def event(self, event: SSEEvent) -> Iterable[SSEEvent]:
            raise RuntimeError("boom")

    class Plugin:
        @hookimpl
        def transform_response(self) -> ResponseTransform:
            return Broken()

    async with router_client(config(a), plugins=[Plugin()]) as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        text = await resp.text()
    assert "a response transform failed: boom" in text and text.endswith("data: [DONE]\n\n")


async def test_plugin_routes_are_served_and_cannot_replace_core_ones(two_upstreams):
    a, _ = two_upstreams

    class Plugin:
        @hookimpl
        def register_routes(self, register: Any, router: RouterView) -> None:
            async def count(request: Any) -> Any:
                from aiohttp import web

                return web.json_response({"backends": len(router.backends)})

            register(Route("GET", "/api/count", count))

    async with router_client(config(a), plugins=[Plugin()]) as client:
        resp = await client.get("/api/count")
        assert await resp.json() == {"backends": 1}

    class Hijack:
        @hookimpl
        def register_routes(self, register: Any) -> None:
            async def nope(request: Any) -> Any:
                raise AssertionError("never served")

            register(Route("POST", "/v1/chat/completions", nope))

    with pytest.raises(ValueError, match="replace the route POST /v1/chat/completions"):
        async with router_client(config(a), plugins=[Hijack()]):
            pass


async def test_hooks_see_read_only_views(two_upstreams):
    a, _ = two_upstreams
    got: dict[str, Any] = {}

    class Plugin:
        @hookimpl
        def startup(self, state: RouterView) -> None:
            got["models"] = [m for m, _, _ in state.models()]
            got["view"] = state.backends["a"]

    async with router_client(config(a), plugins=[Plugin()]):
        view = got["view"]
        assert got["models"] == ["test-model"] and view.name == "a" and view.in_flight == 0
        with pytest.raises(AttributeError):
            view.in_flight = 5
        with pytest.raises(TypeError):
            view.models["x"] = None  # type: ignore[index]
