"""Plugin machinery: the documented example plugin is installed and run, every hook is
documented and exercised, ROUTER_LOAD_PLUGINS restricts what loads."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from router import hookspecs
from router.plugins import DEFAULT_PLUGINS, make_plugin_manager
from router.registry import Registry
from tests.conftest import backend

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "router-echo"
HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
               if hasattr(fn, "router_spec"))


@pytest.fixture(scope="module")
def example_plugin_path(tmp_path_factory) -> str:
    """Install the example plugin as a user would (pip), into a directory of its own."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
                   check=True, capture_output=True, timeout=180)
    return str(target)


@pytest.fixture
def echo_router(example_plugin_path, start_router_process, upstreams, tmp_path):
    up = upstreams("real", models=["echo-1"])
    log = tmp_path / "events.jsonl"
    env = {"PYTHONPATH": os.pathsep.join([example_plugin_path, str(ROOT)]), "ROUTER_ECHO_LOG": str(log),
           "ROUTER_LOAD_PLUGINS": ",".join([*DEFAULT_PLUGINS, "echo"])}
    router = start_router_process({
        "routing": {"strategy": "alphabetical"},
        "backends": [
            {"name": "b-echo", "provider": "echo", "prefix": "echo: ", "model_names": ["echo-1"]},
            backend("a-real", up),
        ],
    }, env=env)
    return router, up, log


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_hooks_are_all_documented():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for name in HOOKS:
        assert re.search(rf"^### `{name}\(", docs, re.M), f"hook {name} is not documented in docs/plugins.md"
        params = list(inspect.signature(getattr(hookspecs, name)).parameters)
        heading = re.search(rf"^### `{name}\((.*)\)`", docs, re.M)
        assert heading and [p.strip() for p in heading.group(1).split(",") if p.strip()] == params


def test_every_hook_has_a_test():
    source = Path(__file__).read_text()
    for name in HOOKS:
        assert f"def test_hook_{name}" in source, f"hook {name} has no test_hook_{name}"


def test_builtins_register_like_third_party_plugins():
    pm = make_plugin_manager()
    for name in DEFAULT_PLUGINS:
        assert pm.has_plugin(name)
    registry = Registry.collect(pm)
    assert "openai_compatible" in registry.providers
    assert {"round_robin", "random", "weighted", "least_connections", "least_latency", "sticky"} <= set(registry.strategies)


def test_load_plugins_env_restricts(monkeypatch):
    monkeypatch.setenv("ROUTER_LOAD_PLUGINS", "plugins.strategies")
    registry = Registry.collect(make_plugin_manager())
    assert registry.providers == {}
    assert "round_robin" in registry.strategies
    monkeypatch.setenv("ROUTER_LOAD_PLUGINS", "")
    assert Registry.collect(make_plugin_manager()).strategies == {}


def test_hook_register_providers(echo_router):
    router, _, _ = echo_router
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.with_raw_response.create(
        model="echo-1", messages=[{"role": "user", "content": "hello there"}],
        extra_body={"echo_backend": "b-echo"})
    assert completion.headers["X-Router-Backend"] == "b-echo"
    assert completion.parse().choices[0].message.content == "echo: hello there"
    stream = client.chat.completions.create(
        model="echo-1", messages=[{"role": "user", "content": "one two"}], stream=True,
        extra_body={"echo_backend": "b-echo"})
    assert "".join(c.choices[0].delta.content for c in stream) == "echo: one two "


def test_hook_register_strategies(echo_router):
    router, up, _ = echo_router
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
    for _ in range(3):  # "alphabetical" always picks a-real over b-echo
        resp = client.chat.completions.with_raw_response.create(model="echo-1", messages=[{"role": "user", "content": "hi"}])
        assert resp.headers["X-Router-Backend"] == "a-real"
    assert len(up.requests) == 3


def test_hook_filter_backends(echo_router):
    router, up, _ = echo_router
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
    resp = client.chat.completions.with_raw_response.create(
        model="echo-1", messages=[{"role": "user", "content": "hi"}], extra_body={"echo_backend": "b-echo"})
    assert resp.headers["X-Router-Backend"] == "b-echo" and up.requests == []


def test_hook_prepare_request(echo_router):
    router, _, _ = echo_router
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(
        model="echo-1", messages=[{"role": "user", "content": "quiet"}],
        extra_body={"echo_backend": "b-echo", "echo_shout": True})
    assert completion.choices[0].message.content == "echo: QUIET"


def test_hook_observe_response(echo_router):
    router, _, log = echo_router
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
    client.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "hi"}], extra_body={"echo_backend": "b-echo"})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
    # Rejected requests are observed too: a body that is not JSON, and one refused by
    # the authenticate hook (before its body is read).
    assert post(router, b"{not json")[0] == 400
    assert post(router, b"{}", headers={"X-Echo-Deny": "1"})[0] == 401
    responses = [e for e in events(log) if e["event"] == "response"]
    assert [(e["model"], e["status"], e["backend"]) for e in responses] == [
        ("echo-1", 200, "b-echo"), ("missing", 404, None), ("", 400, None), ("", 401, None)]


def post(router, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"{router.url}/v1/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_hook_authenticate(echo_router):
    router, _, log = echo_router
    status, body = post(router, b"{}", headers={"X-Echo-Deny": "1"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert "X-Echo-Deny" in body["error"]["message"]
    # Routes other than the OpenAI endpoints are authenticated too (in a middleware).
    try:
        urllib.request.urlopen(urllib.request.Request(f"{router.url}/v1/models", headers={"X-Echo-Deny": "1"}))
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    else:
        raise AssertionError("GET /v1/models with X-Echo-Deny was not refused")
    body_ok = json.dumps({"model": "echo-1", "messages": [{"role": "user", "content": "hi"}], "echo_backend": "b-echo"}).encode()
    assert post(router, body_ok, headers={"X-Echo-User": "ada"})[0] == 200
    assert post(router, body_ok)[0] == 200
    identities = [e["identity"] for e in events(log) if e["event"] == "response"]
    assert identities[-2:] == ["ada", None]


def test_hook_answer_request(echo_router):
    router, up, _ = echo_router
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.with_raw_response.create(
        model="echo-1", messages=[{"role": "user", "content": "hi"}], extra_body={"echo_cached": True})
    assert reply.parse().choices[0].message.content == "cached answer"
    assert "X-Router-Backend" not in reply.headers and up.requests == []


def test_hook_transform_response(echo_router):
    router, _, _ = echo_router
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
    pinned = {"echo_backend": "b-echo", "echo_upper": True}
    whole = client.chat.completions.create(
        model="echo-1", messages=[{"role": "user", "content": "quiet words"}], extra_body=pinned)
    assert whole.choices[0].message.content == "ECHO: QUIET WORDS"
    stream = client.chat.completions.create(
        model="echo-1", messages=[{"role": "user", "content": "one two"}], stream=True, extra_body=pinned)
    assert "".join(c.choices[0].delta.content for c in stream) == "ECHO: ONE TWO "
    # Without the flag the same request is untouched (the zero-copy path).
    plain = client.chat.completions.create(
        model="echo-1", messages=[{"role": "user", "content": "quiet"}], extra_body={"echo_backend": "b-echo"})
    assert plain.choices[0].message.content == "echo: quiet"


def test_hook_register_routes(echo_router):
    router, _, _ = echo_router
    with urllib.request.urlopen(f"{router.url}/echo/stats", timeout=10) as response:
        assert json.loads(response.read()) == {"backends": ["a-real", "b-echo"], "models": ["echo-1"]}


def test_hook_register_commands(example_plugin_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([example_plugin_path, str(ROOT)]),
           "ROUTER_LOAD_PLUGINS": ",".join([*DEFAULT_PLUGINS, "echo"])}
    result = subprocess.run([sys.executable, "-m", "router", "echo-say", "hello", "there"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello there\n"
    helped = subprocess.run([sys.executable, "-m", "router", "--help"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert "echo-say" in helped.stdout


def test_hook_register_workers():
    # The gguf plugin registers its standalone worker through the hook; the core's
    # "worker" command finds it by the --provider name.
    result = subprocess.run([sys.executable, "-m", "router", "worker", "--provider", "gguf", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--model" in result.stdout and "--n-ctx" in result.stdout
    unknown = subprocess.run([sys.executable, "-m", "router", "worker", "--provider", "nope"],
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "gguf" in unknown.stderr


def test_hook_startup(echo_router):
    _, _, log = echo_router
    assert events(log)[0] == {"event": "startup", "backends": ["a-real", "b-echo"]}


def test_hook_shutdown(echo_router):
    router, _, log = echo_router
    router.stop()
    deadline = time.monotonic() + 5
    while not any(e["event"] == "shutdown" for e in events(log)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events(log)[-1] == {"event": "shutdown"}


def test_plugin_options_are_validated_with_lines(example_plugin_path, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backends:\n  - name: e\n    provider: echo\n    prefix: [1]\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([example_plugin_path, str(ROOT)]),
           "ROUTER_LOAD_PLUGINS": ",".join([*DEFAULT_PLUGINS, "echo"])}
    result = subprocess.run([sys.executable, "-m", "router", "check", "--config", str(cfg)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert f"{cfg}:4: backends[0].prefix: expected a string" in result.stderr
