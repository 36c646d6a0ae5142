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
