"""Transport: TLS (a certificate the test makes with the openssl CLI; the openai SDK talks
HTTPS to the router, from server.tls and from seed 002's environment variables) and CORS
(preflights answered without a key, origins checked, credentials never with "*")."""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import openai
import pytest

from router.config.loader import ConfigError, parse_config
from router.testing import FakeUpstream, RouterProcess, router_client
from tests.conftest import backend, write_config

KEY = "cors-test-key-0123456789"
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    assert shutil.which("openssl"), "the openssl CLI makes the test's certificate"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


def https_url(proc: RouterProcess) -> str:
    return f"https://127.0.0.1:{proc.port}"


def test_tls_from_the_config_with_the_openai_sdk(tmp_path, upstreams, certificate):
    cert, key = certificate
    up = upstreams("a")
    cfg = write_config(tmp_path / "c.yaml", {"server": {"tls": {"cert": str(cert), "key": str(key)}},
                                             "backends": [backend("a", up)]})
    with RouterProcess(cfg) as proc:
        assert f"Router listening on https://127.0.0.1:{proc.port}" in proc.log()
        client = openai.OpenAI(base_url=https_url(proc) + "/v1", api_key="unused",
                               http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(cert))))
        answer = client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "hello from a"
        chunks = list(client.chat.completions.create(model="test-model", stream=True,
                                                     messages=[{"role": "user", "content": "hi"}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 "
        # Plain HTTP on the TLS port is not served, and a client that does not trust the
        # certificate is refused.
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/health", timeout=5)
        with pytest.raises(openai.APIConnectionError):
            openai.OpenAI(base_url=https_url(proc) + "/v1", api_key="x", max_retries=0).models.list()


def test_tls_from_seed_002_environment_variables(tmp_path, upstreams, certificate):
    cert, key = certificate
    up = upstreams("a")
    cfg = write_config(tmp_path / "c.yaml", {"backends": [backend("a", up)]})
    env = {"SERVER_SSL_ENABLED": "true", "TLS_SERVER_CERT_PATH": str(cert), "TLS_SERVER_KEY_PATH": str(key)}
    with RouterProcess(cfg, env=env) as proc:
        context = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(https_url(proc) + "/health", context=context, timeout=10) as resp:
            assert resp.status == 200


def test_tls_environment_errors_name_the_variable(monkeypatch):
    monkeypatch.setenv("SERVER_SSL_ENABLED", "true")
    monkeypatch.setenv("TLS_SERVER_CERT_PATH", "/tmp/cert.pem")
    monkeypatch.delenv("TLS_SERVER_KEY_PATH", raising=False)
    with pytest.raises(ConfigError) as info:
        parse_config("backends: []\n", {})
    assert "TLS_SERVER_KEY_PATH" in str(info.value)
    monkeypatch.setenv("SERVER_SSL_ENABLED", "maybe")
    with pytest.raises(ConfigError) as info:
        parse_config("backends: []\n", {})
    assert "SERVER_SSL_ENABLED" in str(info.value) and "true or false" in str(info.value)
    monkeypatch.delenv("SERVER_SSL_ENABLED")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ConfigError) as info:
        parse_config("backends: []\n", {})
    assert "LOG_FORMAT" in str(info.value) and "json, pretty" in str(info.value)
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "http://a.example, http://b.example")
    cfg = parse_config("server: {log_format: pretty}\nbackends: []\n", {})
    assert cfg.server.log_format == "json"
    assert cfg.server.cors_origins == ["http://a.example", "http://b.example"]


def test_a_bad_certificate_is_a_config_error(tmp_path, upstreams):
    up = upstreams("a")
    (tmp_path / "cert.pem").write_text("not a certificate")
    cfg = write_config(tmp_path / "c.yaml", {"server": {"tls": {"cert": "cert.pem", "key": "cert.pem"}},
                                             "backends": [backend("a", up)]})
    with pytest.raises(RuntimeError) as info:
        RouterProcess(cfg).start()
    assert "server.tls" in str(info.value) and "cert.pem" in str(info.value)


def preflight(origin: str, headers: str = "authorization,content-type") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers}


async def test_cors_preflight_needs_no_key_and_origins_are_checked():
    up = await FakeUpstream("a").start()
    cfg = {"server": {"cors_origins": ["http://app.example"]},
           "auth": {"keys": [{"name": "web", "key": KEY, "rpm": 10}]},
           "backends": [{"name": "a", "provider": "openai_compatible", "base_url": up.url}]}
    try:
        async with router_client(cfg) as client:
            resp = await client.options("/v1/chat/completions", headers=preflight("http://app.example"))
            assert resp.status == 200  # no key, yet answered
            assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert "AUTHORIZATION" in resp.headers["Access-Control-Allow-Headers"].upper()
            resp = await client.options("/v1/chat/completions", headers=preflight("http://evil.example"))
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
            error = (await resp.json())["error"]  # in OpenAI's envelope, saying why
            assert error["code"] == "forbidden" and "http://evil.example" in error["message"]
            # The answer itself, a stream, carries the origin and exposes the rate-limit headers.
            resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                                     headers={"Origin": "http://app.example", "Authorization": f"Bearer {KEY}"})
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
            exposed = resp.headers["Access-Control-Expose-Headers"].lower()
            assert "x-ratelimit-remaining-requests" in exposed and "x-request-id" in exposed
            assert (await resp.read()).rstrip().endswith(b"[DONE]")
            # Without a key the actual request is still refused.
            resp = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://app.example"})
            assert resp.status == 401
            assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"  # the browser can read why
    finally:
        await up.stop()


async def test_cors_any_origin_never_allows_credentials():
    up = await FakeUpstream("a").start()
    cfg = {"server": {"cors_origins": ["*"]},
           "backends": [{"name": "a", "provider": "openai_compatible", "base_url": up.url}]}
    try:
        async with router_client(cfg) as client:
            resp = await client.options("/v1/models", headers={"Origin": "http://x.example",
                                                               "Access-Control-Request-Method": "GET"})
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "http://x.example"
            assert "Access-Control-Allow-Credentials" not in resp.headers
            resp = await client.get("/v1/models", headers={"Origin": "http://x.example"})
            assert resp.status == 200 and "Access-Control-Allow-Credentials" not in resp.headers
        async with router_client({"backends": cfg["backends"]}) as client:  # no origins: no CORS at all
            resp = await client.get("/v1/models", headers={"Origin": "http://x.example"})
            assert "Access-Control-Allow-Origin" not in resp.headers
            resp = await client.options("/v1/models", headers={"Origin": "http://x.example",
                                                               "Access-Control-Request-Method": "GET"})
            assert resp.status == 405
    finally:
        await up.stop()
