"""The drop-in proxy: the official openai SDK and raw HTTP through the router subprocess."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from tests.conftest import backend


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def post_json(url: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    status, hdrs, body = http("POST", url, json.dumps(payload).encode(),
                              {"Content-Type": "application/json", **(headers or {})})
    return status, hdrs, json.loads(body)


@pytest.fixture
def one(upstreams, start_router):
    up = upstreams("alpha", models=["test-model", "llama-3-8b", "other"])
    router = start_router({
        "backends": [backend("alpha", up, api_key="sk-upstream-secret", models=["test-model", "llama-*"])],
        "aliases": {"gpt-4o": "test-model"},
    })
    return up, router


def client(router, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key="client-key", max_retries=0, **kw)


def test_chat_completion_sync_sdk(one):
    up, router = one
    resp = client(router).chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}])
    completion = resp.parse()
    assert completion.choices[0].message.content == "hello from alpha"
    assert completion.usage.total_tokens == 9
    assert resp.headers["X-Router-Backend"] == "alpha"
    assert resp.headers["X-Request-ID"]
    # The backend's own key is sent upstream; the client's key is not.
    assert up.headers_seen[-1]["Authorization"] == "Bearer sk-upstream-secret"


def test_streaming_sync_sdk_preserves_unknown_fields_and_done(one):
    up, router = one
    stream = client(router).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 "
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert chunks[0].model_extra["x_unknown_field"] == 0
    # Raw bytes: the [DONE] sentinel arrives untouched.
    status, headers, body = http("POST", f"{router.url}/v1/chat/completions",
                                 json.dumps({"model": "test-model", "stream": True,
                                             "messages": [{"role": "user", "content": "x"}]}).encode(),
                                 {"Content-Type": "application/json"})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert body.endswith(b"data: [DONE]\n\n")


def test_tool_calls_pass_through(one):
    _, router = one
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    completion = client(router).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "weather?"}], tools=tools)
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    stream = client(router).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True)
    deltas = [c.choices[0].delta for c in stream if c.choices]
    assert deltas[0].tool_calls[0].function.name == "get_weather"


async def test_async_sdk_stream_and_completions(one):
    _, router = one
    aclient = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="k", max_retries=0)
    comp = await aclient.completions.create(model="test-model", prompt="hi")
    assert comp.choices[0].text == "hello from alpha"
    stream = await aclient.completions.create(model="test-model", prompt="hi", stream=True)
    texts = [c.choices[0].text async for c in stream if c.choices]
    assert "".join(texts) == "tok0 tok1 tok2 "
    emb = await aclient.embeddings.create(model="test-model", input=["a", "b"])
    assert [d.index for d in emb.data] == [0, 1] and len(emb.data[0].embedding) == 3
    results = await asyncio.gather(*(aclient.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": str(i)}]) for i in range(20)))
    assert all(r.choices[0].message.content == "hello from alpha" for r in results)
    await aclient.close()


def test_alias_rewrites_model_and_response_format_passes(one):
    up, router = one
    completion = client(router).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_object"}, extra_body={"custom_field": [1, 2]})
    assert completion.model == "test-model"
    sent = up.requests[-1]
    assert sent["model"] == "test-model"
    assert sent["response_format"] == {"type": "json_object"} and sent["custom_field"] == [1, 2]


def test_models_endpoints_filter_by_patterns(one):
    _, router = one
    ids = {m.id for m in client(router).models.list()}
    assert ids == {"test-model", "llama-3-8b", "gpt-4o"}  # "other" is filtered out by models:
    model = client(router).models.retrieve("llama-3-8b")
    assert model.id == "llama-3-8b" and model.owned_by == "alpha"
    with pytest.raises(openai.NotFoundError) as err:
        client(router).models.retrieve("nope")
    assert err.value.body["code"] == "model_not_found"


def test_unknown_model_404_lists_available(one):
    _, router = one
    status, _, body = post_json(f"{router.url}/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 404
    assert body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    assert "test-model" in body["error"]["message"] and "gpt-9" in body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": 42}', "model"),
        (b'{"model": "test-model", "stream": "yes"}', "stream"),
    ],
)
def test_bad_requests_are_400_in_openai_shape(one, body, fragment):
    _, router = one
    status, headers, raw = http("POST", f"{router.url}/v1/chat/completions", body,
                                {"Content-Type": "application/json"})
    error = json.loads(raw)["error"]
    assert status == 400, raw
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and fragment in error["message"]
    assert headers["X-Request-ID"]


def test_oversized_body_is_413(upstreams, start_router):
    up = upstreams()
    router = start_router({"server": {"max_body_mb": 0.01}, "backends": [backend("a", up)]})
    big = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "x" * 20000}]})
    status, _, raw = http("POST", f"{router.url}/v1/chat/completions", big.encode())
    assert status == 413
    assert "server.max_body_mb" in json.loads(raw)["error"]["message"]
    assert up.requests == []


def test_unknown_route_and_method_are_openai_errors(one):
    _, router = one
    status, _, raw = http("GET", f"{router.url}/v1/nothing")
    assert status == 404 and "no such endpoint" in json.loads(raw)["error"]["message"]
    status, _, raw = http("GET", f"{router.url}/v1/chat/completions")
    assert status == 405 and "POST" in json.loads(raw)["error"]["message"]


def test_request_id_is_taken_from_the_request_and_forwarded(one):
    up, router = one
    status, headers, _ = post_json(f"{router.url}/v1/chat/completions",
                                   {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}, {"X-Request-ID": "abc-123"})
    assert status == 200 and headers["X-Request-ID"] == "abc-123"
    assert up.headers_seen[-1]["X-Request-ID"] == "abc-123"


def test_upstream_openai_error_passes_through(one):
    up, router = one
    up.behaviour.fail_status = 400
    status, headers, body = post_json(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and headers["X-Router-Backend"] == "alpha"
    assert body == {"error": {"message": "alpha failed on purpose", "type": "server_error",
                              "param": None, "code": "fake_failure"}}


def test_upstream_non_openai_error_is_wrapped(one):
    up, router = one
    up.behaviour.fail_status = 422
    up.behaviour.fail_body = b"<html>bad things</html>"
    status, _, body = post_json(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 422
    assert "bad things" in body["error"]["message"] and body["error"]["type"] == "invalid_request_error"


def test_unreachable_upstream_is_502_then_503_once_marked_unhealthy(bg, upstreams, start_router):
    up = upstreams()
    router = start_router({
        "routing": {"retries": 0, "health_check_interval_s": 0.3},
        "backends": [backend("gone", up, models=["test-model"])],
    })
    bg.run(up.stop())
    status, headers, body = post_json(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 502 and body["error"]["code"] == "upstream_unreachable"
    assert "gone" in body["error"]["message"]
    time.sleep(0.8)  # a health check has run and marked the backend down
    status, headers, body = post_json(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 503 and body["error"]["code"] == "no_backend_available"
    assert "unhealthy" in body["error"]["message"] and int(headers["Retry-After"]) >= 1
    assert http("GET", f"{router.url}/health/ready")[0] == 503


def test_timeout_is_504(upstreams, start_router):
    up = upstreams()
    up.behaviour.delay_s = 3
    router = start_router({"routing": {"retries": 0},
                           "backends": [backend("slow", up, first_byte_timeout_s=0.5)]})
    started = time.monotonic()
    status, _, body = post_json(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 504 and body["error"]["code"] == "upstream_timeout"
    assert "first_byte_timeout_s" in body["error"]["message"]
    assert time.monotonic() - started < 3


def test_stream_failure_midway_ends_with_error_event(one):
    up, router = one
    up.behaviour.chunks = 5
    up.behaviour.die_after_chunks = 2
    stream = client(router).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}], stream=True)
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["tok0 ", "tok1 "]
    assert "mid-stream" in str(err.value.message) or "mid-response" in str(err.value.message)


def test_stream_is_not_buffered(one):
    up, router = one
    up.behaviour.chunks = 6
    up.behaviour.chunk_delay_s = 0.2
    stream = client(router).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}], stream=True)
    arrivals = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.time(), chunk.model_extra["sent_at"]))
    assert len(arrivals) == 6
    first_arrival = arrivals[0][0]
    last_sent = arrivals[-1][1]
    # The first chunk reached the client about a second before the upstream sent the last.
    assert first_arrival < last_sent - 0.6
    # And each chunk arrived right after it was sent, not held back.
    assert max(arrived - sent for arrived, sent in arrivals) < 0.15


def test_client_disconnect_closes_upstream(one):
    up, router = one
    up.behaviour.chunks = 50
    up.behaviour.chunk_delay_s = 0.1
    stream = client(router).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}], stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    deadline = time.monotonic() + 3
    while up.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert up.cancelled == 1
    assert up.in_flight == 0


def test_health_endpoints(one):
    _, router = one
    status, _, raw = http("GET", f"{router.url}/health")
    assert status == 200 and json.loads(raw)["backends"] == {"alpha": "available"}
    assert http("GET", f"{router.url}/health/live")[0] == 200
    assert http("GET", f"{router.url}/health/ready")[0] == 200


def test_keys_never_reach_logs_or_status(bg, upstreams, start_router):
    up = upstreams("alpha")
    router = start_router({
        "server": {"admin_key": "admin-secret-123", "log_level": "debug"},
        "routing": {"retries": 0, "health_check_interval_s": 0.2},
        "backends": [backend("alpha", up, api_key="sk-live-SECRET-456")],
    })
    assert post_json(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})[0] == 200
    bg.run(up.kill())
    assert post_json(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})[0] == 502
    time.sleep(0.5)
    status, _, raw = http("GET", f"{router.url}/status", headers={"Authorization": "Bearer admin-secret-123"})
    assert status == 200
    router.stop()
    everything = router.log() + raw.decode()
    assert "unhealthy" in router.log()  # the log did record the failures...
    assert "sk-live-SECRET-456" not in everything and "admin-secret-123" not in everything


def test_stalled_stream_ends_with_timeout_event(upstreams, start_router):
    up = upstreams("alpha")
    up.behaviour.chunk_delay_s = 1.0
    router = start_router({"backends": [backend("alpha", up, read_timeout_s=0.3)]})
    status, _, body = http("POST", f"{router.url}/v1/chat/completions",
                           json.dumps({"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode())
    events = [e for e in body.decode().split("\n\n") if e]
    assert status == 200 and json.loads(events[0][6:])["choices"][0]["delta"]["content"] == "tok0 "
    error = json.loads(events[1][6:])["error"]
    assert error["code"] == "upstream_timeout" and "read_timeout_s" in error["message"]
    assert events[-1] == "data: [DONE]"


def test_read_timeout_is_between_chunks_not_total(upstreams, start_router):
    up = upstreams("alpha")
    up.behaviour.chunks = 8
    up.behaviour.chunk_delay_s = 0.1  # 0.8 s in all, never 0.3 s without data
    router = start_router({"backends": [backend("alpha", up, read_timeout_s=0.3)]})
    status, _, body = http("POST", f"{router.url}/v1/chat/completions",
                           json.dumps({"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode())
    assert status == 200 and b'"error"' not in body
    assert body.count(b'"content":"tok') == 8 and body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("body", [
    b"\xff\xfe\xfd",                                   # not UTF-8
    b"[" * 100000 + b"]" * 100000,                     # absurdly deep nesting
    b'{"model": "test-model", "messages": "not a list"}',
    b'{"model": ["a"], "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "' + b"m" * 100000 + b'"}',             # a huge unknown model name
    b'{"model": "test-model", "stream": null}',
    b'null',
    b'{"model": "test-model"}' + b" trailing",
], ids=["not-utf8", "deep-nesting", "messages-not-list", "model-list", "huge-model-name", "stream-null",
        "null", "trailing-garbage"])
def test_hostile_bodies_get_clear_errors_and_the_router_survives(one, body):
    up, router = one
    status, _, raw = http("POST", f"{router.url}/v1/chat/completions", body,
                          {"Content-Type": "application/json"})
    assert status in (400, 404, 200), (status, raw[:200])
    if status != 200:  # a well-formed body the upstream accepts may pass through
        error = json.loads(raw)["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
        assert len(error["message"]) < 5000  # bounded, even for a 100 kB model name
    assert http("GET", f"{router.url}/health/live")[0] == 200
