"""Hardening: slow and stalled clients, streams that end badly, oversized answers,
protocol garbage, admin races, Retry-After per model, request ids everywhere. Each test
here failed against the router before the hardening work."""

from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import pytest

from tests.conftest import backend

ADMIN = {"Authorization": "Bearer admin-secret"}
HI = [{"role": "user", "content": "hi"}]
FAST = {"header_timeout_s": 0.5, "body_timeout_s": 0.5, "write_timeout_s": 0.5, "admin_key": "admin-secret"}


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def raw_exchange(port: int, data: bytes, *, wait_s: float = 5.0) -> bytes:
    """Send raw bytes, read until the router closes the connection (or ``wait_s``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except socket.timeout:
            pass
        return out


def chat_ok(router) -> bool:
    return post(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": HI})[0] == 200


# -- slow and stalled clients -------------------------------------------------------------


def test_a_silent_connection_is_closed_while_others_are_served(upstreams, start_router):
    router = start_router({"server": FAST, "backends": [backend("a", upstreams())]})
    with socket.create_connection(("127.0.0.1", router.port)) as silent:
        silent.settimeout(5)
        started = time.monotonic()
        assert chat_ok(router)  # others are served meanwhile
        data = silent.recv(4096)
        took = time.monotonic() - started
    assert b"408" in data.split(b"\r\n")[0] and b"header_timeout_s" in data
    assert took < 3


def test_trickled_headers_get_408(upstreams, start_router):
    router = start_router({"server": FAST, "backends": [backend("a", upstreams())]})
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        answer = b""
        for i in range(40):  # one header byte every 0.1 s: never finishes in time
            try:
                sock.sendall(b"X"[: 1])
            except OSError:
                break
            sock.settimeout(0.1)
            try:
                answer += sock.recv(4096)
            except socket.timeout:
                continue
            if answer:
                break
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":"request_timeout"' in answer
    assert time.monotonic() - started < 3 and chat_ok(router)


def test_a_trickled_body_gets_408(upstreams, start_router):
    up = upstreams()
    router = start_router({"server": FAST, "backends": [backend("a", up)]})
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"model\": ")
    started = time.monotonic()
    answer = raw_exchange(router.port, head, wait_s=5)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"server.body_timeout_s" in answer and time.monotonic() - started < 3
    assert up.requests == [] and chat_ok(router)


async def test_a_stalled_reader_is_dropped_and_frees_the_backend_slot(upstreams, start_router):
    up = upstreams()
    up.behaviour.chunks = 400
    up.behaviour.chunk_pad = 64 * 1024  # 25 MB in all: far more than socket buffers hold
    router = start_router({"server": FAST, "backends": [backend("a", up, max_concurrent=1, max_queue=0)]})
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", router.port, limit=1024)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps({"model": "test-model", "messages": HI, "stream": True}).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")  # the stream started; now never read again
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{router.url}/admin/queue", headers=ADMIN) as resp:
            assert (await resp.json())["backends"]["a"]["in_flight"] == 1  # the slot is held...
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            async with session.get(f"{router.url}/admin/queue", headers=ADMIN) as resp:
                if (await resp.json())["backends"]["a"]["in_flight"] == 0:
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the stalled reader still holds the backend's only slot")
    writer.close()
    up.behaviour.chunks, up.behaviour.chunk_pad = 3, 0
    assert chat_ok(router) and up.cancelled >= 1  # ...then freed, and the upstream was closed


# -- streams never end silently -----------------------------------------------------------


def stream_body(router) -> bytes:
    status, _, body = post(f"{router.url}/v1/chat/completions",
                           {"model": "test-model", "messages": HI, "stream": True})
    assert status == 200
    return body


def failures(router) -> int:
    status, _, body = get(f"{router.url}/admin/backends", ADMIN)
    return json.loads(body)["backends"][0]["failed"]


@pytest.mark.parametrize("close_delimited", [False, True], ids=["chunked-end", "connection-close"])
def test_a_stream_cut_before_its_end_ends_with_an_error_event(upstreams, start_router, close_delimited):
    up = upstreams()
    up.behaviour.omit_done = up.behaviour.omit_finish = True
    up.behaviour.close_delimited = close_delimited
    router = start_router({"server": {"admin_key": "admin-secret"}, "backends": [backend("a", up)]})
    body = stream_body(router)
    events = [e for e in body.split(b"\n\n") if e]
    assert body.count(b"tok") == 3 and events[-1] == b"data: [DONE]"
    error = json.loads(events[-2][6:])["error"]
    assert error["code"] == "upstream_stream_incomplete" and error["type"] and error["message"]
    assert failures(router) == 1  # counted against the backend (circuit, metrics)


def test_a_finished_stream_without_done_gets_done_and_no_error(upstreams, start_router):
    up = upstreams()
    up.behaviour.omit_done = True
    router = start_router({"server": {"admin_key": "admin-secret"}, "backends": [backend("a", up)]})
    body = stream_body(router)
    assert b'"finish_reason":"stop"' in body and b'"error"' not in body
    assert body.endswith(b"}\n\ndata: [DONE]\n\n") and body.count(b"[DONE]") == 1
    assert failures(router) == 0


def test_an_oversized_answer_is_a_clear_502(upstreams, start_router):
    up = upstreams()
    up.behaviour.body_pad = 2 * 1024 * 1024
    router = start_router({"server": {"max_response_mb": 1}, "routing": {"retries": 0},
                           "backends": [backend("a", up)]})
    status, _, body = post(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": HI})
    assert status == 502
    assert "server.max_response_mb = 1 MB" in json.loads(body)["error"]["message"]
    up.behaviour.body_pad, up.behaviour.body_pieces = 2 * 1024 * 1024, 8  # no Content-Length
    assert post(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": HI})[0] == 502


def test_read_timeout_is_the_silence_between_pieces_of_a_body(upstreams, start_router):
    up = upstreams()
    up.behaviour.body_pieces, up.behaviour.body_piece_delay_s = 6, 0.2  # 1.2 s in all
    router = start_router({"backends": [backend("a", up, read_timeout_s=0.5)]})
    status, _, body = post(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": HI})
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "hello from upstream"
    up.behaviour.body_piece_delay_s = 0.8  # one silence longer than read_timeout_s
    status, _, body = post(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": HI})
    assert status == 504 and "read_timeout_s" in json.loads(body)["error"]["message"]


# -- hostile bodies and shapes --------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "body", "param"), [
    ("chat/completions", {"model": "test-model", "messages": []}, "messages"),
    ("chat/completions", {"model": "test-model"}, "messages"),
    ("chat/completions", {"model": "test-model", "messages": ["hi"]}, "messages[0]"),
    ("completions", {"model": "test-model"}, "prompt"),
    ("embeddings", {"model": "test-model"}, "input"),
])
def test_minimal_shape_checks_name_the_param(upstreams, start_router, endpoint, body, param):
    up = upstreams()
    router = start_router({"backends": [backend("a", up)]})
    status, _, raw = post(f"{router.url}/v1/{endpoint}", body)
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == param and error["type"] == "invalid_request_error"
    assert up.requests == []


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(300)) + b"\r\n", 431),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
], ids=["big-header", "many-headers", "long-url", "bad-chunk"])
def test_protocol_garbage_gets_a_status_in_openai_shape(upstreams, start_router, request_bytes, status):
    router = start_router({"backends": [backend("a", upstreams())]})
    answer = raw_exchange(router.port, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), head
    assert json.loads(body)["error"]["message"].startswith("malformed HTTP request")
    assert chat_ok(router)


# -- correctness ------------------------------------------------------------------------------


async def test_concurrent_registrations_of_one_name_give_one_201(upstreams, start_router):
    up = upstreams("new", models=["m-new"])
    router = start_router({"server": {"admin_key": "admin-secret"}, "backends": []})
    spec = {"name": "new", "provider": "openai_compatible", "base_url": up.url}
    async with aiohttp.ClientSession() as session:
        async def register() -> tuple[int, dict[str, Any]]:
            async with session.post(f"{router.url}/admin/backends", json=spec, headers=ADMIN) as resp:
                return resp.status, await resp.json()
        results = await asyncio.gather(*(register() for _ in range(8)))
        statuses = sorted(s for s, _ in results)
        assert statuses == [201] + [409] * 7
        assert all(body["error"]["code"] == "conflict" for s, body in results if s == 409)
        async with session.get(f"{router.url}/admin/backends", headers=ADMIN) as resp:
            assert [b["name"] for b in (await resp.json())["backends"]] == ["new"]


async def test_removing_a_backend_drains_queued_requests_too(upstreams, start_router):
    up = upstreams()
    up.behaviour.delay_s = 0.4
    router = start_router({"server": {"admin_key": "admin-secret"},
                           "backends": [backend("a", up, max_concurrent=1, max_queue=4)]})
    async with aiohttp.ClientSession() as session:
        async def chat() -> int:
            async with session.post(f"{router.url}/v1/chat/completions",
                                    json={"model": "test-model", "messages": HI}) as resp:
                return resp.status
        requests = [asyncio.create_task(chat()) for _ in range(3)]  # 1 in flight, 2 queued
        await asyncio.sleep(0.1)
        async with session.delete(f"{router.url}/admin/backends/a", headers=ADMIN) as resp:
            assert resp.status == 200
        assert await asyncio.gather(*requests) == [200, 200, 200]
    assert len(up.requests) == 3


@pytest.mark.parametrize("http_date", [False, True], ids=["seconds", "http-date"])
def test_retry_after_cools_only_that_model_on_that_backend(upstreams, start_router, http_date):
    busy = upstreams("busy", models=["m1", "m2"])
    other = upstreams("other", models=["m1"])
    router = start_router({"routing": {"strategy": "weighted"},
                           "backends": [backend("busy", busy, weight=100), backend("other", other, weight=1)]})
    busy.behaviour.fail_status = 429
    busy.behaviour.retry_after = (email.utils.formatdate(time.time() + 30, usegmt=True) if http_date else "30")
    status, headers, _ = post(f"{router.url}/v1/chat/completions", {"model": "m1", "messages": HI})
    assert status == 200 and headers["X-Router-Backend"] == "other"  # failed over
    busy.behaviour.fail_status = None
    for _ in range(3):  # m1 stays off "busy" for 30 s ...
        assert post(f"{router.url}/v1/chat/completions", {"model": "m1", "messages": HI})[1]["X-Router-Backend"] == "other"
    status, headers, _ = post(f"{router.url}/v1/chat/completions", {"model": "m2", "messages": HI})
    assert status == 200 and headers["X-Router-Backend"] == "busy"  # ... m2 does not
    assert len([r for r in busy.requests if r["model"] == "m1"]) == 1


def test_every_answer_carries_a_request_id(upstreams, start_router):
    router = start_router({"backends": [backend("a", upstreams())]})
    for path in ("/v1/models", "/v1/models/test-model", "/health", "/health/live", "/health/ready",
                 "/metrics", "/nowhere", "/v1/models/missing"):
        _, headers, _ = get(f"{router.url}{path}")
        assert headers.get("X-Request-ID"), path
    _, headers, _ = get(f"{router.url}/health", {"X-Request-ID": "mine-1"})
    assert headers["X-Request-ID"] == "mine-1"


async def test_requests_wait_for_a_half_open_trial_instead_of_failing(upstreams, start_router):
    up = upstreams()
    up.behaviour.fail_status = 500
    router = start_router({"routing": {"retries": 0},
                           "circuit_breaker": {"failure_threshold": 1, "cooldown_s": 0.3},
                           "backends": [backend("a", up)]})
    assert post(f"{router.url}/v1/chat/completions", {"model": "test-model", "messages": HI})[0] == 500
    up.behaviour.fail_status, up.behaviour.delay_s = None, 0.3  # back, and slow
    await asyncio.sleep(0.35)  # the circuit may let one trial through now
    async with aiohttp.ClientSession() as session:
        async def chat() -> int:
            async with session.post(f"{router.url}/v1/chat/completions",
                                    json={"model": "test-model", "messages": HI}) as resp:
                return resp.status
        statuses = await asyncio.gather(*(chat() for _ in range(5)))
    assert statuses == [200] * 5  # one was the trial; four waited for its verdict


def test_routing_timeout_covers_reading_the_body(upstreams, start_router):
    up = upstreams()
    router = start_router({"server": {"body_timeout_s": 30}, "routing": {"timeout_s": 0.5},
                           "backends": [backend("a", up)]})
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"model\": ")
    started = time.monotonic()
    answer = raw_exchange(router.port, head, wait_s=5)
    assert answer.startswith(b"HTTP/1.1 408") and b"routing.timeout_s = 0.5s" in answer
    assert time.monotonic() - started < 3 and up.requests == []
