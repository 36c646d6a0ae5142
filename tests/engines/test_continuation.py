"""Mid-stream continuation with the real local engines: the gguf worker continues an
assistant prefill exactly where greedy decoding would have gone, and a stream whose worker
is killed mid-answer is finished by a second gguf backend, so the client's text equals the
uninterrupted greedy answer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from plugins.gguf.demo import REPLY, write_demo_model
from router.testing import router_client

pytestmark = pytest.mark.engine
EOT = 4  # <|im_end|> in the demo vocabulary: banned for long answers
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("continuation") / "tiny.gguf")


def backend(name: str, model: Path, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": "gguf", "n_threads": 1, "n_threads_batch": 1, "max_tokens_limit": 4096,
            "models": [{"name": "tiny", "path": str(model), "n_ctx": 4096, "preload": True}], **extra}


async def chat(client: Any, **body: Any) -> Any:
    resp = await client.post("/v1/chat/completions", json={"model": "tiny", "temperature": 0, **body})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_the_gguf_engine_continues_a_prefill(model: Path) -> None:
    async with router_client({"backends": [backend("one", model)]}) as client:
        whole = (await chat(client, messages=HELLO, max_tokens=40))["choices"][0]["message"]["content"]
        assert whole == REPLY
        for cut in (6, 11, len("Hello! I am a tiny")):
            prefill = REPLY[:cut]
            rest = (await chat(client, messages=[*HELLO, {"role": "assistant", "content": prefill}],
                               max_tokens=40))["choices"][0]["message"]["content"]
            assert prefill + rest == REPLY, (prefill, rest)
        # continue_final_message: false keeps the old meaning (a closed assistant turn)
        closed = await chat(client, messages=[*HELLO, {"role": "assistant", "content": "Hello!"}],
                            continue_final_message=False, max_tokens=40)
        assert closed["choices"][0]["message"]["content"] != REPLY[len("Hello!"):]


async def test_a_killed_worker_mid_stream_is_continued_by_another_backend(model: Path) -> None:
    config = {"server": {"admin_key": "k"}, "routing": {"strategy": "weighted"},
              "circuit_breaker": {"failure_threshold": 1000},
              "backends": [backend("first", model, weight=1000), backend("second", model)]}
    long = {"messages": HELLO, "max_tokens": 3000, "logit_bias": {str(EOT): -100}}
    async with router_client(config) as client:
        for _ in range(100):  # both preloaded
            status = await (await client.get("/status", headers={"Authorization": "Bearer k"})).json()
            states = [b["provider_status"]["models"]["tiny"]["state"] for b in status["backends"]]
            if states == ["ready", "ready"]:
                break
            await asyncio.sleep(0.1)
        pid = status["backends"][0]["provider_status"]["models"]["tiny"]["pid"]
        expected = (await chat(client, **long))["choices"][0]["message"]["content"]  # uninterrupted, greedy

        resp = await client.post("/v1/chat/completions", json={"model": "tiny", "temperature": 0, "stream": True,
                                                                **long})
        assert resp.status == 200 and resp.headers["X-Router-Backend"] == "first"
        first = b""
        while b'"content"' not in first:  # the role chunk, then the first token
            first += await resp.content.readuntil(b"\n\n")
        os.kill(pid, signal.SIGKILL)  # mid-answer: the first backend's worker dies
        body = first + await resp.read()
        events = [json.loads(line[6:]) for line in body.decode().split("\n\n") if line.startswith("data: {")]
        assert not any("error" in e for e in events), body[-500:]
        text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
        assert text == expected  # nothing duplicated, nothing missing
        status = await (await client.get("/status", headers={"Authorization": "Bearer k"})).json()
        assert status["continuations"] == 1


async def test_local_models_are_loaded_and_unloaded_through_the_admin_api(model: Path) -> None:
    config = {"server": {"admin_key": "k"}, "backends": [{**backend("one", model), "models": [
        {"name": "tiny", "path": str(model), "n_ctx": 512}]}]}
    admin = {"Authorization": "Bearer k"}

    async def state() -> str:
        status = await (await client.get("/status", headers=admin)).json()
        return str(status["backends"][0]["provider_status"]["models"]["tiny"]["state"])

    async with router_client(config) as client:
        assert await state() == "stopped"
        resp = await client.post("/admin/backends/one/models/tiny/load", headers=admin)
        assert resp.status == 200 and (await resp.json())["status"] == "loaded"
        assert await state() == "ready"
        resp = await client.post("/admin/backends/one/models/tiny/unload", headers=admin)
        assert resp.status == 200 and await state() == "stopped"
        resp = await client.post("/admin/backends/one/models/tiny/unload", headers=admin)
        assert resp.status == 409  # not loaded
        resp = await client.post("/admin/backends/one/models/nope/load", headers=admin)
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"
        resp = await client.post("/admin/backends/nope/models/tiny/load", headers=admin)
        assert resp.status == 404
        resp = await client.post("/admin/backends/one/models/tiny/load")
        assert resp.status == 401
