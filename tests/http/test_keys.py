"""Client keys and their limits (plugins.keys), in-process against real upstreams: both
key headers, model restrictions, rpm and tpm (streamed tokens counted), the rate-limit
headers on every answer, /admin/keys, the store across a restart, and keys kept out of
logs, errors, metrics and /status."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.config.loader import ConfigError, parse_config
from router.testing import FakeUpstream, router_client

KEY_A = "team-a-secret-0123456789abcdef"
KEY_B = "team-b-secret-fedcba9876543210"
ADMIN = {"Authorization": "Bearer admin-secret"}
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def upstream():
    up = await FakeUpstream("a", models=["test-model", "llama-3", "qwen-2"]).start()
    yield up
    await up.stop()


def config(up: FakeUpstream, keys: list[dict[str, Any]], **auth: Any) -> dict[str, Any]:
    return {"server": {"admin_key": "admin-secret"}, "auth": {"keys": keys, **auth},
            "backends": [{"name": "a", "provider": "openai_compatible", "base_url": up.url}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_missing_and_wrong_keys_are_401_with_either_header(upstream):
    async with router_client(config(upstream, [{"name": "a", "key": KEY_A}])) as client:
        for headers in ({}, bearer("wrong-key-000000000000"), {"x-api-key": "wrong-key-000000000000"},
                        {"Authorization": "Basic " + KEY_A}):
            resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert resp.status == 401
            error = (await resp.json())["error"]
            assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
            assert "Authorization: Bearer" in error["message"] or "not valid" in error["message"]
            resp = await client.get("/v1/models", headers=headers)
            assert resp.status == 401
        for headers in (bearer(KEY_A), {"x-api-key": KEY_A}, {"authorization": "bearer " + KEY_A}):
            resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert resp.status == 200, await resp.text()
            assert "x-ratelimit-limit-requests" not in resp.headers  # no limits, no headers
        # Health and the admin API need no client key (the admin API has its own).
        assert (await client.get("/health")).status == 200
        assert (await client.get("/admin/keys", headers=ADMIN)).status == 200
        assert (await client.get("/admin/keys", headers=bearer(KEY_A))).status == 401
    assert len(upstream.requests) == 3  # refused requests never reached the backend


async def test_a_key_uses_only_its_models_and_lists_only_them(upstream):
    keys = [{"name": "a", "key": KEY_A, "models": ["llama-*", "qwen*"]}, {"name": "b", "key": KEY_B}]
    async with router_client(config(upstream, keys)) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A))
        assert resp.status == 403
        error = (await resp.json())["error"]
        assert error["code"] == "model_not_allowed" and error["param"] == "model"
        assert "test-model" in error["message"] and KEY_A not in error["message"]
        resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "llama-3"}, headers=bearer(KEY_A))
        assert resp.status == 200
        listed = (await (await client.get("/v1/models", headers=bearer(KEY_A))).json())["data"]
        assert sorted(m["id"] for m in listed) == ["llama-3", "qwen-2"]
        assert (await client.get("/v1/models/test-model", headers=bearer(KEY_A))).status == 403
        assert (await client.get("/v1/models/qwen-2", headers=bearer(KEY_A))).status == 200
        listed = (await (await client.get("/v1/models", headers=bearer(KEY_B))).json())["data"]
        assert sorted(m["id"] for m in listed) == ["llama-3", "qwen-2", "test-model"]
    assert [r["model"] for r in upstream.requests] == ["llama-3"]


async def test_rpm_limit_is_429_with_retry_after_and_headers_on_every_answer(upstream):
    keys = [{"name": "a", "key": KEY_A, "rpm": 2}, {"name": "b", "key": KEY_B}]
    async with router_client(config(upstream, keys)) as client:
        first = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A))
        assert first.status == 200
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in first.headers  # no tpm
        stream = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(KEY_A))
        assert stream.status == 200 and stream.headers["x-ratelimit-remaining-requests"] == "0"
        assert (await stream.read()).rstrip().endswith(b"[DONE]")
        over = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A))
        assert over.status == 429
        error = (await over.json())["error"]
        assert error["code"] == "rate_limit_exceeded" and "2 requests per minute" in error["message"]
        assert int(over.headers["Retry-After"]) >= 1
        assert over.headers["x-ratelimit-remaining-requests"] == "0"
        # Another key is not affected, and a limit is never failed over.
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_B))).status == 200
    assert len(upstream.requests) == 3


async def test_tpm_counts_tokens_from_usage_streams_included(upstream):
    keys = [{"name": "a", "key": KEY_A, "tpm": 20}]
    async with router_client(config(upstream, keys)) as client:
        # A stream that did not ask for usage: the router asks for it, counts it (5 + 3
        # tokens) and keeps the usage chunk from the client.
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(KEY_A))
        assert resp.status == 200 and resp.headers["x-ratelimit-limit-tokens"] == "20"
        text = (await resp.read()).decode()
        assert '"usage"' not in text and text.rstrip().endswith("data: [DONE]")
        assert upstream.requests[-1]["stream_options"] == {"include_usage": True}
        # A stream that asked for usage gets it.
        resp = await client.post("/v1/chat/completions", headers=bearer(KEY_A), json={
            **CHAT, "stream": True, "stream_options": {"include_usage": True}})
        assert '"usage"' in (await resp.read()).decode()
        # 16 of 20 tokens are spent: a whole answer (9 tokens) is admitted and counted before
        # its headers go out...
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A))
        assert resp.status == 200
        assert int(resp.headers["x-ratelimit-remaining-tokens"]) == 0
        # ... and the key is now over its tokens per minute.
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A))
        assert resp.status == 429
        assert "20 tokens per minute" in (await resp.json())["error"]["message"]
        assert int(resp.headers["Retry-After"]) >= 10  # 5 tokens short at 1/3 token a second
    assert len(upstream.requests) == 3
    listed = None
    async with router_client(config(upstream, keys)) as client:
        listed = (await (await client.get("/admin/keys", headers=ADMIN)).json())["keys"]
    assert listed[0]["name"] == "a" and listed[0]["source"] == "config"


async def test_admin_key_crud_and_the_store_across_a_restart(upstream, tmp_path: Path):
    store = tmp_path / "router.db"
    cfg = config(upstream, [], store=str(store))
    async with router_client(cfg) as client:
        assert (await client.post("/admin/keys", json={"name": "ci"})).status == 401  # admin key needed
        resp = await client.post("/admin/keys", json={"name": "ci", "models": ["test-*"], "rpm": 100},
                                 headers=ADMIN)
        assert resp.status == 201
        created = await resp.json()
        key = created["key"]
        assert key.startswith("sk-prx-") and len(key) > 40 and key.startswith(created["prefix"])
        assert created["models"] == ["test-*"] and created["rpm"] == 100 and created["tpm"] is None
        for bad, param in (({"name": "ci"}, "name"), ({"name": "x y"}, "name"), ({"name": "n", "rpm": 0}, "rpm"),
                           ({"name": "n", "models": []}, "models"), ({"name": "n", "colour": 1}, "colour")):
            resp = await client.post("/admin/keys", json=bad, headers=ADMIN)
            assert resp.status in (400, 409) and (await resp.json())["error"]["param"] == param
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
        assert resp.status == 200 and resp.headers["x-ratelimit-limit-requests"] == "100"
        listing = await (await client.get("/admin/keys", headers=ADMIN)).text()
        assert key not in listing
        (entry,) = json.loads(listing)["keys"]
        assert entry["id"] == created["id"] and entry["requests"] == 1 and entry["last_used"] is not None
        assert set(entry) >= {"name", "id", "prefix", "rpm", "tpm", "models", "created", "last_used", "requests"}
    # Only the key's digest is in the file.
    rows = sqlite3.connect(store).execute("SELECT * FROM client_keys").fetchall()
    assert len(rows) == 1 and key not in repr(rows)
    async with router_client(cfg) as client:  # a restart: the key still works, its counts kept
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
        assert resp.status == 200
        (entry,) = (await (await client.get("/admin/keys", headers=ADMIN)).json())["keys"]
        assert entry["requests"] == 2
        assert (await client.delete("/admin/keys/nope", headers=ADMIN)).status == 404
        resp = await client.delete(f"/admin/keys/{created['id']}", headers=ADMIN)
        assert resp.status == 200
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))  # revoked at once
        assert resp.status == 401
    async with router_client(cfg) as client:
        assert (await (await client.get("/admin/keys", headers=ADMIN)).json())["keys"] == []
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))).status == 401


async def test_config_keys_cannot_be_revoked_through_the_api(upstream):
    async with router_client(config(upstream, [{"name": "a", "key": KEY_A}])) as client:
        resp = await client.delete("/admin/keys/config-a", headers=ADMIN)
        assert resp.status == 409 and "auth.keys" in (await resp.json())["error"]["message"]
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A))).status == 200


async def test_open_auth_serves_anonymous_requests_but_checks_keys_sent(upstream):
    async with router_client(config(upstream, [{"name": "a", "key": KEY_A, "rpm": 5}], open=True)) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200 and "x-ratelimit-limit-requests" not in resp.headers
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A))
        assert resp.status == 200 and resp.headers["x-ratelimit-remaining-requests"] == "4"
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer("x" * 20))).status == 401


def test_keys_never_appear_in_logs_errors_metrics_or_status(start_router, upstreams):
    import urllib.request

    up = upstreams("a")
    secret_backend_key = "upstream-credential-5f2b9c"
    cfg = {"server": {"admin_key": "admin-secret", "log_level": "debug"},
           "auth": {"keys": [{"name": "a", "key": KEY_A, "rpm": 50, "tpm": 5000}]},
           "backends": [{"name": "a", "provider": "openai_compatible", "base_url": up.url,
                         "api_key": secret_backend_key}]}
    router = start_router(cfg)
    seen: list[str] = []

    def call(path: str, headers: dict[str, str], body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(router.url + path, data=data, headers={**headers, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req) as resp:
                seen.append(resp.read().decode() + str(dict(resp.headers)))
        except urllib.error.HTTPError as exc:
            seen.append(exc.read().decode() + str(dict(exc.headers)))

    call("/v1/chat/completions", bearer(KEY_A), CHAT)
    call("/v1/chat/completions", {"x-api-key": KEY_A}, {**CHAT, "stream": True})
    call("/v1/chat/completions", bearer(KEY_A + "x"), CHAT)
    call("/v1/chat/completions", bearer(KEY_A), {**CHAT, "model": "nope"})
    call("/admin/keys", ADMIN)
    call("/admin/keys", ADMIN, {"name": "made"})
    made = json.loads(seen[-1].split("{'", 1)[0])["key"]
    call("/v1/chat/completions", bearer(made), CHAT)
    call("/admin/keys", ADMIN)
    call("/status", ADMIN)
    call("/admin/backends", ADMIN)
    call("/admin/settings", ADMIN)
    assert '"auth.keys"' in seen[-1] and "<redacted>" in seen[-1]
    call("/openapi.json", {})
    call("/metrics", {})
    metrics = seen[-1]
    assert list(text_string_to_metric_families(metrics.split("{'Content-Type'")[0]))
    assert up.headers_seen[0]["Authorization"] == f"Bearer {secret_backend_key}"  # it was used
    captured = router.log() + "\n".join(seen[:5] + seen[7:])
    for secret in (KEY_A, made, secret_backend_key):
        assert secret not in captured
    assert "client key 'made' created" in router.log()


def test_auth_config_errors_name_the_key_and_line():
    def error(text: str) -> ConfigError:
        with pytest.raises(ConfigError) as info:
            parse_config(text, {}, file="c.yaml")
        return info.value

    exc = error("auth:\n  keys:\n    - {name: a, key: short}\n")
    assert exc.key == "auth.keys[0].key" and exc.line == 3 and "16 characters" in str(exc)
    exc = error(f"auth:\n  keys:\n    - {{name: a, key: {KEY_A}}}\n    - {{name: a, key: {KEY_B}}}\n")
    assert exc.key == "auth.keys[1].name" and exc.line == 4 and "duplicate" in str(exc)
    exc = error(f"auth:\n  keys:\n    - {{name: a, key: {KEY_A}}}\n    - {{name: b, key: {KEY_A}}}\n")
    assert exc.key == "auth.keys[1].key" and "the same key" in str(exc)
    exc = error(f"auth:\n  keys:\n    - {{name: a, key: {KEY_A}, rpm: 0}}\n")
    assert exc.key == "auth.keys[0].rpm" and "at least 1" in str(exc)
    assert KEY_A not in str(exc)
    exc = error("auth:\n  colour: red\n")
    assert exc.key == "auth.colour" and exc.line == 2


async def test_auth_without_the_keys_plugin_refuses_to_start(upstream, monkeypatch):
    monkeypatch.setenv("ROUTER_LOAD_PLUGINS", "plugins.strategies,plugins.openai_compatible")
    with pytest.raises(ConfigError) as info:
        async with router_client(config(upstream, [{"name": "a", "key": KEY_A}])):
            pass
    assert info.value.key == "auth" and "plugins.keys" in str(info.value)
