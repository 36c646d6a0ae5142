"""Request logs (json and pretty, payloads only when asked) and the request metrics
(GenAI names, parsed with prometheus-client's own parser)."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from router.testing import FakeUpstream, RouterProcess, router_client
from tests.conftest import backend, write_config

KEY = "observability-key-0123456789"
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "the secret prompt"}]}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def test_metrics_by_model_backend_status_and_key_with_tokens_and_ttft():
    up = await FakeUpstream("a").start()
    cfg = {"auth": {"keys": [{"name": "team-a", "key": KEY, "rpm": 3}]},
           "backends": [{"name": "a", "provider": "openai_compatible", "base_url": up.url}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        async with router_client(cfg) as client:
            assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200
            resp = await client.post("/v1/chat/completions", headers=headers, json={
                **CHAT, "stream": True, "stream_options": {"include_usage": True}})
            await resp.read()
            assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"},
                                      headers=headers)).status == 404
            assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 429
            text = await (await client.get("/metrics")).text()
    finally:
        await up.stop()
    found = samples(text)
    ok = {"model": "test-model", "backend": "a", "key": "team-a"}
    assert value(found, "router_model_requests_total", status="200", **ok) == 2
    assert value(found, "router_model_requests_total", model="nope", backend="", status="404", key="team-a") == 1
    assert value(found, "router_model_requests_total", model="test-model", backend="", status="429", key="team-a") == 1
    assert value(found, "router_rate_limited_total", key="team-a") == 1
    assert value(found, "gen_ai_server_request_duration_seconds_count", status="200", **ok) == 2
    assert value(found, "gen_ai_server_time_to_first_token_seconds_count", **ok) == 1  # the stream
    # FakeUpstream's usage: 5 + 4 for the whole answer, 5 + 3 for the stream (3 chunks).
    assert value(found, "router_tokens_total", token_type="input", **ok) == 10
    assert value(found, "router_tokens_total", token_type="output", **ok) == 7
    assert value(found, "gen_ai_client_token_usage_count", token_type="output", **ok) == 2
    assert value(found, "gen_ai_client_token_usage_sum", token_type="output", **ok) == 7
    assert value(found, "router_requests_in_flight") == 0
    assert value(found, "router_backend_in_flight", backend="a") == 0  # the older series are still there
    assert value(found, "router_backend_models", backend="a") == 1  # FakeUpstream serves test-model
    assert KEY not in text
    # Every series docs/operations.md lists is served.
    import re
    from pathlib import Path

    documented = set(re.findall(r"\| `((?:router|gen_ai)_[a-z_]+)` \|",
                                (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()))
    served = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    served |= {re.sub(r"_(bucket|count|sum)$", "", name) for name in served}
    # (router_failovers_total has samples only once a failover happened: the next test.)
    assert len(documented) >= 19 and documented - {"router_failovers_total"} <= served, documented - served


def request_lines(proc: RouterProcess) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "router.requests"]


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req) as resp:
        return resp.read()


def wait_for_lines(proc: RouterProcess, count: int) -> list[dict[str, Any]]:
    for _ in range(200):  # the log is read from the process's pipe: wait for it to arrive
        lines = request_lines(proc)
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"expected {count} request lines in the log:\n{proc.log()}")


def test_json_request_log_lines_without_payloads(tmp_path, upstreams):
    up = upstreams("a")
    cfg = write_config(tmp_path / "c.yaml", {"auth": {"keys": [{"name": "team-a", "key": KEY}]},
                                             "backends": [backend("a", up)]})
    with RouterProcess(cfg, env={"LOG_FORMAT": "json"}) as proc:
        post(proc.url, CHAT, {"x-api-key": KEY})
        post(proc.url, {**CHAT, "stream": True, "stream_options": {"include_usage": True}}, {"x-api-key": KEY})
        whole, stream = wait_for_lines(proc, 2)
    assert whole["key"] == "team-a" and whole["model"] == "test-model" and whole["backend"] == "a"
    assert whole["status"] == 200 and whole["stream"] is False and whole["level"] == "info"
    assert whole["prompt_tokens"] == 5 and whole["completion_tokens"] == 4
    assert whole["latency_ms"] >= whole["ttft_ms"] > 0 and len(whole["request_id"]) == 32
    assert stream["stream"] is True and stream["completion_tokens"] == 3 and stream["ttft_ms"] > 0
    log = proc.log()
    assert "the secret prompt" not in log and "hello from a" not in log and KEY not in log


def test_payloads_are_logged_only_when_asked_and_pretty_lines(tmp_path, upstreams):
    up = upstreams("a")
    cfg = write_config(tmp_path / "c.yaml", {"server": {"log_payloads": True, "log_format": "json"},
                                             "backends": [backend("a", up)]})
    with RouterProcess(cfg) as proc:
        post(proc.url, CHAT)
        (line,) = wait_for_lines(proc, 1)
    assert line["request_body"]["messages"][0]["content"] == "the secret prompt"
    assert "hello from a" in line["response_body"]
    cfg = write_config(tmp_path / "p.yaml", {"backends": [backend("a", up)]})
    with RouterProcess(cfg) as proc:
        post(proc.url, CHAT)
        for _ in range(200):
            pretty = [l for l in proc.log().splitlines() if "router.requests" in l]
            if pretty:
                break
            time.sleep(0.05)
    assert pretty and "chat/completions 200" in pretty[0] and "model=test-model" in pretty[0]
    assert "backend=a" in pretty[0] and "prompt_tokens=5" in pretty[0] and "the secret prompt" not in proc.log()


def test_the_grafana_dashboard_uses_only_series_the_router_serves():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "docs" / "grafana.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", name) for e in exprs
            for name in re.findall(r"\b(router_[a-z_]+|gen_ai_[a-z_]+)\b", e)}
    documented = set(re.findall(r"`((?:router|gen_ai)_[a-z_]+)`", (root / "docs" / "operations.md").read_text()))
    assert used and used <= documented, used - documented


async def test_failovers_are_counted_by_the_backend_that_answered():
    good = await FakeUpstream("good").start()
    bad = await FakeUpstream("bad").start()
    bad.behaviour.fail_status = 503
    cfg = {"routing": {"strategy": "round_robin"},
           "backends": [{"name": u.name, "provider": "openai_compatible", "base_url": u.url} for u in (bad, good)]}
    try:
        async with router_client(cfg) as client:
            for _ in range(4):
                assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
            text = await (await client.get("/metrics")).text()
    finally:
        await good.stop()
        await bad.stop()
    found = samples(text)
    failovers = value(found, "router_failovers_total", model="test-model", backend="good")
    assert failovers == bad.served >= 1  # every request the bad backend failed was answered by good
    assert value(found, "router_retries_total") == failovers
