"""Hostile input on a core install: the router as a subprocess with the extras blocked
(no orjson, no uvloop, no prometheus-client, as after ``pip install -e .``), swept by
hypothesis through every endpoint. No answer may be a 5xx the router made, and the router
must be alive and serving afterwards."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.testing import RouterProcess
from tests.conftest import backend, write_config

ROOT = Path(__file__).resolve().parents[2]
BLOCK_EXTRAS = """\
import sys
for name in ("orjson", "uvloop", "prometheus_client"):
    sys.modules[name] = None  # as if the extra were not installed
"""
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]


@pytest.fixture(scope="module")
def core_router(tmp_path_factory, bg):
    upstream = bg.start_upstream("up", ["test-model"])
    tmp = tmp_path_factory.mktemp("core")
    (tmp / "sitecustomize.py").write_text(BLOCK_EXTRAS)
    config = write_config(tmp / "config.yaml", {
        "routing": {"retries": 0},
        # an alias makes the router re-serialize bodies, where lone surrogates bite
        "backends": [backend("up", upstream, aliases={"renamed": "test-model"})],
    })
    env = {"PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT)])}
    with RouterProcess(config, env=env) as router:
        yield router
    bg.run(upstream.stop())


def send(router: RouterProcess, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=20)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def assert_not_ours(status: int, headers: dict[str, str], raw: bytes) -> None:
    """A 5xx may only be a backend's answer passed on, never the router's own."""
    if status >= 500:
        assert "X-Router-Backend" in headers, (status, raw[:300])


def test_the_extras_are_really_absent(core_router):
    status, _, raw = send(core_router, "GET", "/metrics")
    assert status == 404 and b"prometheus-client" in raw


@pytest.mark.parametrize("body", [
    b"[" * 50000 + b"]" * 50000,
    b'{"model": "test-model", "messages": [' + b"[" * 20000 + b"]" * 20000 + b"]}",
    b'{"model": "renamed", "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "test-model", "messages": [{"role": "user", "content": NaN}]}',
    b'{"model": "test-model", "temperature": Infinity, "messages": [{"role": "user", "content": "x"}]}',
    b'{"model": "test-model", "messages": [{"role": "user", "content": "x"}], "n": -Infinity}',
], ids=["deep-top-level", "deep-in-messages", "lone-surrogate-reserialized", "nan", "infinity", "minus-infinity"])
def test_hostile_json_is_a_400(core_router, body):
    status, headers, raw = send(core_router, "POST", "/v1/chat/completions", body)
    assert status == 400, raw[:300]
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error" and headers["X-Request-ID"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
shaped = st.fixed_dictionaries(
    {"model": st.sampled_from(["test-model", "renamed", "missing"]) | json_values},
    optional={"messages": st.lists(st.dictionaries(st.sampled_from(["role", "content"]), json_values), max_size=3)
              | json_values,
              "prompt": json_values, "input": json_values, "stream": st.booleans() | json_values,
              "max_tokens": json_values},
)
bodies = (
    shaped.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=300)
    | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
    | json_values.map(lambda v: json.dumps(v).encode())
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(path=st.sampled_from(ENDPOINTS), body=bodies)
def test_sweep_no_router_5xx(core_router, path, body):
    status, headers, raw = send(core_router, "POST", path, body)
    assert_not_ours(status, headers, raw)
    if status >= 400:
        assert "error" in json.loads(raw)


def test_get_endpoints_and_the_router_is_alive_after_the_sweep(core_router):
    for path in ("/v1/models", "/v1/models/test-model", "/health", "/health/live", "/health/ready",
                 "/v1/models/%ff%fe", "/v1/nothing", "/admin/backends", "/status"):
        status, headers, raw = send(core_router, "GET", path)
        assert status < 500 and headers["X-Request-ID"], (path, status, raw[:200])
    status, _, raw = send(core_router, "POST", "/v1/chat/completions",
                          json.dumps({"model": "renamed", "messages": [{"role": "user", "content": "hi"}]}).encode())
    assert status == 200 and json.loads(raw)["model"] == "test-model"
    assert core_router.proc is not None and core_router.proc.poll() is None
    assert "Traceback" not in core_router.log()
