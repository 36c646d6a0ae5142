"""Generation defaults, the max_tokens limit, allowed models (plugins.generation), the
router-wide ``server.max_concurrent``, and seed 002's environment variables."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from router import ConfigError
from router.config.loader import parse_config
from router.plugins import make_plugin_manager
from router.registry import Registry
from router.testing import FakeUpstream, router_client

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def up():
    upstream = await FakeUpstream("alpha", models=["test-model", "gpt-oss-20b"]).start()
    yield upstream
    await upstream.stop()


def config(up: FakeUpstream, **top: Any) -> dict[str, Any]:
    return {"backends": [{"name": "alpha", "provider": "openai_compatible", "base_url": up.url}],
            "aliases": {"gpt-4o": "test-model"}, **top}


GENERATION = {
    "defaults": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 512},
    "max_tokens_limit": 4096,
    "models": {"gpt-oss-*": {"defaults": {"temperature": 1.0}, "max_tokens_limit": 8192}},
}


async def test_defaults_fill_what_the_client_left_out(up):
    async with router_client(config(up, generation=GENERATION)) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
        sent = up.requests[-1]
        assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.7, 0.9, 512)
        await client.post("/v1/chat/completions", json={**CHAT, "temperature": 0, "max_tokens": 20})
        sent = up.requests[-1]
        assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0, 0.9, 20)
        await client.post("/v1/chat/completions", json={**CHAT, "max_completion_tokens": 30})
        assert "max_tokens" not in up.requests[-1] and up.requests[-1]["max_completion_tokens"] == 30
        # The per-model glob overrides only what it sets.
        await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-oss-20b"})
        sent = up.requests[-1]
        assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (1.0, 0.9, 512)
        # Text completions too; embeddings are left alone.
        await client.post("/v1/completions", json={"model": "test-model", "prompt": "x"})
        assert up.requests[-1]["temperature"] == 0.7
        await client.post("/v1/embeddings", json={"model": "test-model", "input": "x"})
        assert up.requests[-1] == {"model": "test-model", "input": "x"}


async def test_without_the_section_the_body_is_sent_as_it_came(up):
    async with router_client(config(up)) as client:
        await client.post("/v1/chat/completions", json=CHAT)
    assert up.requests[-1] == CHAT


async def test_max_tokens_above_the_limit_is_a_400_naming_it(up):
    async with router_client(config(up, generation=GENERATION)) as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5000})
        error = (await resp.json())["error"]
        assert resp.status == 400 and error["param"] == "max_tokens"
        assert "4096" in error["message"] and "generation.max_tokens_limit" in error["message"]
        resp = await client.post("/v1/chat/completions", json={**CHAT, "max_completion_tokens": 5000})
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "max_completion_tokens"
        # The model's own limit is higher.
        resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-oss-20b", "max_tokens": 5000})
        assert resp.status == 200 and up.requests[-1]["max_tokens"] == 5000
    assert len(up.requests) == 1


async def test_on_limit_clamp_lowers_it(up):
    async with router_client(config(up, generation={"max_tokens_limit": 100, "on_limit": "clamp"})) as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5000})
        assert resp.status == 200 and up.requests[-1]["max_tokens"] == 100


async def test_only_allowed_models_are_served(up):
    async with router_client(config(up, generation={"allowed_models": ["test-*"]})) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
        assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o"})).status == 200  # alias
        resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-oss-20b"})
        error = (await resp.json())["error"]
        assert resp.status == 404 and error["code"] == "model_not_found" and error["param"] == "model"
        assert "generation.allowed_models: test-*" in error["message"]
        resp = await client.post("/v1/embeddings", json={"model": "gpt-oss-20b", "input": "x"})
        assert resp.status == 404
        # Nor are they listed.
        listed = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
        assert sorted(listed) == ["gpt-4o", "test-model"]
        assert (await client.get("/v1/models/gpt-oss-20b")).status == 404
        assert (await client.get("/v1/models/test-model")).status == 200
    assert [r["model"] for r in up.requests] == ["test-model", "test-model"]


async def test_server_max_concurrent_is_a_router_wide_limit(up):
    up.behaviour.gate = asyncio.Event()
    async with router_client(config(up, server={"max_concurrent": 1})) as client:
        first = asyncio.ensure_future(client.post("/v1/chat/completions", json=CHAT))
        while up.in_flight < 1:
            await asyncio.sleep(0.01)
        resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-oss-20b"})
        error = (await resp.json())["error"]
        assert resp.status == 429 and error["code"] == "queue_full" and "server.max_concurrent" in error["message"]
        assert "Retry-After" in resp.headers
        up.behaviour.gate.set()
        assert (await first).status == 200
        assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200  # the slot was freed


# -- the environment (seed 002's names) -----------------------------------------------------


def load(text: str, file: str = "c.yaml") -> Any:
    registry = Registry.collect(make_plugin_manager())
    return parse_config(text, registry.providers, registry.strategies, file=file)


BASE = "backends: []\nserver:\n  port: 8400\ngeneration:\n  max_tokens_limit: 100\n"


def test_environment_variables_override_the_file(monkeypatch):
    env = {"LLM_ALLOWED_MODELS": "llama-*, qwen2.5-7b", "LLM_INFERENCE_HOSTNAME": "0.0.0.0",
           "LLM_INFERENCE_PORT": "8091", "LLM_DEFAULT_TEMPERATURE": "0.2", "LLM_DEFAULT_TOP_P": "0.8",
           "LLM_DEFAULT_MAX_TOKENS": "256", "LLM_MAX_TOKENS_LIMIT": "2048", "LLM_MAX_CONCURRENT_REQUESTS": "10"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = load(BASE)
    assert cfg.generation.allowed_models == ["llama-*", "qwen2.5-7b"]
    assert (cfg.server.host, cfg.server.port, cfg.server.max_concurrent) == ("0.0.0.0", 8091, 10)
    defaults = cfg.generation.defaults
    assert (defaults.temperature, defaults.top_p, defaults.max_tokens) == (0.2, 0.8, 256)
    assert cfg.generation.max_tokens_limit == 2048  # over the file's 100
    assert cfg.from_env["server.port"] == "LLM_INFERENCE_PORT"
    assert cfg.from_env["generation.allowed_models"] == "LLM_ALLOWED_MODELS"


@pytest.mark.parametrize(("name", "value", "says"), [
    ("LLM_INFERENCE_PORT", "eighty", "must be a whole number, got 'eighty'"),
    ("LLM_INFERENCE_PORT", "70000", "must be at most 65535"),
    ("LLM_DEFAULT_TEMPERATURE", "3", "must be at most 2"),
    ("LLM_DEFAULT_TOP_P", "nan", "finite"),
    ("LLM_MAX_CONCURRENT_REQUESTS", "0", "must be at least 1"),
    ("LLM_ALLOWED_MODELS", " , ", "at least one model"),
])
def test_a_bad_variable_is_an_error_naming_it(monkeypatch, name, value, says):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load(BASE)
    assert f"environment variable {name}" in str(info.value) and says in str(info.value)
    assert str(info.value).startswith("c.yaml")


def test_router_check_says_where_values_came_from(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(BASE)
    env = {**os.environ, "LLM_INFERENCE_PORT": "8091", "LLM_DEFAULT_TEMPERATURE": "0.3",
           "HF_ENDPOINT": "http://mirror.local"}
    out = subprocess.run([sys.executable, "-m", "router", "check", "--config", str(path)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "server.port = 8091  (from the environment: LLM_INFERENCE_PORT)" in out.stdout
    assert "generation.defaults.temperature = 0.3  (from the environment: LLM_DEFAULT_TEMPERATURE)" in out.stdout
    assert "HF_ENDPOINT = 'http://mirror.local'  (read by Hugging Face downloads)" in out.stdout
    assert "max_tokens_limit" not in out.stdout  # the file's own values are not listed


def test_generation_config_errors_name_key_and_line():
    with pytest.raises(ConfigError) as info:
        load("backends: []\ngeneration:\n  on_limit: drop\n")
    assert (info.value.key, info.value.line) == ("generation.on_limit", 3)
    with pytest.raises(ConfigError) as info:
        load("backends: []\ngeneration:\n  models:\n    'x-*': {defaults: {top_p: 0}}\n")
    assert info.value.key == "generation.models.x-*.defaults.top_p" and "greater than 0" in info.value.message
