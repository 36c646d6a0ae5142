"""OpenAI's /v1/responses (plugins.responses_api) through the router in-process, with
the official ``openai`` SDK (``responses.create``, ``responses.stream`` and its event
accumulator, which raises on an inconsistent sequence) against fake upstreams on
127.0.0.1 that answer in chat completions; the store, previous_response_id, GET/DELETE."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from router.testing import FakeUpstream, router_client


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    upstream = await FakeUpstream("a", models=["tiny"]).start()
    yield upstream
    await upstream.stop()


def config(*ups: FakeUpstream, **top: Any) -> dict[str, Any]:
    return {"backends": [{"name": u.name, "provider": "openai_compatible", "base_url": u.url} for u in ups], **top}


def sdk(client: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="none", max_retries=0)


TOOLS: list[Any] = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}}]


async def test_create_translates_request_and_answer(up):
    async with router_client(config(up)) as client:
        response = await sdk(client).responses.create(
            model="tiny", instructions="Be brief.", max_output_tokens=32, temperature=0.2, top_p=0.8,
            input=[{"role": "developer", "content": "Answer in English."},
                   {"role": "user", "content": [{"type": "input_text", "text": "Hi "},
                                                {"type": "input_text", "text": "there"}]}],
            reasoning={"effort": "high"}, user="u1")
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == "hello from a"
    assert response.output[0].type == "message"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (5, 4, 9)
    assert response.instructions == "Be brief." and response.max_output_tokens == 32
    sent = up.requests[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "system", "content": "Answer in English."},
                                {"role": "user", "content": "Hi there"}]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["reasoning_effort"], sent["user"],
            sent["stream"]) == (32, 0.2, 0.8, "high", "u1", False)


async def test_reasoning_item_length_and_reasoning_tokens(up):
    up.behaviour.message_extra = {"reasoning_content": "Think first."}
    up.behaviour.usage_extra = {"completion_tokens_details": {"reasoning_tokens": 3}}
    up.behaviour.finish_reason = "length"
    async with router_client(config(up)) as client:
        response = await sdk(client).responses.create(model="tiny", input="Hi")
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "Think first."  # type: ignore[union-attr,index]
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens == 3


async def test_text_format_json_schema_becomes_response_format(up):
    up.behaviour.content = '{"city": "Paris"}'
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    async with router_client(config(up)) as client:
        response = await sdk(client).responses.create(model="tiny", input="Where?", text={"format": {
            "type": "json_schema", "name": "place", "schema": schema, "strict": True}})
    assert json.loads(response.output_text) == {"city": "Paris"}
    assert up.requests[-1]["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "place", "schema": schema, "strict": True}}


async def test_function_tools_round_trip(up):
    async with router_client(config(up)) as client:
        api = sdk(client)
        first = await api.responses.create(model="tiny", input="Weather in Paris?", tools=TOOLS,
                                           tool_choice={"type": "function", "name": "get_weather"})
        call = first.output[-1]
        assert call.type == "function_call" and call.name == "get_weather"
        assert json.loads(call.arguments) == {"city": "Paris"}
        assert up.requests[-1]["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "parameters": TOOLS[0]["parameters"], "description": "The weather in a city"}}]
        assert up.requests[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        second = await api.responses.create(model="tiny", input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "18C"}], store=False)
    assert second.output_text == "hello from a"
    assert up.requests[-1]["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": "get_weather",
                                                                 "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "18C"}]


async def test_stream_with_the_sdk_accumulator(up):
    up.behaviour.deltas = [{"reasoning_content": "Hmm "}, {"reasoning_content": "ok."},
                           {"content": "Hel"}, {"content": "lo"}]
    async with router_client(config(up)) as client:
        async with sdk(client).responses.stream(model="tiny", input="Hi") as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
                 "response.output_text.done", "response.content_part.done", "response.output_item.done",
                 "response.reasoning_text.delta"):
        assert kind in kinds
    assert final.output_text == "Hello"
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "Hmm ok."  # type: ignore[union-attr,index]
    assert final.usage is not None and final.usage.output_tokens == 4


async def test_stream_function_call_split_at_awkward_places(up):
    arguments = '{"city": "Par\\u00eds", "n": [1, 2]}'
    cuts = [0, 1, 2, 9, 14, 15, 21, 27, len(arguments)]
    up.behaviour.deltas = [{"content": ""}] + [
        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[a:b]}}]} for a, b in zip(cuts, cuts[1:])]
    up.behaviour.finish_reason = "tool_calls"
    async with router_client(config(up)) as client:
        async with sdk(client).responses.stream(model="tiny", input="Weather?", tools=TOOLS) as stream:
            deltas = [e.delta async for e in stream if e.type == "response.function_call_arguments.delta"]
            final = await stream.get_final_response()
    assert "".join(deltas) == arguments
    call = final.output[-1]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id == "call_1"
    assert json.loads(call.arguments) == json.loads(arguments)


async def test_stream_mid_stream_failure_is_response_failed(up):
    up.behaviour.pieces = ["one ", "two ", "three "]
    up.behaviour.error_event_after = 2
    up.behaviour.chunk_delay_s = 0.05  # events one by one: the first is committed before the break
    async with router_client(config(up)) as client:
        seen: list[str] = []
        # The stream ends with response.failed and nothing after it (no OpenAI error
        # event, no [DONE]): the SDK's parser takes every event.
        async with sdk(client).responses.stream(model="tiny", input="Hi") as stream:
            async for event in stream:
                seen.append(event.type)
                if event.type == "response.failed":
                    failed = event.response
    assert seen[0] == "response.created" and seen[-1] == "response.failed"
    assert "response.completed" not in seen
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.message == "the engine failed"
    assert failed.output[0].content[0].text == "one two "  # type: ignore[union-attr,index]


async def test_store_previous_response_id_get_and_delete(up, tmp_path: Path):
    cfg = config(up, responses={"store": str(tmp_path / "responses.db")})
    async with router_client(cfg) as client:
        api = sdk(client)
        first = await api.responses.create(model="tiny", input="My name is Ada.", instructions="Be kind.")
        second = await api.responses.create(model="tiny", input="What is my name?", previous_response_id=first.id)
        assert second.previous_response_id == first.id
        assert up.requests[-1]["messages"] == [  # the earlier turn, without its instructions
            {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "hello from a"},
            {"role": "user", "content": "What is my name?"}]
        got = await api.responses.retrieve(first.id)
        assert got.id == first.id and got.output_text == "hello from a"
        unstored = await api.responses.create(model="tiny", input="x", store=False)
        with pytest.raises(openai.NotFoundError):
            await api.responses.retrieve(unstored.id)
        await api.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            await api.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError) as missing:
            await api.responses.create(model="tiny", input="again", previous_response_id=first.id)
        assert missing.value.body["param"] == "previous_response_id"  # type: ignore[index]
    async with router_client(cfg) as client:  # the SQLite file outlives the router
        kept = await sdk(client).responses.retrieve(second.id)
    assert kept.output_text == "hello from a"


async def test_streamed_response_is_stored(up):
    up.behaviour.pieces = ["a", "b"]
    async with router_client(config(up)) as client:
        async with sdk(client).responses.stream(model="tiny", input="Hi") as stream:
            final = await stream.get_final_response()
        got = await sdk(client).responses.retrieve(final.id)
    assert got.output_text == "ab" and got.status == "completed"


async def test_store_is_bounded_by_count(up):
    async with router_client(config(up, responses={"max_responses": 2})) as client:
        api = sdk(client)
        ids = [(await api.responses.create(model="tiny", input=str(i))).id for i in range(3)]
        with pytest.raises(openai.NotFoundError):
            await api.responses.retrieve(ids[0])
        assert (await api.responses.retrieve(ids[2])).id == ids[2]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "tiny"}, "input"),
    ({"model": "tiny", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "tiny", "input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"model": "tiny", "input": "x", "background": True}, "background"),
    ({"model": "tiny", "input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
])
async def test_bad_requests_name_the_field(up, body, param):
    async with router_client(config(up)) as client:
        resp = await client.post("/v1/responses", json=body)
        data = await resp.json()
    assert resp.status == 400 and data["error"]["param"] == param
    assert up.requests == []


async def test_chat_completions_untouched(up):
    async with router_client(config(up)) as client:
        resp = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": [
            {"role": "user", "content": "x"}]})
        data = await resp.json()
    assert data["x_upstream"] == "a" and data["object"] == "chat.completion"


async def test_stream_text_then_two_function_calls(up):
    up.behaviour.deltas = [{"content": "Checking."},
                           {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]},
                           {"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                            "function": {"name": "get_weather", "arguments": '{"ci'}}]},
                           {"tool_calls": [{"index": 1, "function": {"arguments": 'ty": "Rome"}'}}]}]
    up.behaviour.finish_reason = "tool_calls"
    async with router_client(config(up)) as client:
        async with sdk(client).responses.stream(model="tiny", input="Paris and Rome?", tools=TOOLS) as stream:
            final = await stream.get_final_response()
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    assert final.output_text == "Checking."
    calls = [(i.call_id, json.loads(i.arguments)) for i in final.output if i.type == "function_call"]
    assert calls == [("call_1", {"city": "Paris"}), ("call_2", {"city": "Rome"})]


async def test_aliases_and_failover_as_for_chat():
    a = await FakeUpstream("a", models=["real-model"]).start()
    b = await FakeUpstream("b", models=["real-model"]).start()
    try:
        a.behaviour.fail_status = 500
        async with router_client(config(a, b, aliases={"gpt-5": "real-model"})) as client:
            response = await sdk(client).responses.create(model="gpt-5", input="x")
    finally:
        await a.stop()
        await b.stop()
    assert response.output_text == "hello from b" and response.model == "real-model"
    assert b.requests[-1]["model"] == "real-model" and a.served >= 1


async def test_think_tags_become_reasoning_items_through_the_reasoning_plugin(up):
    up.behaviour.pieces = ["<think>mull", "ing</think>", "Hel", "lo"]
    async with router_client(config(up)) as client:
        async with sdk(client).responses.stream(model="tiny", input="Hi") as stream:
            final = await stream.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "mulling"  # type: ignore[union-attr,index]
    assert final.output_text == "Hello"


async def test_expired_responses_are_gone_after_a_restart(up, tmp_path: Path):
    path = tmp_path / "responses.db"
    cfg = config(up, responses={"store": str(path), "ttl_s": 3600})
    async with router_client(cfg) as client:
        api = sdk(client)
        old = await api.responses.create(model="tiny", input="old")
        new = await api.responses.create(model="tiny", input="new")
    with sqlite3.connect(path) as db:  # the first was written two hours ago
        db.execute("UPDATE responses SET created = ? WHERE id = ?", (time.time() - 7200, old.id))
    async with router_client(cfg) as client:
        api = sdk(client)
        with pytest.raises(openai.NotFoundError):
            await api.responses.retrieve(old.id)
        assert (await api.responses.retrieve(new.id)).id == new.id
    with sqlite3.connect(path) as db:
        assert [row[0] for row in db.execute("SELECT id FROM responses")] == [new.id]
