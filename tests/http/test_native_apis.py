"""Backends that serve /v1/messages or /v1/responses natively (``apis:``) get the client's
request as it was sent and answer byte for byte; the others get it translated; failover
moves a request between the two kinds."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai

from router.testing import FakeUpstream, router_client


def cfg(*backends: dict[str, Any]) -> dict[str, Any]:
    return {"routing": {"strategy": "weighted"}, "backends": list(backends)}


def native(up: FakeUpstream, weight: float = 1000) -> dict[str, Any]:
    return {"name": "native", "provider": "openai_compatible", "base_url": up.url, "weight": weight,
            "apis": ["chat", "completions", "embeddings", "responses", "messages"]}


def translated(up: FakeUpstream) -> dict[str, Any]:
    return {"name": "chat-only", "provider": "openai_compatible", "base_url": up.url, "weight": 1}


async def test_messages_go_to_a_native_backend_byte_for_byte() -> None:
    up = await FakeUpstream("native", models=["m"]).start()
    try:
        async with router_client(cfg(native(up))) as client:
            body = b'{"model": "m",  "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], "x_vendor": 1}'
            resp = await client.post("/v1/messages", data=body, headers={
                "Content-Type": "application/json", "anthropic-version": "2023-06-01"})
            assert resp.status == 200
            assert await resp.read() == up.native_answers["messages"][0]  # the answer untouched
            api, raw, headers = up.native_bodies[-1]
            assert api == "messages" and raw == body  # the request untouched (spacing, unknown fields)
            assert headers.get("anthropic-version") == "2023-06-01"
            assert up.requests == []  # nothing went to chat completions

            sdk = anthropic.AsyncAnthropic(base_url=str(client.make_url("")), api_key="x", max_retries=0)
            async with sdk.messages.stream(model="m", max_tokens=16,
                                           messages=[{"role": "user", "content": "hi"}]) as stream:
                text = "".join([t async for t in stream.text_stream])
            assert text == "native hello"
            assert json.loads(up.native_bodies[-1][1])["stream"] is True
    finally:
        await up.stop()


async def test_responses_go_to_a_native_backend_byte_for_byte() -> None:
    up = await FakeUpstream("native", models=["m"]).start()
    try:
        async with router_client(cfg(native(up))) as client:
            sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
            answer = await sdk.responses.create(model="m", input="hi")
            assert answer.id == "resp_native" and answer.output_text == "native hello"
            async with sdk.responses.stream(model="m", input="hi") as stream:
                events = [event.type async for event in stream]
            assert events == ["response.created", "response.completed"]
            resp = await client.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
            raw = await resp.read()
            assert raw == up.native_answers["responses"][1]  # nothing added: no [DONE], no error event
            assert [api for api, _, _ in up.native_bodies] == ["responses"] * 3 and up.requests == []
    finally:
        await up.stop()


async def test_failover_moves_a_request_between_native_and_translated() -> None:
    nat, chat = await FakeUpstream("native", models=["m"]).start(), await FakeUpstream("chat", models=["m"]).start()
    try:
        async with router_client(cfg(native(nat), translated(chat))) as client:
            await nat.stop()  # the native backend is down: the translated one answers
            sdk = anthropic.AsyncAnthropic(base_url=str(client.make_url("")), api_key="x", max_retries=0)
            message = await sdk.messages.create(model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
            assert message.content[0].text == "hello from chat"  # translated from chat completions
            assert chat.requests[-1]["messages"][-1]["content"] == "hi"
    finally:
        await chat.stop()


def test_an_unknown_api_is_a_config_error_naming_key_and_line() -> None:
    import pytest

    from router.config.loader import ConfigError, parse_config
    from router.plugins import make_plugin_manager
    from router.registry import Registry

    registry = Registry.collect(make_plugin_manager())
    text = "backends:\n  - name: a\n    provider: openai_compatible\n    base_url: http://x\n    apis: [chat, soap]\n"
    with pytest.raises(ConfigError) as error:
        parse_config(text, registry.providers, registry.strategies)
    assert error.value.key == "backends[0].apis" and error.value.line == 5 and "soap" in str(error.value)
