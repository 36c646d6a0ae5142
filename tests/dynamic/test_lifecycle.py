"""The dynamic provider's lifecycle with real engine processes: a ``cmd`` engine running
``cmd_engine.py`` (a small OpenAI-compatible server that records each start), behind the
router in-process. Loads are counted from the engine's own record of its starts."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from router.testing import FakeUpstream, router_client

ENGINE = Path(__file__).with_name("cmd_engine.py")


def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "qwen").mkdir(parents=True)
    for name in ("a.gguf", "b.gguf", "c.gguf", "broken.gguf"):
        (root / name).write_bytes(b"GGUF" + b"\0" * 64)
    (root / "qwen" / "qwen-Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 128)
    hf = root / "tiny-hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                "hidden_size": 8, "vocab_size": 32}))
    (hf / "model.safetensors").write_bytes(b"\0" * 256)
    (root / ".downloads").mkdir()
    (root / ".downloads" / "partial.gguf").write_bytes(b"half")
    return root


def config(tmp_path: Path, **dyn: Any) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    record = tmp_path / "starts.jsonl"
    record.touch()
    engine = {
        "cmd": f"{sys.executable} {ENGINE} --port {{port}} --name {{name}} --record {record} --n-ctx {{n_ctx}}",
        "match": ["*.gguf", "qwen/*"], "defaults": {"n_ctx": 512}, "stop_timeout_s": 5,
    }
    broken = {"cmd": f"{sys.executable} {ENGINE} --port {{port}} --name {{name}} --record {record} --fail",
              "match": ["broken.gguf"]}
    options = {"models_dir": str(models_dir(tmp_path)), "max_wait_s": 20, "default_ttl_s": 0,
               "engines": {"broken": broken, "fake": engine}, **dyn}
    return {"server": {"admin_key": "admin"},
            "backends": [{"name": "dyn", "provider": "dynamic", **options}]}


def starts(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "starts.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line]


async def chat(client: Any, model: str, content: str = "hi", **extra: Any) -> tuple[int, Any, Any]:
    resp = await client.post("/v1/chat/completions",
                             json={"model": model, "messages": [{"role": "user", "content": content}], **extra})
    return resp.status, await resp.json(), resp.headers


async def loaded(client: Any) -> dict[str, Any]:
    resp = await client.get("/v1/models/loaded")
    assert resp.status == 200
    body = await resp.json()
    return {m["model"]: m for m in body["loaded_models"]}


async def test_concurrent_first_requests_cause_one_load(tmp_path: Path) -> None:
    async with router_client(config(tmp_path)) as client:
        results = await asyncio.gather(*(chat(client, "a.gguf") for _ in range(6)))
        assert [status for status, _, _ in results] == [200] * 6
        assert len(starts(tmp_path)) == 1
        pids = {body["choices"][0]["message"]["content"].split("pid ")[1].split()[0] for _, body, _ in results}
        assert len(pids) == 1
        stats = await (await client.get("/v1/models/stats")).json()
        assert stats["loads"] == 1 and stats["total_models_loaded"] == 1
        assert stats["cache_misses"] == 6 and stats["cache_hits"] == 0  # all waited on the load
        status, _, _ = await chat(client, "a.gguf")
        stats = await (await client.get("/v1/models/stats")).json()
        assert status == 200 and stats["cache_hits"] == 1 and stats["loads"] == 1


async def test_prefixed_paths_and_load_fields_reach_the_engine_clean(tmp_path: Path) -> None:
    async with router_client(config(tmp_path)) as client:
        status, body, headers = await chat(client, "/models/qwen/qwen-Q4_K_M.gguf", backend="fake",
                                           device="cuda", ttl=30, n_ctx=1024, n_gpu_layers=0)
        assert status == 200, body
        assert headers["X-Router-Backend"] == "dyn"
        assert body["model"] == "qwen/qwen-Q4_K_M.gguf"
        assert not {"backend", "device", "ttl", "n_ctx", "n_gpu_layers"} & set(body["fields"])
        (start,) = starts(tmp_path)
        assert start["argv"][start["argv"].index("--n-ctx") + 1] == "1024"
        entry = (await loaded(client))["qwen/qwen-Q4_K_M.gguf"]
        assert entry["cache_key"] == "qwen/qwen-Q4_K_M.gguf:fake"
        assert entry["model_path"] == "/models/qwen/qwen-Q4_K_M.gguf"
        assert entry["backend"] == "fake" and entry["device"] == "cuda" and entry["ttl"] == 30
        assert entry["load_options"] == {"device": "cuda", "n_ctx": 1024, "n_gpu_layers": 0}
        assert entry["loaded_at"].endswith("Z") and entry["expires_at"].endswith("Z")
        assert 0 < entry["ttl_remaining"] <= 30 and entry["in_flight"] == 0


async def test_ttl_counts_from_the_end_of_a_long_request(tmp_path: Path) -> None:
    async with router_client(config(tmp_path)) as client:
        long = asyncio.create_task(chat(client, "a.gguf", "sleep:2.5", ttl=1))
        await asyncio.sleep(2.0)  # well past the TTL, counted from the start
        entry = (await loaded(client))["a.gguf"]
        assert entry["in_flight"] == 1 and entry["expires_at"] is None  # the TTL has not started
        status, _, _ = await long
        assert status == 200
        entry = (await loaded(client))["a.gguf"]
        assert entry["in_flight"] == 0 and entry["ttl_remaining"] > 0.5
        for _ in range(100):
            if "a.gguf" not in await loaded(client):
                break
            await asyncio.sleep(0.1)
        assert "a.gguf" not in await loaded(client)
        stats = await (await client.get("/v1/models/stats")).json()
        assert stats["unloads"] == 1


async def test_no_eviction_while_in_flight_then_503_no_capacity(tmp_path: Path) -> None:
    async with router_client(config(tmp_path, max_loaded=1, max_wait_s=1.0)) as client:
        long = asyncio.create_task(chat(client, "a.gguf", "sleep:3"))
        for _ in range(100):
            if (await loaded(client)).get("a.gguf", {}).get("state") == "ready":
                break
            await asyncio.sleep(0.05)
        status, body, headers = await chat(client, "b.gguf")
        assert status == 503, body
        assert body["error"]["code"] == "no_capacity" and "max_loaded = 1" in body["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
        status, body, _ = await long
        assert status == 200  # the in-flight request was never cut by the swap
        assert [s["argv"][s["argv"].index("--name") + 1] for s in starts(tmp_path)] == ["a.gguf"]
        backend = (await (await client.get("/status", headers={"Authorization": "Bearer admin"})).json())["backends"][0]
        assert backend["circuit"] == "closed"
        status, _, _ = await chat(client, "b.gguf")  # a is idle now: it is evicted for b
        assert status == 200 and set(await loaded(client)) == {"b.gguf"}


async def test_least_recently_used_idle_model_goes_first(tmp_path: Path) -> None:
    async with router_client(config(tmp_path, max_loaded=2, group_window_s=0)) as client:
        for model in ("a.gguf", "b.gguf", "a.gguf"):
            assert (await chat(client, model))[0] == 200
        assert (await chat(client, "c.gguf"))[0] == 200
        assert set(await loaded(client)) == {"a.gguf", "c.gguf"}  # b was the least recently used
        stats = await (await client.get("/v1/models/stats")).json()
        assert stats["evictions"] == 1 and stats["loads"] == 3


async def _alternate(tmp_path: Path, window: float) -> int:
    async with router_client(config(tmp_path, max_loaded=1, group_window_s=window)) as client:
        async def client_loop(model: str) -> list[int]:
            return [(await chat(client, model, "sleep:0.05"))[0] for _ in range(6)]

        a, b = await asyncio.gather(client_loop("a.gguf"), client_loop("b.gguf"))
        assert a == [200] * 6 and b == [200] * 6
        return len(starts(tmp_path))


async def test_alternating_clients_are_grouped_by_model(tmp_path: Path) -> None:
    grouped = await _alternate(tmp_path / "grouped", window=2.0)
    ungrouped = await _alternate(tmp_path / "ungrouped", window=0)
    # Without grouping each request swaps (A B A B...); with it each model loads about
    # once per window.
    assert ungrouped >= 8
    assert grouped <= 4 < ungrouped


async def test_other_load_options_reload_once_requests_are_done(tmp_path: Path) -> None:
    async with router_client(config(tmp_path)) as client:
        assert (await chat(client, "a.gguf", n_ctx=1024))[0] == 200
        long = asyncio.create_task(chat(client, "a.gguf", "sleep:1.5"))  # accepts what is loaded
        await asyncio.sleep(0.5)
        status, body, _ = await chat(client, "a.gguf", n_ctx=2048)  # waits for the long one
        assert status == 200
        assert long.done() and (await long)[0] == 200
        argvs = [s["argv"] for s in starts(tmp_path)]
        assert [a[a.index("--n-ctx") + 1] for a in argvs] == ["1024", "2048"]
        assert (await chat(client, "a.gguf"))[0] == 200  # no options: no reload
        assert len(starts(tmp_path)) == 2
        stats = await (await client.get("/v1/models/stats")).json()
        assert stats["reloads"] == 1


async def test_a_failed_load_fails_its_waiters_alike_and_only_that_model(tmp_path: Path) -> None:
    async with router_client(config(tmp_path)) as client:
        results = await asyncio.gather(*(chat(client, "broken.gguf") for _ in range(3)))
        assert [status for status, _, _ in results] == [500] * 3
        messages = {body["error"]["message"] for _, body, _ in results}
        assert len(messages) == 1
        (message,) = messages
        assert "out of memory" in message  # the engine's last log lines
        assert {body["error"]["code"] for _, body, _ in results} == {"model_load_failed"}
        assert len(starts(tmp_path)) == 1  # one load for all three
        assert (await chat(client, "broken.gguf"))[0] == 500
        assert len(starts(tmp_path)) == 2  # the next request tries again
        for _ in range(3):
            await chat(client, "broken.gguf")
        status, _, _ = await chat(client, "a.gguf")  # the backend's other models still serve
        assert status == 200
        backend = (await (await client.get("/status", headers={"Authorization": "Bearer admin"})).json())["backends"][0]
        assert backend["circuit"] == "closed"


async def test_bad_requests_name_what_to_fix(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg["backends"][0]["engines"]["needs"] = {"cmd": f"{sys.executable} {ENGINE} --port {{port}} --x {{max_model_len}}",
                                              "match": []}
    async with router_client(cfg) as client:
        status, body, _ = await chat(client, "a.gguf", backend="needs")
        assert status == 400 and body["error"]["param"] == "max_model_len"
        assert "engines.needs.defaults" in body["error"]["message"]
        status, body, _ = await chat(client, "a.gguf", backend="nope")
        assert status == 400 and "fake" in body["error"]["message"] and body["error"]["param"] == "backend"
        status, body, _ = await chat(client, "tiny-hf", backend="llamacpp")
        assert status == 400 and ".gguf" in body["error"]["message"]
        status, body, _ = await chat(client, "a.gguf", ttl=-1)
        assert status == 400 and body["error"]["param"] == "ttl"
        status, body, _ = await chat(client, "a.gguf", n_ctx="big")
        assert status == 400 and body["error"]["param"] == "n_ctx"
        status, body, _ = await chat(client, "missing.gguf")
        assert status == 404 and body["error"]["code"] == "model_not_found"
        assert starts(tmp_path) == []


async def test_management_endpoints(tmp_path: Path) -> None:
    async with router_client(config(tmp_path)) as client:
        inventory = await (await client.get("/v1/models/inventory")).json()
        by_name = {m["model_name"]: m for m in inventory["models"]}
        assert set(by_name) == {"a", "b", "c", "broken", "qwen", "tiny-hf"}  # .downloads is hidden
        assert inventory["total_models"] == 6
        qwen = by_name["qwen"]
        assert qwen["model_type"] == "gguf" and qwen["recommended_backend"] == ["llamacpp"]
        assert qwen["files"][0]["quantization"] == "Q4_K_M" and qwen["files"][0]["size_bytes"] == 132
        assert qwen["model_path"] == "/models/qwen" and qwen["file_count"] == 1
        hf = by_name["tiny-hf"]
        assert hf["model_type"] == "transformers" and hf["has_config"] is True
        assert hf["config_metadata"]["architectures"] == ["LlamaForCausalLM"]

        models = {m["id"]: m for m in (await (await client.get("/v1/models")).json())["data"]}
        assert "a.gguf" in models and "qwen/qwen-Q4_K_M.gguf" in models and "tiny-hf" in models
        assert not any(m.startswith("/models/") for m in models)  # the prefixed spelling is not listed twice
        assert models["a.gguf"]["loaded"] is False

        resp = await client.post("/v1/models/load", json={"model": "/models/a.gguf", "ttl": 0})
        assert resp.status == 200, await resp.text()
        entry = (await loaded(client))["a.gguf"]
        assert entry["ttl"] == 0 and entry["expires_at"] is None and entry["ttl_remaining"] is None
        await client.get("/v1/models")  # discovery runs on a miss or its interval
        assert (await chat(client, "b.gguf"))[0] == 200

        resp = await client.post("/v1/models/unload", json={"model": "/models/a.gguf"})
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "unloaded" and body["count"] == 1
        resp = await client.post("/v1/models/unload", json={"model": "/models/a.gguf"})
        body = await resp.json()
        assert resp.status == 404 and body["error"]["code"] == "model_not_loaded"
        assert "not loaded" in body["detail"]  # XandRouting clients read detail
        resp = await client.post("/v1/models/unload", data=b"{nope")
        assert resp.status == 400 and "JSON" in (await resp.json())["detail"]

        resp = await client.post("/v1/models/unload-all")
        assert (await resp.json()) == {"status": "unloaded_all", "count": 1}
        assert await loaded(client) == {}
        stats = await (await client.get("/v1/models/stats")).json()
        assert stats["loads"] == 2 and stats["unloads"] == 2 and stats["total_models_loaded"] == 0


async def test_unload_waits_for_requests_in_flight(tmp_path: Path) -> None:
    async with router_client(config(tmp_path)) as client:
        long = asyncio.create_task(chat(client, "a.gguf", "sleep:1.0"))
        await asyncio.sleep(0.6)
        resp = await client.post("/v1/models/unload", json={"model": "a.gguf"})
        assert resp.status == 200 and (await resp.json())["count"] == 1
        assert long.done() and (await long)[0] == 200


async def test_a_warm_backend_takes_the_request_before_a_cold_load(tmp_path: Path) -> None:
    remote = await FakeUpstream("remote", models=["a.gguf"]).start()
    try:
        cfg = config(tmp_path)
        cfg["backends"].append({"name": "remote", "provider": "openai_compatible", "base_url": remote.url})
        cfg["routing"] = {"strategy": "round_robin"}
        async with router_client(cfg) as client:
            served = [(await chat(client, "a.gguf"))[2]["X-Router-Backend"] for _ in range(4)]
            assert served == ["remote"] * 4 and starts(tmp_path) == []
            resp = await client.post("/v1/models/load", json={"model": "a.gguf"})
            assert resp.status == 200
            served = [(await chat(client, "a.gguf"))[2]["X-Router-Backend"] for _ in range(4)]
            assert set(served) == {"remote", "dyn"}  # both warm now: the strategy shares them
    finally:
        await remote.stop()


async def test_a_crashed_engine_is_loaded_again(tmp_path: Path) -> None:
    import os
    import signal

    async with router_client(config(tmp_path)) as client:
        assert (await chat(client, "a.gguf"))[0] == 200
        pid = (await loaded(client))["a.gguf"]["pid"]
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        status, body, _ = await chat(client, "a.gguf")
        assert status == 200, body
        assert len(starts(tmp_path)) == 2
        assert (await loaded(client))["a.gguf"]["pid"] != pid


async def test_a_stream_holds_its_model_until_it_ends(tmp_path: Path) -> None:
    async with router_client(config(tmp_path, max_loaded=1, max_wait_s=0.5)) as client:
        resp = await client.post("/v1/chat/completions", json={
            "model": "a.gguf", "stream": True, "messages": [{"role": "user", "content": "sleep:1.5"}]})
        assert resp.status == 200
        first = await resp.content.readline()
        assert first.startswith(b"data: ")
        assert (await loaded(client))["a.gguf"]["in_flight"] == 1
        status, _, _ = await chat(client, "b.gguf")
        assert status == 503  # a is streaming: it is not evicted
        rest = await resp.read()
        assert rest.rstrip().endswith(b"data: [DONE]")
        resp.release()
        for _ in range(50):
            if (await loaded(client))["a.gguf"]["in_flight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert (await loaded(client))["a.gguf"]["in_flight"] == 0



async def test_a_remote_xandrouting_server_gets_extra_body_fields() -> None:
    remote = await FakeUpstream("xand", models=["/models/qwen"]).start()
    try:
        cfg = {"backends": [{"name": "xand", "provider": "openai_compatible", "base_url": remote.url,
                             "extra_body": {"backend": "llamacpp", "device": "cuda"}}]}
        async with router_client(cfg) as client:
            status, _, _ = await chat(client, "/models/qwen")
            assert status == 200
            status, _, _ = await chat(client, "/models/qwen", device="cpu")
            assert status == 200
        first, second = remote.requests[-2:]
        assert first["backend"] == "llamacpp" and first["device"] == "cuda" and first["model"] == "/models/qwen"
        assert second["device"] == "cpu"  # the request's own fields win
    finally:
        await remote.stop()
