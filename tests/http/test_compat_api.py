"""Seed 002's /api/* endpoints (plugins.compat_api) through raw HTTP, against fake
upstreams on 127.0.0.1: shapes, streams, errors, failover between two backends, and the
same hooks as /v1/* (generation limits, thinking separation)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.testing import FakeUpstream, router_client


@pytest.fixture
async def pair():
    a = await FakeUpstream("a", models=["tiny"]).start()
    b = await FakeUpstream("b", models=["tiny"]).start()
    yield a, b
    await a.stop()
    await b.stop()


def config(*ups: FakeUpstream, **top: Any) -> dict[str, Any]:
    return {"backends": [{"name": u.name, "provider": "openai_compatible", "base_url": u.url} for u in ups],
            "routing": {"strategy": "round_robin"}, **top}


def sse(raw: bytes) -> list[Any]:
    events = [e for e in raw.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e == "data: [DONE]" else json.loads(e[6:]) for e in events]


async def test_api_llms_lists_models_and_backends(pair):
    a, b = pair
    a.models = ["tiny", "only-a"]
    async with router_client(config(a, b)) as client:
        resp = await client.get("/api/llms")
        assert resp.status == 200
        models = {m["id"]: m for m in (await resp.json())["models"]}
    assert sorted(models["tiny"]["backends"]) == ["a", "b"]
    assert models["only-a"]["backends"] == ["a"]


async def test_api_generate(pair):
    a, _ = pair
    async with router_client(config(a)) as client:
        resp = await client.post("/api/generate", json={
            "prompt": "Explain ML.", "model": "tiny", "max_tokens": 16, "temperature": 0.2, "top_p": 0.9, "stop": ["\n"]})
        body = await resp.json()
    assert resp.status == 200
    assert body == {"id": "chatcmpl-fake", "model": "tiny", "text": "hello from a", "finish_reason": "stop",
                    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}
    sent = a.requests[-1]
    assert sent["messages"] == [{"role": "user", "content": "Explain ML."}]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["stop"], sent["stream"]) == (
        16, 0.2, 0.9, ["\n"], False)
    assert "prompt" not in sent
    assert resp.headers["X-Router-Backend"] == "a"


async def test_api_chat_with_reasoning(pair):
    a, _ = pair
    a.behaviour.content = "<think>short</think>Hi!"
    async with router_client(config(a)) as client:
        resp = await client.post("/api/chat", json={
            "model": "tiny", "messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hello!"}]})
        body = await resp.json()
    assert body["message"] == {"role": "assistant", "content": "Hi!", "reasoning_content": "short"}
    assert (body["id"], body["model"], body["finish_reason"]) == ("chatcmpl-fake", "tiny", "stop")
    assert body["usage"]["total_tokens"] == 9
    assert a.requests[-1]["messages"][0] == {"role": "system", "content": "Be nice."}


@pytest.mark.parametrize("path", ["/api/generate/stream", "/api/chat/stream"])
async def test_api_streams(pair, path):
    a, _ = pair
    a.behaviour.pieces = ["<think>mull", "ing</think>", "Hel", "lo"]
    body = {"model": "tiny", **({"prompt": "hi"} if "generate" in path else {"messages": [{"role": "user", "content": "hi"}]})}
    async with router_client(config(a)) as client:
        resp = await client.post(path, json=body)
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        events = sse(await resp.read())
    assert events[-1] == "[DONE]"
    assert events[-2] == {"finish_reason": "stop", "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}
    pieces = events[:-2]
    assert "".join(e.get("reasoning", "") for e in pieces) == "mulling"
    assert "".join(e["text"] for e in pieces) == "Hello"
    assert all(set(e) <= {"text", "reasoning"} for e in pieces)
    assert a.requests[-1]["stream"] is True and a.requests[-1]["stream_options"] == {"include_usage": True}


async def test_api_stream_cut_mid_way_ends_with_an_error_event(pair):
    a, _ = pair
    a.behaviour.die_after_chunks = 2
    async with router_client(config(a)) as client:
        resp = await client.post("/api/generate/stream", json={"model": "tiny", "prompt": "hi"})
        events = sse(await resp.read())
    assert [e["text"] for e in events[:2]] == ["tok0 ", "tok1 "]
    assert events[2]["error"]["type"] == "upstream_error" and events[-1] == "[DONE]"


async def test_api_failover_between_two_backends(pair):
    a, b = pair
    a.behaviour.fail_status = 503
    async with router_client(config(a, b)) as client:
        for path in ("/api/generate", "/api/chat"):
            body = {"model": "tiny", "prompt": "hi"} if path == "/api/generate" else \
                {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(2):  # whichever backend round robin picks first
                resp = await client.post(path, json=body)
                assert resp.status == 200 and resp.headers["X-Router-Backend"] == "b"
                data = await resp.json()
                assert data.get("text", data.get("message", {}).get("content")) == "hello from b"
        resp = await client.post("/api/generate/stream", json={"model": "tiny", "prompt": "hi"})
        assert resp.headers["X-Router-Backend"] == "b"
        assert sse(await resp.read())[-1] == "[DONE]"
    assert a.served >= 1 and b.served == 5


@pytest.mark.parametrize(("path", "body", "param", "says"), [
    ("/api/generate", {"model": "tiny"}, "prompt", "'prompt' is required"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "max_tokens": "many"}, "max_tokens", "a whole number"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "stop": 3}, "stop", "a string or a list"),
    ("/api/chat", {"model": "tiny", "prompt": "x"}, "prompt", "use /api/generate"),
    ("/api/chat", {"model": "tiny"}, "messages", "'messages' must be a non-empty list"),
    ("/api/chat/stream", {"messages": [{"role": "user", "content": "x"}]}, "model", "model parameter"),
])
async def test_api_errors_are_openai_envelopes(pair, path, body, param, says):
    a, _ = pair
    async with router_client(config(a)) as client:
        resp = await client.post(path, json=body)
        error = (await resp.json())["error"]
    assert resp.status == 400 and error["param"] == param and says in error["message"]
    assert error["type"] == "invalid_request_error"
    assert a.requests == []


async def test_api_unknown_model_and_limits_go_through_the_same_hooks(pair):
    a, _ = pair
    cfg = config(a, generation={"max_tokens_limit": 10, "allowed_models": ["tiny"],
                                "defaults": {"temperature": 0.5}})
    async with router_client(cfg) as client:
        resp = await client.post("/api/generate", json={"model": "nope", "prompt": "x"})
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"
        resp = await client.post("/api/chat", json={"model": "tiny", "max_tokens": 11,
                                                    "messages": [{"role": "user", "content": "x"}]})
        assert resp.status == 400 and "generation.max_tokens_limit" in (await resp.json())["error"]["message"]
        resp = await client.post("/api/generate", json={"model": "tiny", "prompt": "x"})
        assert resp.status == 200 and a.requests[-1]["temperature"] == 0.5
        resp = await client.post("/api/generate", data=b"{not json")
        assert resp.status == 400 and "not valid JSON" in (await resp.json())["error"]["message"]


async def test_api_llms_lists_only_allowed_models(pair):
    a, _ = pair
    a.models = ["tiny", "hidden"]
    async with router_client(config(a, generation={"allowed_models": ["tiny"]}, aliases={"t": "tiny"})) as client:
        models = [m["id"] for m in (await (await client.get("/api/llms")).json())["models"]]
    assert sorted(models) == ["t", "tiny"]
