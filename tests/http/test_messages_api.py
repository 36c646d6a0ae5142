"""Anthropic's /v1/messages (plugins.anthropic_messages) through the router in-process,
with the official ``anthropic`` SDK (its parser and stream accumulator raise on a
malformed event) against fake upstreams on 127.0.0.1 that answer in chat completions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from router.testing import FakeUpstream, router_client


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    upstream = await FakeUpstream("a", models=["tiny"]).start()
    yield upstream
    await upstream.stop()


def config(*ups: FakeUpstream, **top: Any) -> dict[str, Any]:
    return {"backends": [{"name": u.name, "provider": "openai_compatible", "base_url": u.url} for u in ups], **top}


def sdk(client: Any, **kw: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(client.make_url("")).rstrip("/"), api_key=kw.pop("api_key", "none"),
                                    max_retries=0, **kw)


TOOLS = [{"name": "get_weather", "description": "The weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


async def test_create_text_translates_request_and_answer(up):
    async with router_client(config(up)) as client:
        message = await sdk(client).messages.create(
            model="tiny", max_tokens=32, system=[{"type": "text", "text": "Be brief."}],
            messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                   {"type": "image", "source": {"type": "base64",
                                                    "media_type": "image/png", "data": "iVBORw0K"}}]}],
            stop_sequences=["\n\n"], metadata={"user_id": "u1"},
            extra_body={"temperature": 0.3, "top_p": 0.9, "top_k": 40})  # sampling left the SDK in 2.1x
    assert message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "hello from a"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 4)
    assert message.model == "tiny"
    sent = up.requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]}]
    assert (sent["max_tokens"], sent["stop"], sent["temperature"], sent["top_p"], sent["top_k"], sent["user"],
            sent["stream"]) == (32, ["\n\n"], 0.3, 0.9, 40, "u1", False)


async def test_create_max_tokens_and_thinking(up):
    up.behaviour.finish_reason = "length"
    up.behaviour.message_extra = {"reasoning_content": "Let me think."}
    async with router_client(config(up)) as client:
        message = await sdk(client).messages.create(
            model="tiny", max_tokens=4, thinking={"type": "enabled", "budget_tokens": 2048},
            messages=[{"role": "user", "content": "Hi"}])
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Let me think."  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens"
    assert up.requests[-1]["reasoning_effort"] == "low"


async def test_tools_round_trip(up):
    async with router_client(config(up)) as client:
        api = sdk(client)
        first = await api.messages.create(model="tiny", max_tokens=64, tools=TOOLS,
                                          tool_choice={"type": "tool", "name": "get_weather"},
                                          messages=[{"role": "user", "content": "Weather in Paris?"}])
        assert first.stop_reason == "tool_use"
        use = first.content[-1]
        assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
        assert up.requests[-1]["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "parameters": TOOLS[0]["input_schema"], "description": "The weather in a city"}}]
        assert up.requests[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        second = await api.messages.create(model="tiny", max_tokens=64, messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [c.model_dump() for c in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C, sunny"}]}])
    assert second.content[0].text == "hello from a"  # type: ignore[union-attr]
    sent = up.requests[-1]["messages"]
    assert sent[1]["role"] == "assistant" and sent[1]["tool_calls"] == [
        {"id": use.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "18C, sunny"}


async def test_stream_text_and_thinking_with_the_accumulator(up):
    up.behaviour.deltas = [{"reasoning_content": "Hmm, "}, {"reasoning_content": "easy."},
                           {"content": "Hel"}, {"content": "lo!"}]
    async with router_client(config(up)) as client:
        async with sdk(client).messages.stream(model="tiny", max_tokens=32,
                                               messages=[{"role": "user", "content": "Hi"}]) as stream:
            kinds = [event.type async for event in stream]
            message = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_stop" in kinds and "message_delta" in kinds
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Hmm, easy."  # type: ignore[union-attr]
    assert message.content[1].text == "Hello!"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 4
    assert up.requests[-1]["stream_options"] == {"include_usage": True}


async def test_stream_tool_use_split_at_awkward_places(up):
    arguments = '{"city": "Par\\u00eds \\"old\\" town", "days": [1, 2]}'
    cuts = [0, 1, 3, 10, 17, 19, 24, 29, 31, 40, len(arguments)]
    pieces = [arguments[a:b] for a, b in zip(cuts, cuts[1:])]
    up.behaviour.deltas = [{"content": "Let me check."}] + [
        {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces]
    up.behaviour.finish_reason = "tool_calls"
    async with router_client(config(up)) as client:
        async with sdk(client).messages.stream(model="tiny", max_tokens=32, tools=TOOLS,
                                               messages=[{"role": "user", "content": "Weather?"}]) as stream:
            partials = [e.delta.partial_json async for e in stream  # type: ignore[union-attr]
                        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
            message = await stream.get_final_message()
    assert "".join(partials) == arguments
    assert [b.type for b in message.content] == ["text", "tool_use"]
    use = message.content[1]
    assert use.name == "get_weather" and use.id == "call_1"  # type: ignore[union-attr]
    assert use.input == json.loads(arguments)  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


async def test_stream_length_stop_reason(up):
    up.behaviour.pieces = ["a", "b"]
    up.behaviour.finish_reason = "length"
    async with router_client(config(up)) as client:
        async with sdk(client).messages.stream(model="tiny", max_tokens=2,
                                               messages=[{"role": "user", "content": "Hi"}]) as stream:
            message = await stream.get_final_message()
    assert message.stop_reason == "max_tokens" and message.content[0].text == "ab"  # type: ignore[union-attr]


async def test_stream_mid_stream_failure_is_an_error_event(up):
    up.behaviour.pieces = ["one ", "two ", "three "]
    up.behaviour.error_event_after = 2
    up.behaviour.chunk_delay_s = 0.05  # events one by one: the first is committed before the break
    async with router_client(config(up)) as client:
        resp = await client.post("/v1/messages", json={"model": "tiny", "max_tokens": 8, "stream": True,
                                                      "messages": [{"role": "user", "content": "Hi"}]})
        raw = (await resp.read()).decode()
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with sdk(client).messages.stream(model="tiny", max_tokens=8,
                                                   messages=[{"role": "user", "content": "Hi"}]) as stream:
                async for _ in stream:
                    pass
    names = [line[7:] for line in raw.split("\n") if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "error" and "message_stop" not in names
    error = [json.loads(e.split("data: ", 1)[1]) for e in raw.split("\n\n") if e.startswith("event: error")][0]
    assert error == {"type": "error", "error": {"type": "api_error", "message": "the engine failed"}}
    assert "the engine failed" in str(caught.value)


async def test_stream_cut_connection_is_an_error_event(up):
    up.behaviour.pieces = ["one ", "two ", "three "]
    up.behaviour.die_after_chunks = 2
    up.behaviour.chunk_delay_s = 0.05
    async with router_client(config(up)) as client:
        resp = await client.post("/v1/messages", json={"model": "tiny", "max_tokens": 8, "stream": True,
                                                      "messages": [{"role": "user", "content": "Hi"}]})
        raw = (await resp.read()).decode()
    names = [line[7:] for line in raw.split("\n") if line.startswith("event: ")]
    assert "content_block_delta" in names and names[-1] == "error" and "message_stop" not in names


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}, "max_tokens"),
    ({"model": "tiny", "max_tokens": 8, "messages": []}, "messages"),
    ({"model": "tiny", "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
    ({"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}],
      "thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
])
async def test_bad_requests_get_anthropic_errors(up, body, param):
    async with router_client(config(up)) as client:
        resp = await client.post("/v1/messages", json=body)
        data = await resp.json()
    assert resp.status == 400
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert data["error"]["message"].startswith(param)
    assert up.requests == []


async def test_sdk_raises_typed_errors(up):
    async with router_client(config(up)) as client:
        with pytest.raises(anthropic.NotFoundError) as missing:
            await sdk(client).messages.create(model="nope", max_tokens=8, messages=[{"role": "user", "content": "x"}])
        up.behaviour.fail_status = 500
        with pytest.raises(anthropic.InternalServerError) as failed:
            await sdk(client).messages.create(model="tiny", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "nope" in missing.value.body["error"]["message"]  # type: ignore[index]
    assert failed.value.body == {"type": "error", "error": {"type": "api_error", "message": "a failed on purpose"}}


async def test_x_api_key_with_client_keys(up, tmp_path):
    cfg = config(up, auth={"keys": [{"name": "ci", "key": "sk-test-anthropic-key-0123456789"}]})
    async with router_client(cfg) as client:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await sdk(client, api_key="wrong").messages.create(
                model="tiny", max_tokens=8, messages=[{"role": "user", "content": "x"}])
        ok = await sdk(client, api_key="sk-test-anthropic-key-0123456789").messages.create(
            model="tiny", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert refused.value.body["type"] == "error"  # type: ignore[index]
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert ok.content[0].text == "hello from a"  # type: ignore[union-attr]


async def test_failover_to_a_second_backend(up):
    b = await FakeUpstream("b", models=["tiny"]).start()
    try:
        up.behaviour.fail_status = 503
        async with router_client(config(up, b)) as client:
            resp = await client.post("/v1/messages", json={"model": "tiny", "max_tokens": 8,
                                                          "messages": [{"role": "user", "content": "x"}]})
            data = await resp.json()
    finally:
        await b.stop()
    assert resp.status == 200 and data["content"] == [{"type": "text", "text": "hello from b"}]
    assert resp.headers["X-Router-Backend"] == "b"


async def test_count_tokens_is_an_estimate(up):
    async with router_client(config(up)) as client:
        count = await sdk(client).messages.count_tokens(
            model="tiny", system="Be brief.", messages=[{"role": "user", "content": "x" * 400}])
        resp = await client.post("/v1/messages/count_tokens", json={"model": "tiny", "messages": "no"})
        bad = await resp.json()
    assert 100 <= count.input_tokens <= 120
    assert count.model_extra == {"estimate": True}
    assert resp.status == 400 and bad["error"]["type"] == "invalid_request_error"
    assert up.requests == []


async def test_chat_completions_untouched(up):
    async with router_client(config(up)) as client:
        resp = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": [
            {"role": "user", "content": "x"}]})
        data = await resp.json()
    assert data["x_upstream"] == "a" and data["object"] == "chat.completion"


async def test_stream_two_tool_calls_and_a_tool_result_with_blocks(up):
    up.behaviour.deltas = [{}, {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]},
                           {"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]},
                           {"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                            "function": {"name": "get_weather", "arguments": ""}}]},
                           {"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Rome"}'}}]}]
    up.behaviour.finish_reason = "tool_calls"
    async with router_client(config(up)) as client:
        api = sdk(client)
        async with api.messages.stream(model="tiny", max_tokens=32, tools=TOOLS,
                                       messages=[{"role": "user", "content": "Paris and Rome?"}]) as stream:
            message = await stream.get_final_message()
        uses = [b for b in message.content if b.type == "tool_use"]
        assert [(u.id, u.input) for u in uses] == [("call_1", {"city": "Paris"}), ("call_2", {"city": "Rome"})]
        up.behaviour.deltas = None
        await api.messages.create(model="tiny", max_tokens=8, messages=[
            {"role": "user", "content": "Paris and Rome?"},
            {"role": "assistant", "content": [u.model_dump() for u in uses]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "18C"}]},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "no data", "is_error": True},
                {"type": "text", "text": "Thanks."}]}])
    sent = up.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool", "user"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_1", "call_2"]
    assert sent[2:] == [{"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                        {"role": "tool", "tool_call_id": "call_2", "content": "Error: no data"},
                        {"role": "user", "content": "Thanks."}]


@pytest.mark.parametrize("stream", [False, True])
async def test_stop_sequence_named_by_the_backend(up, stream):
    up.behaviour.choice_extra = {"stop_reason": "END"}  # vLLM names the stop string that matched
    up.behaviour.pieces = ["a", "b"]
    async with router_client(config(up)) as client:
        api = sdk(client)
        kwargs: dict[str, Any] = {"model": "tiny", "max_tokens": 8, "stop_sequences": ["END", "STOP"],
                                  "messages": [{"role": "user", "content": "x"}]}
        if stream:
            async with api.messages.stream(**kwargs) as s:
                message = await s.get_final_message()
        else:
            message = await api.messages.create(**kwargs)
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
        up.behaviour.choice_extra = {}
        plain = await api.messages.create(**kwargs)
    assert (plain.stop_reason, plain.stop_sequence) == ("end_turn", None)


async def test_aliases_and_failover_as_for_chat():
    a = await FakeUpstream("a", models=["real-model"]).start()
    b = await FakeUpstream("b", models=["real-model"]).start()
    try:
        a.behaviour.fail_status = 500
        async with router_client(config(a, b, aliases={"claude-sonnet-4-5": "real-model"})) as client:
            api = sdk(client)
            message = await api.messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                                messages=[{"role": "user", "content": "x"}])
            b.behaviour.pieces = ["o", "k"]
            async with api.messages.stream(model="claude-sonnet-4-5", max_tokens=8,
                                           messages=[{"role": "user", "content": "x"}]) as stream:
                streamed = await stream.get_final_message()
    finally:
        await a.stop()
        await b.stop()
    assert message.content[0].text == "hello from b"  # type: ignore[union-attr]
    assert streamed.content[0].text == "ok"  # type: ignore[union-attr]
    assert b.requests[-1]["model"] == "real-model" and a.served >= 1


async def test_think_tags_become_thinking_blocks_through_the_reasoning_plugin(up):
    up.behaviour.pieces = ["<think>mull", "ing</think>", "Hel", "lo"]
    async with router_client(config(up)) as client:
        async with sdk(client).messages.stream(model="tiny", max_tokens=32,
                                               messages=[{"role": "user", "content": "Hi"}]) as stream:
            message = await stream.get_final_message()
        up.behaviour.content = "<think>short</think>Hi!"
        whole = await sdk(client).messages.create(model="tiny", max_tokens=32,
                                                  messages=[{"role": "user", "content": "Hi"}])
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content] == [
        ("thinking", "mulling"), ("text", "Hello")]
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in whole.content] == [
        ("thinking", "short"), ("text", "Hi!")]


async def test_a_failed_stream_ends_in_anthropic_events_only(up):
    up.behaviour.pieces = ["one ", "two ", "three "]
    up.behaviour.error_event_after = 2
    up.behaviour.chunk_delay_s = 0.05
    async with router_client(config(up)) as client:
        resp = await client.post("/v1/messages", json={"model": "tiny", "max_tokens": 20, "stream": True,
                                                       "messages": [{"role": "user", "content": "Hi"}]})
        text = await resp.text()
    assert "event: error" in text
    assert "[DONE]" not in text and '"error":{"message"' not in text  # no OpenAI error event appended
