"""Thinking / answer separation (plugins.reasoning): think tags, GPT-OSS harmony channels,
``reasoning`` / ``reasoning_content`` fields, seed 001's request fields; streamed and not,
through the openai SDK and raw HTTP, against fake upstreams on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from plugins.reasoning.stream import StreamTransform
from router import ConfigError, ReasoningFormat, SSESplitter
from router.config.loader import parse_config
from router.plugins import make_plugin_manager
from router.registry import Registry
from router.testing import FakeUpstream, router_client
from tests.conftest import backend

THINK = "<think>Let me think: 2+2.</think>\n\nThe answer is 4."
HARMONY = ("<|channel|>analysis<|message|>User asks the capital.<|end|>"
           "<|start|>assistant<|channel|>commentary<|message|>Be accurate.<|end|>"
           "<|start|>assistant<|channel|>final<|message|>Washington<|return|>")


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], **extra}


def config(up: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {"backends": [{"name": up.name, "provider": "openai_compatible", "base_url": up.url, **extra}]}


@pytest.fixture
async def up():
    upstream = await FakeUpstream("alpha").start()
    yield upstream
    await upstream.stop()


async def stream_deltas(client: Any, body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The choices' deltas of a streamed answer, and its raw events."""
    resp = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert resp.status == 200
    raw = await resp.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    deltas = [json.loads(e[6:])["choices"][0].get("delta", {}) for e in events[:-1]
              if json.loads(e[6:])["choices"]]
    return deltas, events


def joined(deltas: list[dict[str, Any]], field: str) -> str:
    return "".join(d.get(field) or "" for d in deltas)


# -- think tags ---------------------------------------------------------------------------


def test_think_tags_non_streamed_through_the_sdk(upstreams, start_router):
    up = upstreams("alpha")
    up.behaviour.content = THINK
    router = start_router(config(up))
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="k", max_retries=0)
    message = client.chat.completions.create(**chat()).choices[0].message
    assert message.content == "The answer is 4."
    assert message.reasoning_content == "Let me think: 2+2."  # type: ignore[attr-defined]


def test_think_tags_streamed_through_the_sdk(upstreams, start_router):
    up = upstreams("alpha")
    up.behaviour.pieces = ["<th", "ink>Let me", " think</thi", "nk>\n\nFour", "."]
    router = start_router(config(up))
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="k", max_retries=0)
    reasoning, content = "", ""
    seen_reasoning_after_content = False
    for chunk in client.chat.completions.create(**chat(), stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        piece = getattr(delta, "reasoning_content", None)
        if piece:
            seen_reasoning_after_content |= bool(content)
            reasoning += piece
        content += delta.content or ""
    assert (reasoning, content) == ("Let me think", "Four.")
    assert not seen_reasoning_after_content


async def test_a_think_tag_split_at_every_byte_position(up):
    async with router_client(config(up)) as client:
        for at in range(len(THINK) + 1):
            up.behaviour.pieces = [THINK[:at], THINK[at:]]
            deltas, _ = await stream_deltas(client, chat())
            assert joined(deltas, "reasoning_content") == "Let me think: 2+2.", at
            assert joined(deltas, "content") == "The answer is 4.", at
            if 0 < at < len(THINK):  # (else the upstream itself sends a content "")
                assert all(d.get("content") != "" for d in deltas), at  # held text is not sent as ""
        # One character per event as well.
        up.behaviour.pieces = list(THINK)
        deltas, _ = await stream_deltas(client, chat())
        assert joined(deltas, "reasoning_content") == "Let me think: 2+2."
        assert joined(deltas, "content") == "The answer is 4."
        first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
        assert not any(d.get("reasoning_content") for d in deltas[first_content:])


async def test_no_closing_tag_is_all_reasoning(up):
    up.behaviour.content = "<think>still thinking when max_tokens hit"
    up.behaviour.pieces = ["<think>still thinking", " when max_tokens hit"]
    async with router_client(config(up)) as client:
        body = await (await client.post("/v1/chat/completions", json=chat())).json()
        message = body["choices"][0]["message"]
        assert message["reasoning_content"] == "still thinking when max_tokens hit"
        assert message["content"] == ""
        deltas, _ = await stream_deltas(client, chat())
        assert joined(deltas, "reasoning_content") == "still thinking when max_tokens hit"
        assert joined(deltas, "content") == ""


async def test_a_stream_cut_mid_tag_releases_what_was_held(up):
    up.behaviour.pieces = ["<think>almost</thi"]
    up.behaviour.omit_finish = True
    up.behaviour.omit_done = True
    async with router_client(config(up)) as client:
        resp = await client.post("/v1/chat/completions", json=chat(stream=True))
        raw = (await resp.read()).decode()
    reasoning = "".join(json.loads(e[6:])["choices"][0]["delta"].get("reasoning_content", "")
                        for e in raw.split("\n\n") if e.startswith('data: {"id"'))
    assert reasoning == "almost</thi"
    assert "upstream_stream_incomplete" in raw  # the cut is still reported


async def test_custom_tags_and_per_model_globs(up):
    up.models = ["test-model", "plain-1"]
    up.behaviour.content = "[[t]]why[[/t]]because"
    cfg = config(up, reasoning={"tags": ["[[t]]", "[[/t]]"], "models": {"plain-*": {"parser": "none"}}})
    async with router_client(cfg) as client:
        message = (await (await client.post("/v1/chat/completions", json=chat())).json())["choices"][0]["message"]
        assert (message["reasoning_content"], message["content"]) == ("why", "because")
        raw = await (await client.post("/v1/chat/completions", json=chat(model="plain-1"))).json()
        assert raw["choices"][0]["message"] == {"role": "assistant", "content": "[[t]]why[[/t]]because"}


async def test_parser_none_passes_tags_untouched(up):
    up.behaviour.content = THINK
    up.behaviour.pieces = ["<think>a</think>", "b"]
    async with router_client(config(up, reasoning={"parser": "none"})) as client:
        message = (await (await client.post("/v1/chat/completions", json=chat())).json())["choices"][0]["message"]
        assert message == {"role": "assistant", "content": THINK}
        deltas, _ = await stream_deltas(client, chat())
        assert joined(deltas, "content") == "<think>a</think>b"
        assert not any("reasoning_content" in d for d in deltas)


async def test_text_without_a_leading_tag_is_plain(up):
    up.behaviour.content = "The tag <think> here is just text"
    up.behaviour.pieces = ["  The tag ", "<think> here", " is just text"]
    async with router_client(config(up)) as client:
        message = (await (await client.post("/v1/chat/completions", json=chat())).json())["choices"][0]["message"]
        assert message == {"role": "assistant", "content": "The tag <think> here is just text"}
        deltas, _ = await stream_deltas(client, chat())
        assert joined(deltas, "content") == "  The tag <think> here is just text"
        assert not any("reasoning_content" in d for d in deltas)


def test_a_plain_stream_passes_its_events_unchanged_after_the_first_words():
    """With ``auto``, once the first words show no tag, each event leaves as its own
    bytes: the same SSEEvent object, not re-encoded (what the relay then writes is
    ``event.raw``)."""
    transform = StreamTransform(ReasoningFormat(), None)
    splitter = SSESplitter()
    stream = b"".join(
        b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}\n\n' % word
        for word in (b"Hello", b" world", b" again")
    ) + b"data: [DONE]\n\n"
    events = splitter.feed(stream)
    outs = [list(transform.event(event)) for event in events]
    assert all(out == [event] and out[0] is event for out, event in zip(outs, events))
    assert transform.settled and transform.passthrough
    assert b"".join(out[0].encode() for out in outs) == stream


# -- reasoning fields backends already send ------------------------------------------------


async def test_reasoning_and_reasoning_content_fields_are_normalised(up):
    async with router_client(config(up)) as client:
        up.behaviour.content = "Four."
        up.behaviour.message_extra = {"reasoning": "vLLM's name"}
        message = (await (await client.post("/v1/chat/completions", json=chat())).json())["choices"][0]["message"]
        assert message == {"role": "assistant", "content": "Four.", "reasoning": "vLLM's name",
                           "reasoning_content": "vLLM's name"}
        up.behaviour.message_extra = {"reasoning_content": "already right"}
        message = (await (await client.post("/v1/chat/completions", json=chat())).json())["choices"][0]["message"]
        assert message == {"role": "assistant", "content": "Four.", "reasoning_content": "already right"}

        up.behaviour.deltas = [{"reasoning": "thin"}, {"reasoning": "king"}, {"content": "Four."}]
        deltas, _ = await stream_deltas(client, chat())
        assert joined(deltas, "reasoning_content") == "thinking"
        assert joined(deltas, "reasoning") == "thinking"
        assert joined(deltas, "content") == "Four."
        up.behaviour.deltas = [{"reasoning_content": "thin"}, {"reasoning_content": "king"}, {"content": "Four."}]
        deltas, _ = await stream_deltas(client, chat())
        assert joined(deltas, "reasoning_content") == "thinking"
        assert not any("reasoning" in d for d in deltas)


# -- GPT-OSS harmony ----------------------------------------------------------------------


async def test_harmony_channels_non_streamed(up):
    up.behaviour.content = HARMONY
    async with router_client(config(up)) as client:
        body = await (await client.post("/v1/chat/completions", json=chat())).json()
    message = body["choices"][0]["message"]
    assert message["content"] == "Washington"
    assert message["reasoning_content"] == "User asks the capital.Be accurate."
    assert "thinking" not in message and "channels" not in message


async def test_harmony_split_at_every_position(up):
    async with router_client(config(up, reasoning={"parser": "harmony"})) as client:
        for at in range(len(HARMONY) + 1):
            up.behaviour.pieces = [HARMONY[:at], HARMONY[at:]]
            deltas, _ = await stream_deltas(client, chat())
            assert joined(deltas, "reasoning_content") == "User asks the capital.Be accurate.", at
            assert joined(deltas, "content") == "Washington", at
            assert "<|" not in json.dumps(deltas), at


async def test_harmony_tool_call_preamble_is_commentary(up):
    up.behaviour.content = ("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
                            '{"city":"Paris"}<|call|>')
    async with router_client(config(up)) as client:
        body = await (await client.post("/v1/chat/completions", json=chat(separate_thinking=True))).json()
    message = body["choices"][0]["message"]
    assert message["channels"] == {"analysis": "", "commentary": '{"city":"Paris"}', "final": ""}


# -- seed 001's request fields ------------------------------------------------------------


async def test_separate_thinking_channels_level_and_usage(up):
    up.behaviour.content = HARMONY
    up.behaviour.usage_extra = {"completion_tokens": 30, "total_tokens": 35,
                                "completion_tokens_details": {"reasoning_tokens": 25}}
    async with router_client(config(up)) as client:
        resp = await client.post("/v1/chat/completions", json=chat(
            separate_thinking=True, reasoning="high", developer_instructions="Answer in one word."))
        body = await resp.json()
    message = body["choices"][0]["message"]
    assert message["content"] == "Washington"
    assert message["thinking"] == {"analysis": "User asks the capital.", "commentary": "Be accurate.",
                                   "raw": "[Analysis]\nUser asks the capital.\n[Commentary]\nBe accurate."}
    assert message["channels"] == {"analysis": "User asks the capital.", "commentary": "Be accurate.",
                                   "final": "Washington"}
    assert body["reasoning_level"] == "high"
    assert body["usage"]["thinking_tokens"] == 25
    assert "channel_tokens" not in body["usage"]  # two thinking channels: no exact split
    sent = up.requests[-1]
    assert sent["reasoning_effort"] == "high"
    assert not {"separate_thinking", "reasoning", "developer_instructions", "include_channels"} & set(sent)
    assert sent["messages"] == [{"role": "developer", "content": "Answer in one word."},
                                {"role": "user", "content": "hi"}]


async def test_include_channels_limits_what_appears(up):
    up.behaviour.content = HARMONY
    async with router_client(config(up)) as client:
        body = await (await client.post("/v1/chat/completions", json=chat(
            separate_thinking=True, include_channels=["analysis", "final"]))).json()
        message = body["choices"][0]["message"]
        assert message["reasoning_content"] == "User asks the capital."
        assert message["channels"] == {"analysis": "User asks the capital.", "final": "Washington"}
        assert message["thinking"] == {"analysis": "User asks the capital.",
                                       "raw": "[Analysis]\nUser asks the capital."}
        up.behaviour.pieces = [HARMONY[:40], HARMONY[40:]]
        deltas, _ = await stream_deltas(client, chat(include_channels=["final"]))
        assert joined(deltas, "content") == "Washington"
        assert not any(d.get("reasoning_content") for d in deltas)


async def test_think_answers_have_channels_too_and_usage_splits_exactly(up):
    up.behaviour.content = THINK
    up.behaviour.usage_extra = {"completion_tokens": 12, "completion_tokens_details": {"reasoning_tokens": 8}}
    async with router_client(config(up)) as client:
        body = await (await client.post("/v1/chat/completions", json=chat(separate_thinking=True))).json()
    assert body["choices"][0]["message"]["channels"] == {
        "analysis": "Let me think: 2+2.", "commentary": "", "final": "The answer is 4."}
    assert body["usage"]["channel_tokens"] == {"analysis": 8, "commentary": 0, "final": 4}
    assert "reasoning_level" not in body


async def test_streamed_usage_counts_thinking(up):
    up.behaviour.pieces = ["<think>a", "b", "c</think>", "d"]
    async with router_client(config(up)) as client:
        _, events = await stream_deltas(client, chat(stream_options={"include_usage": True}))
        usage = json.loads(events[-2][6:])["usage"]
        assert usage["thinking_tokens"] == 3  # three upstream events carried thinking
        up.behaviour.usage_extra = {"completion_tokens_details": {"reasoning_tokens": 7}}
        _, events = await stream_deltas(client, chat(stream_options={"include_usage": True}))
        assert json.loads(events[-2][6:])["usage"]["thinking_tokens"] == 7


async def test_harmony_backends_get_the_reasoning_line(up):
    async with router_client(config(up, reasoning={"parser": "harmony"})) as client:
        await client.post("/v1/chat/completions", json={
            "model": "test-model", "reasoning": "low",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]})
        assert up.requests[-1]["messages"][0] == {"role": "system", "content": "Be brief.\nReasoning: low"}
        await client.post("/v1/chat/completions", json=chat(reasoning="medium"))
        assert up.requests[-1]["messages"][0] == {"role": "system", "content": "Reasoning: medium"}
    async with router_client(config(up)) as client:  # auto: not known to be harmony
        await client.post("/v1/chat/completions", json=chat(reasoning="medium"))
        assert up.requests[-1]["messages"] == [{"role": "user", "content": "hi"}]
        assert up.requests[-1]["reasoning_effort"] == "medium"


@pytest.mark.parametrize(("field", "value", "says"), [
    ("separate_thinking", "yes", "true or false"),
    ("include_channels", ["analysis", "thoughts"], "unknown channel 'thoughts'"),
    ("include_channels", "final", "a list of channel names"),
    ("reasoning", "extreme", "low, medium, high"),
    ("developer_instructions", 3, "a string"),
])
async def test_bad_request_fields_are_400s_naming_them(up, field, value, says):
    async with router_client(config(up)) as client:
        resp = await client.post("/v1/chat/completions", json=chat(**{field: value}))
        error = (await resp.json())["error"]
    assert resp.status == 400 and error["param"] == field and says in error["message"]
    assert up.requests == []


def test_tags_must_be_two_non_empty_strings():
    registry = Registry.collect(make_plugin_manager())
    text = ("backends:\n  - name: a\n    provider: openai_compatible\n    base_url: http://x\n"
            "    reasoning:\n      tags: [\"<t>\"]\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, registry.providers, registry.strategies, file="c.yaml")
    assert (info.value.key, info.value.line) == ("backends[0].reasoning.tags", 6)
    assert "exactly 2" in info.value.message
    with pytest.raises(ConfigError) as info:
        parse_config(text.replace('["<t>"]', "[a, b]").replace("tags", "parser: smart\n      tags"),
                     registry.providers, registry.strategies, file="c.yaml")
    assert info.value.key == "backends[0].reasoning.parser" and "auto, think, harmony, none" in info.value.message
    assert backend  # the shared helper stays importable for the other test modules


async def test_parser_none_leaves_the_relay_zero_copy(up):
    """No built-in plugin returns a transform for a plain request to a ``parser: none``
    backend (so the relay forwards the backend's chunks untouched); with ``auto`` the
    reasoning plugin does."""
    from router.request import ProxyRequest
    from router.web.middlewares import STATE

    body = json.dumps(chat(stream=True)).encode()
    for parser, expected in (("none", 0), ("auto", 1)):
        async with router_client(config(up, reasoning={"parser": parser})) as client:
            state = client.server.app[STATE]
            view = state.backends.backends["alpha"].view
            request = ProxyRequest.parse("chat/completions", body, "rid", {})
            await state.hooks.prepare_request(request, state.view)
            for content_type in ("text/event-stream", "application/json"):
                transforms = await state.hooks.transform_response(request, view, 200, content_type, state.view)
                assert len(transforms) == expected, (parser, content_type, transforms)


async def test_the_relay_stops_splitting_once_every_transform_passes_through(up):
    """``ResponseTransform.passthrough``: the relay forwards the rest of the stream as the
    backend's bytes, without splitting it or calling the transforms again."""
    from router import ResponseTransform, hookimpl

    seen: list[bytes] = []

    class Once(ResponseTransform):
        def event(self, event):
            seen.append(event.data)
            self.passthrough = True
            return (event,)

    class Plugin:
        @hookimpl
        def transform_response(self, content_type):
            return Once() if content_type == "text/event-stream" else None

    up.behaviour.chunks = 6
    up.behaviour.chunk_delay_s = 0.05  # the events arrive in separate reads
    async with router_client(config(up, reasoning={"parser": "none"}), plugins=[Plugin()]) as client:
        deltas, events = await stream_deltas(client, chat())
    # The first read's events only (one, unless the router was too busy to read them apart),
    # never all eight.
    assert 1 <= len(seen) < 8 and b"tok0" in seen[0]
    assert joined(deltas, "content") == "".join(f"tok{i} " for i in range(6))
    assert events[-1] == b"data: [DONE]"


async def test_thinking_streams_are_parsed_to_the_end(up):
    up.behaviour.pieces = ["<think>a</think>", "b", "c"]
    up.behaviour.usage_extra = {}
    async with router_client(config(up)) as client:
        deltas, events = await stream_deltas(client, chat(stream_options={"include_usage": True}))
    assert joined(deltas, "content") == "bc"
    assert json.loads(events[-2][6:])["usage"]["thinking_tokens"] == 1


async def test_streams_with_separate_thinking_carry_channels_and_the_level(up):
    up.behaviour.pieces = [HARMONY[:45], HARMONY[45:120], HARMONY[120:]]
    async with router_client(config(up)) as client:
        deltas, events = await stream_deltas(client, chat(separate_thinking=True, reasoning="low"))
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        assert chunks[0]["reasoning_level"] == "low"
        assert not any("reasoning_level" in c for c in chunks[1:])
        by_channel: dict[str, str] = {}
        for delta in deltas:
            for channel, text in (delta.get("channels") or {}).items():
                by_channel[channel] = by_channel.get(channel, "") + text
        assert by_channel == {"analysis": "User asks the capital.", "commentary": "Be accurate.",
                              "final": "Washington"}
        # A plain answer: its content is the final channel, and include_channels applies.
        up.behaviour.pieces = ["Just ", "text"]
        deltas, _ = await stream_deltas(client, chat(separate_thinking=True))
        assert "".join(d.get("channels", {}).get("final", "") for d in deltas) == "Just text"
        deltas, _ = await stream_deltas(client, chat(include_channels=["analysis"]))
        assert joined(deltas, "content") == ""
