"""The response cache (plugins.response_cache) and ``_routing`` (plugins.routing_info),
through raw HTTP and the openai SDK, against fake upstreams on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from router.testing import FakeUpstream, router_client

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


@pytest.fixture
async def up():
    upstream = await FakeUpstream("alpha").start()
    yield upstream
    await upstream.stop()


def config(up: FakeUpstream, cache: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {"backends": [{"name": "alpha", "provider": "openai_compatible", "base_url": up.url}],
            "cache": {"enabled": True, **(cache or {})}, **top}


async def test_hit_miss_and_bypass(up):
    async with router_client(config(up)) as client:
        first = await client.post("/v1/chat/completions", json=CHAT)
        assert first.headers["X-Router-Cache"] == "miss"
        second = await client.post("/v1/chat/completions", json=CHAT)
        assert second.headers["X-Router-Cache"] == "hit"
        assert await second.read() == await first.read()
        assert second.headers["X-Router-Backend"] == "alpha"
        assert len(up.requests) == 1
        # Not deterministic: always the backend.
        for body in ({**CHAT, "temperature": 0.7}, {k: v for k, v in CHAT.items() if k != "temperature"}):
            resp = await client.post("/v1/chat/completions", json=body)
            assert resp.headers["X-Router-Cache"] == "bypass"
        # A seed is deterministic too.
        seeded = {**CHAT, "temperature": 1, "seed": 7}
        assert (await client.post("/v1/chat/completions", json=seeded)).headers["X-Router-Cache"] == "miss"
        assert (await client.post("/v1/chat/completions", json=seeded)).headers["X-Router-Cache"] == "hit"
        # Cache-Control: no-cache goes to the backend.
        resp = await client.post("/v1/chat/completions", json=CHAT, headers={"Cache-Control": "no-cache"})
        assert resp.headers["X-Router-Cache"] == "bypass"
    assert len(up.requests) == 5


async def test_the_key_is_the_body_and_the_model_served(up):
    up.models = ["test-model", "other"]
    cfg = config(up, aliases={"gpt-4o": "test-model"})
    async with router_client(cfg) as client:
        await client.post("/v1/chat/completions", json=CHAT)
        # The same model through an alias, keys in another order: a hit.
        reordered = {"temperature": 0, "messages": CHAT["messages"], "model": "gpt-4o"}
        assert (await client.post("/v1/chat/completions", json=reordered)).headers["X-Router-Cache"] == "hit"
        # Another model, another message, another max_tokens: misses.
        for body in ({**CHAT, "model": "other"}, {**CHAT, "messages": [{"role": "user", "content": "ho"}]},
                     {**CHAT, "max_tokens": 3}):
            assert (await client.post("/v1/chat/completions", json=body)).headers["X-Router-Cache"] == "miss"
    assert len(up.requests) == 4


async def test_a_streamed_hit_replays_the_same_events(up):
    async with router_client(config(up)) as client:
        first = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        first_events = await first.read()
        assert first.headers["X-Router-Cache"] == "miss"
        second = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert second.headers["X-Router-Cache"] == "hit"
        assert second.headers["Content-Type"].startswith("text/event-stream")
        assert await second.read() == first_events  # byte for byte (sent_at stamps included)
        # A non-streamed request is its own entry.
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.headers["X-Router-Cache"] == "miss"
    assert len(up.requests) == 2


def test_a_streamed_hit_through_the_sdk(upstreams, start_router):
    up = upstreams("alpha")
    router = start_router(config(up))
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="k", max_retries=0)
    texts = []
    for _ in range(2):
        stream = client.chat.completions.create(**CHAT, stream=True)
        texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    assert texts == ["tok0 tok1 tok2 "] * 2
    assert len(up.requests) == 1


async def test_errors_and_cut_streams_are_never_cached(up):
    cfg = config(up, circuit_breaker={"failure_threshold": 100}, routing={"retries": 0})
    async with router_client(cfg) as client:
        up.behaviour.fail_status = 500
        for _ in range(2):
            served = up.served
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert resp.status == 500 and up.served > served  # each one reached the backend
        up.behaviour.fail_status = None
        up.behaviour.die_after_chunks = 2
        for _ in range(2):
            served = up.served
            resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
            assert b"upstream_error" in await resp.read()
            assert resp.headers["X-Router-Cache"] == "miss" and up.served > served
        up.behaviour.die_after_chunks = None
        # A 200 whose body is an error.
        up.behaviour.fail_status, up.behaviour.fail_body = 200, b'{"error": {"message": "odd"}}'
        for _ in range(2):
            served = up.served
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert resp.headers["X-Router-Cache"] == "miss" and up.served > served


async def test_entries_over_max_entry_kb_are_not_stored(up):
    up.behaviour.body_pad = 4096
    async with router_client(config(up, {"max_entry_kb": 1})) as client:
        for _ in range(2):
            assert (await client.post("/v1/chat/completions", json=CHAT)).headers["X-Router-Cache"] == "miss"
    assert len(up.requests) == 2


async def test_a_hit_gets_this_requests_reasoning_fields(up):
    up.behaviour.content = "<think>hmm</think>Four."
    async with router_client(config(up)) as client:
        plain = await (await client.post("/v1/chat/completions", json=CHAT)).json()
        assert plain["choices"][0]["message"] == {"role": "assistant", "content": "Four.", "reasoning_content": "hmm"}
        resp = await client.post("/v1/chat/completions", json={**CHAT, "separate_thinking": True})
        assert resp.headers["X-Router-Cache"] == "hit"
        message = (await resp.json())["choices"][0]["message"]
        assert message["channels"] == {"analysis": "hmm", "commentary": "", "final": "Four."}
    assert len(up.requests) == 1


async def test_a_hit_is_transformed_as_its_backend_says(up):
    up.behaviour.content = "<think>raw</think>kept"
    cfg = config(up)
    cfg["backends"][0]["reasoning"] = {"parser": "none"}
    async with router_client(cfg) as client:
        for verdict in ("miss", "hit"):
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert resp.headers["X-Router-Cache"] == verdict
            message = (await resp.json())["choices"][0]["message"]
            assert message == {"role": "assistant", "content": "<think>raw</think>kept"}


async def test_cache_off_by_default(up):
    async with router_client({"backends": [{"name": "alpha", "provider": "openai_compatible",
                                            "base_url": up.url}]}) as client:
        for _ in range(2):
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert "X-Router-Cache" not in resp.headers
    assert len(up.requests) == 2


# -- _routing --------------------------------------------------------------------------------


async def test_routing_info_is_opt_in(up):
    base = {"backends": [{"name": "alpha", "provider": "openai_compatible", "base_url": up.url}]}
    async with router_client(base) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert "_routing" not in await resp.json() and resp.headers["X-Router-Backend"] == "alpha"
    async with router_client({**base, "routing": {"expose_routing_info": True},
                              "cache": {"enabled": True}}) as client:
        for verdict in ("miss", "hit"):
            resp = await client.post("/v1/chat/completions", json=CHAT)
            body = await resp.json()
            assert resp.headers["X-Router-Cache"] == verdict
            assert body["_routing"] == {"backend": "alpha", "model_type": "openai_compatible"}
            assert resp.headers["X-Router-Backend"] == "alpha"
        # Streams are left alone.
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True, "temperature": 1})
        assert b"_routing" not in await resp.read()
        assert json  # (json is used by other modules' helpers; keep the import honest)
