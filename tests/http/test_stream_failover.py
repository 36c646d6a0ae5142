"""Streams that survive (issue 16): a stream reaches the client only with its first token,
so whatever fails before it is failed over invisibly; first-token deadlines; the small
failures a second try cures; context-length failover; malformed events; honest attempts.

Two or three fake upstreams on 127.0.0.1 fail in scripted ways; the client is the
official ``openai`` SDK (strict: it raises on a malformed event) or raw HTTP."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest
import requests

from tests.conftest import backend

PIECES = ["The ", "quick ", "brown ", "fox ", "jumps."]
ANSWER = "".join(PIECES)


def two(upstreams: Any, start_router: Any, **routing: Any) -> tuple[Any, Any, Any]:
    a, b = upstreams("a"), upstreams("b")
    for u in (a, b):
        u.behaviour.pieces = list(PIECES)
    router = start_router({"routing": {"strategy": "round_robin", **routing},
                           "backends": [backend("a", a), backend("b", b)]})
    return a, b, router


def streamed(router: Any, **extra: Any) -> tuple[str, Any]:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="test-model", stream=True, messages=[{"role": "user", "content": "hi"}], **extra)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    return text, raw.headers


@pytest.mark.parametrize("fault", ["role_then_die", "error_event", "ends_early", "malformed_then_die"])
def test_a_stream_that_fails_before_its_first_token_is_failed_over_invisibly(upstreams, start_router, fault):
    a, b, router = two(upstreams, start_router)
    if fault == "role_then_die":
        a.behaviour.role_chunk, a.behaviour.die_after_chunks = True, 1
    elif fault == "error_event":
        a.behaviour.role_chunk, a.behaviour.error_event_after = True, 1
    elif fault == "ends_early":
        a.behaviour.role_chunk, a.behaviour.pieces, a.behaviour.omit_finish, a.behaviour.omit_done = True, [], True, True
    else:
        a.behaviour.malformed_after, a.behaviour.die_after_chunks = 0, 1
    text, headers = streamed(router)
    assert text == ANSWER  # one clean stream, from b
    assert headers["X-Router-Backend"] == "b"
    attempts = headers["X-Router-Attempts"].split(", ")
    assert attempts[0].startswith("a=") and attempts[-1] == "b"
    assert a.served + b.served >= 2


def test_the_client_sees_no_second_role_and_no_error_after_failover(upstreams, start_router):
    a, b, router = two(upstreams, start_router)
    a.behaviour.role_chunk, a.behaviour.error_event_after = True, 1
    body = requests.post(f"{router.url}/v1/chat/completions", json={
        "model": "test-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}, timeout=10).text
    assert '"error"' not in body and body.count('"role"') == 1
    assert body.rstrip().endswith("data: [DONE]")


def test_first_token_timeout_abandons_a_slow_backend(upstreams, start_router):
    a, b, router = two(upstreams, start_router, first_token_timeout_s=0.5)
    a.behaviour.role_chunk, a.behaviour.first_token_delay_s = True, 5.0
    started = time.monotonic()
    text, headers = streamed(router)
    assert text == ANSWER and headers["X-Router-Backend"] == "b"
    assert headers["X-Router-Attempts"].startswith("a=upstream_timeout")
    assert time.monotonic() - started < 4.0  # not the 5 s a would have taken
    assert a.cancelled >= 1 or a.in_flight == 0  # its request was closed


def test_a_slow_first_token_within_the_deadline_is_waited_for(upstreams, start_router):
    a, b, router = two(upstreams, start_router, first_token_timeout_s=3.0)
    a.behaviour.role_chunk, a.behaviour.first_token_delay_s = True, 0.3
    text, headers = streamed(router)
    assert text == ANSWER and headers["X-Router-Backend"] == "a"
    assert headers["X-Router-Attempts"] == "a"


def test_commit_after_bytes_bounds_what_is_held(upstreams, start_router):
    a, b, router = two(upstreams, start_router, commit_after_bytes=64, first_token_timeout_s=5)
    a.behaviour.role_chunk, a.behaviour.first_token_delay_s = True, 0.5
    resp = requests.post(f"{router.url}/v1/chat/completions", stream=True, timeout=10, json={
        "model": "test-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    started = time.monotonic()
    lines = resp.iter_lines()
    first = next(lines)
    # The role chunk is over 64 bytes: it was committed at once, before the slow token.
    assert b'"role"' in first and time.monotonic() - started < 0.4
    assert b"".join(lines).endswith(b"[DONE]")


@pytest.mark.parametrize("status,retry_after", [(500, None), (429, "1")])
def test_a_500_or_a_short_429_is_retried_once_on_the_same_backend(upstreams, start_router, status, retry_after):
    a = upstreams("a")
    a.behaviour.fail_status, a.behaviour.retry_after, a.behaviour.fail_times = status, retry_after, 1
    router = start_router({"backends": [backend("a", a)]})
    started = time.monotonic()
    resp = requests.post(f"{router.url}/v1/chat/completions", timeout=10, json={
        "model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Router-Attempts"].split(", ") == [f"a={'upstream_error' if status == 500 else 429}", "a"] \
        or resp.headers["X-Router-Attempts"].split(", ")[-1] == "a"
    assert len(resp.headers["X-Router-Attempts"].split(", ")) == 2
    if retry_after:
        assert time.monotonic() - started >= 0.9  # it waited the Retry-After out


def test_a_long_retry_after_is_not_waited_for(upstreams, start_router):
    a, b, router = two(upstreams, start_router)
    a.behaviour.fail_status, a.behaviour.retry_after = 429, "60"
    resp = requests.post(f"{router.url}/v1/chat/completions", timeout=10, json={
        "model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200 and resp.headers["X-Router-Backend"] == "b"
    assert len(resp.headers["X-Router-Attempts"].split(", ")) == 2


def test_a_502_fails_over_at_once_and_never_retries_the_same_backend(upstreams, start_router):
    a, b, router = two(upstreams, start_router)
    a.behaviour.fail_status = 502
    resp = requests.post(f"{router.url}/v1/chat/completions", timeout=10, json={
        "model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200 and resp.headers["X-Router-Backend"] == "b"
    assert resp.headers["X-Router-Attempts"] == "a=upstream_error, b"


def test_context_length_exceeded_fails_over_to_a_larger_context(upstreams, start_router):
    small, large, other = upstreams("small"), upstreams("large"), upstreams("tiny")
    small.behaviour.fail_status = 400
    small.behaviour.fail_body = (b'{"error": {"message": "This model\'s maximum context length is 4096 tokens", '
                                 b'"type": "invalid_request_error", "code": "context_length_exceeded"}}')
    tiny_body = small.behaviour.fail_body
    other.behaviour.fail_status, other.behaviour.fail_body = 400, tiny_body
    router = start_router({"routing": {"strategy": "round_robin"}, "backends": [
        backend("small", small, context_length=4096), backend("tiny", other, context_length=2048),
        backend("large", large, context_length=32768)]})
    resp = requests.post(f"{router.url}/v1/chat/completions", timeout=10, json={
        "model": "test-model", "messages": [{"role": "user", "content": "a long prompt"}]})
    assert resp.status_code == 200 and resp.headers["X-Router-Backend"] == "large"
    assert "tiny" not in resp.headers["X-Router-Attempts"]  # a smaller context is never tried
    assert other.served == 0


def test_other_4xx_pass_straight_back(upstreams, start_router):
    a, b, router = two(upstreams, start_router)
    a.behaviour.fail_status = 400
    a.behaviour.fail_body = b'{"error": {"message": "flagged", "type": "invalid_request_error", "code": "content_filter"}}'
    resp = requests.post(f"{router.url}/v1/chat/completions", timeout=10, json={
        "model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "content_filter"
    assert b.served == 0


def test_an_error_event_written_for_the_client(upstreams, start_router):
    a = upstreams("a")
    a.behaviour.pieces, a.behaviour.die_after_chunks = list(PIECES), 3  # after content: no failover
    router = start_router({"backends": [backend("a", a)]})
    body = requests.post(f"{router.url}/v1/chat/completions", timeout=10, json={
        "model": "test-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).text
    assert '"quick "' in body  # what arrived before the cut reached the client
    error = body.split('"error"')[1]
    assert "upstream_error" in error
    assert "closed in the middle of the answer" in error
    assert "TransferEncodingError" not in error and "400" not in error


# -- mid-stream continuation -------------------------------------------------------------------


def continuing(upstreams: Any, start_router: Any, names: tuple[str, ...] = ("a", "b"), **routing: Any) -> list[Any]:
    ups = [upstreams(n) for n in names]
    for u in ups:
        u.behaviour.pieces = list(PIECES)
    # Weighted, a far heavier: the first attempt goes to a, whatever the order of tests.
    start = start_router({"routing": {"strategy": "weighted", **routing}, "server": {"admin_key": "k"},
                          "backends": [backend(u.name, u, continuation=True, weight=1000 if u is ups[0] else 1)
                                       for u in ups]})
    return [start, *ups]


def raw_stream(router: Any, **extra: Any) -> tuple[list[dict[str, Any]], str]:
    resp = requests.post(f"{router.url}/v1/chat/completions", timeout=10, json={
        "model": "test-model", "stream": True, "messages": [{"role": "user", "content": "hi"}], **extra})
    import json as _json
    events = [_json.loads(line[6:]) for line in resp.text.split("\n\n") if line.startswith("data: {")]
    return events, resp.text


@pytest.mark.parametrize("fault", ["cut", "error_event"])
def test_a_stream_broken_mid_answer_is_continued_exactly(upstreams, start_router, fault):
    router, a, b = continuing(upstreams, start_router)
    a.behaviour.chunk_delay_s = 0.05  # events one by one: the first is committed before the break
    if fault == "cut":
        a.behaviour.die_after_chunks = 3  # "The quick brown " reached the client
    else:
        a.behaviour.error_event_after = 3
    text, headers = streamed(router, max_tokens=50, temperature=0.3, seed=7)
    assert text == ANSWER  # nothing duplicated, nothing missing, through the openai SDK
    continuation = b.requests[-1]
    assert continuation["messages"][-1] == {"role": "assistant", "content": "The quick brown "}
    assert continuation["continue_final_message"] is True and continuation["add_generation_prompt"] is False
    assert continuation["max_tokens"] == 47 and continuation["temperature"] == 0.3 and continuation["seed"] == 7
    assert headers["X-Router-Backend"] == "a"  # the backend that answered first
    status = requests.get(f"{router.url}/status", timeout=5, headers={"Authorization": "Bearer k"}).json()
    assert status["continuations"] == 1


def test_a_continued_stream_is_one_stream(upstreams, start_router):
    router, a, b = continuing(upstreams, start_router)
    a.behaviour.die_after_chunks = 2
    events, text = raw_stream(router, stream_options={"include_usage": True})
    assert len({e["id"] for e in events}) == 1 and len({e["model"] for e in events}) == 1
    assert len({e["created"] for e in events}) == 1
    assert sum(1 for e in events for c in e["choices"] if "role" in c.get("delta", {})) == 1
    assert "".join(c["delta"].get("content") or "" for e in events for c in e["choices"]) == ANSWER
    usage = [e["usage"] for e in events if e.get("usage")][-1]
    assert usage["completion_tokens"] == 2 + 3  # the two delivered, the three continued
    assert '"error"' not in text and text.rstrip().endswith("data: [DONE]")


def test_a_break_inside_a_tool_call_is_not_continued(upstreams, start_router):
    router, a, b = continuing(upstreams, start_router)
    a.behaviour.die_after_chunks = 2
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    events, text = raw_stream(router, tools=tools)
    assert "upstream_error" in text and text.rstrip().endswith("data: [DONE]")
    assert b.requests == []


def test_continuation_can_be_turned_off_per_request(upstreams, start_router):
    router, a, b = continuing(upstreams, start_router)
    a.behaviour.die_after_chunks = 2
    events, text = raw_stream(router, x_router={"continuation": False})
    assert "upstream_error" in text and b.requests == []
    assert "x_router" not in a.requests[-1]  # never sent upstream


def test_continuations_are_bounded(upstreams, start_router):
    router, a, b, c = continuing(upstreams, start_router, names=("a", "b", "c"), max_continuations=1)
    a.behaviour.die_after_chunks = 2
    b.behaviour.die_after_chunks = 1  # the continuation breaks too
    events, text = raw_stream(router)
    assert "upstream_error" in text
    assert len(b.requests) == 1 and c.requests == []


def test_without_a_continuation_backend_the_break_ends_with_the_error_event(upstreams, start_router):
    a, b, router = two(upstreams, start_router)  # openai_compatible: continuation off by default
    a.behaviour.die_after_chunks = 2
    events, text = raw_stream(router)
    assert "upstream_error" in text and b.served == 0


def test_a_recovered_backend_is_used_again_within_15_s_with_the_defaults(upstreams, start_router, bg):
    a, b = upstreams("a"), upstreams("b")
    router = start_router({"backends": [backend("a", a), backend("b", b)]})  # default breaker and health
    port = a.port
    session = requests.Session()

    def one() -> str:
        resp = session.post(f"{router.url}/v1/chat/completions", timeout=10, json={
            "model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 200  # b takes everything while a is down
        return resp.headers["X-Router-Backend"]

    bg.run(a.stop())
    down_until = time.monotonic() + 6  # long enough to open the circuit and fail a health check
    while time.monotonic() < down_until:
        one()
        time.sleep(0.05)
    bg.run(a.start(port=port))
    back = time.monotonic()
    while time.monotonic() - back < 20:
        if one() == "a":
            break
        time.sleep(0.1)
    assert time.monotonic() - back < 15


# -- hedging and the retry budget ----------------------------------------------------------------


def test_a_hedge_wins_when_the_first_backend_is_slow_to_its_first_token(upstreams, start_router):
    a, b = upstreams("a"), upstreams("b")
    for u in (a, b):
        u.behaviour.pieces = list(PIECES)
    a.behaviour.role_chunk, a.behaviour.first_token_delay_s = True, 3.0
    router = start_router({"server": {"admin_key": "k"},
                           "routing": {"strategy": "weighted", "hedge": {"after_ms": 200, "budget_pct": 100}},
                           "backends": [backend("a", a, weight=1000), backend("b", b)]})
    started = time.monotonic()
    text, headers = streamed(router)
    assert text == ANSWER and headers["X-Router-Backend"] == "b"
    assert time.monotonic() - started < 2.0  # not a's 3 s
    assert headers["X-Router-Attempts"] == "b, a=abandoned (hedged)"
    status = requests.get(f"{router.url}/status", timeout=5, headers={"Authorization": "Bearer k"}).json()
    assert status["hedges"] == 1
    deadline = time.monotonic() + 5
    while a.in_flight and time.monotonic() < deadline:  # the loser is closed at once
        time.sleep(0.05)
    assert a.in_flight == 0


def test_no_hedge_beyond_its_budget(upstreams, start_router):
    a, b = upstreams("a"), upstreams("b")
    for u in (a, b):
        u.behaviour.pieces = list(PIECES)
    a.behaviour.role_chunk, a.behaviour.first_token_delay_s = True, 0.8
    router = start_router({"routing": {"strategy": "weighted", "hedge": {"after_ms": 100, "budget_pct": 0}},
                           "backends": [backend("a", a, weight=1000), backend("b", b)]})
    text, headers = streamed(router)
    assert text == ANSWER and headers["X-Router-Backend"] == "a" and b.served == 0


def test_the_retry_budget_keeps_an_outage_from_multiplying_the_load(upstreams, start_router):
    ups = [upstreams(n) for n in ("a", "b", "c")]
    for u in ups:
        u.behaviour.fail_status = 502
    router = start_router({"routing": {"retries": 2, "retry_budget_pct": 0, "retry_budget_min": 2},
                           "circuit_breaker": {"failure_threshold": 1000},
                           "backends": [backend(u.name, u) for u in ups]})
    statuses, codes = [], []
    for _ in range(3):
        resp = requests.post(f"{router.url}/v1/chat/completions", timeout=10, json={
            "model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
        statuses.append(resp.status_code)
        codes.append(resp.json()["error"]["code"])
    sent = sum(len(u.requests) for u in ups)
    assert sent == 3 + 2  # one attempt each, plus the two retries the budget allows
    assert codes[-1] == "retry_budget_exhausted" and statuses[-1] == 503
    assert "retry budget" in requests.post(f"{router.url}/v1/chat/completions", timeout=10, json={
        "model": "test-model", "messages": [{"role": "user", "content": "hi"}]}).json()["error"]["message"]


def test_a_malformed_event_mid_stream_is_dropped(upstreams, start_router):
    a = upstreams("a")
    a.behaviour.pieces, a.behaviour.malformed_after, a.behaviour.chunk_delay_s = list(PIECES), 3, 0.02
    router = start_router({"backends": [backend("a", a)]})
    text, headers = streamed(router)  # the SDK raises on a malformed event: none reached it
    assert text == ANSWER
    body = requests.post(f"{router.url}/v1/chat/completions", timeout=10, json={
        "model": "test-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).text
    assert "not json" not in body and body.rstrip().endswith("data: [DONE]")


def test_continuation_can_be_turned_off_per_model(upstreams, start_router):
    router, a, b = continuing(upstreams, start_router, no_continuation=["test-*"])
    a.behaviour.die_after_chunks = 2
    events, text = raw_stream(router)
    assert "upstream_error" in text and b.requests == []


def test_continuations_and_hedges_are_metrics(upstreams, start_router):
    from prometheus_client.parser import text_string_to_metric_families

    router, a, b = continuing(upstreams, start_router)
    a.behaviour.chunk_delay_s, a.behaviour.die_after_chunks = 0.02, 2
    text, _ = streamed(router)
    assert text == ANSWER
    metrics = {s.name: s.value for f in text_string_to_metric_families(
        requests.get(f"{router.url}/metrics", timeout=5).text) for s in f.samples}
    assert metrics["router_continuations_total"] == 1 and metrics["router_hedges_total"] == 0
