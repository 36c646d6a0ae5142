"""The dynamic provider with the real built-in engines: the tiny GGUF model through the
``llamacpp`` engine (the gguf worker) and a tiny Hugging Face folder through the
``transformers`` engine (the gptq worker), loaded on demand from one models folder, as a
XandRouting client names them, with one slot between them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plugins.gguf.demo import DEMO_NAME, REPLY, write_demo_model
from router.testing import router_client

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dynamic-models")
    write_demo_model(root / "demo" / f"{DEMO_NAME}.gguf")
    script = "import sys; from plugins.gptq.tiny import write_tiny_model as w; w(sys.argv[1])"
    subprocess.run([sys.executable, "-c", script, str(root / "tiny-llama")], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}, timeout=300)
    return root


def config(models: Path, **extra: Any) -> dict[str, Any]:
    return {"backends": [{"name": "dyn", "provider": "dynamic", "models_dir": str(models), "default_ttl_s": 0,
                          "load_timeout_s": 240, "read_timeout_s": 120, "first_byte_timeout_s": 240,
                          "transformers": {"threads": 1}, **extra}]}


async def chat(client: Any, model: str, **extra: Any) -> tuple[int, Any]:
    resp = await client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "temperature": 0, **extra})
    return resp.status, await resp.json()


async def test_both_engines_load_on_demand_in_one_slot(models: Path) -> None:
    async with router_client(config(models, max_loaded=1)) as client:
        status, body = await chat(client, f"/models/demo/{DEMO_NAME}.gguf", backend="llamacpp", device="cpu",
                                  n_ctx=512, max_tokens=40)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == REPLY  # the demo model's greedy answer
        assert body["usage"]["completion_tokens"] > 0
        loaded = (await (await client.get("/v1/models/loaded")).json())["loaded_models"]
        assert [(m["backend"], m["load_options"]) for m in loaded] == [("llamacpp", {"device": "cpu", "n_ctx": 512})]

        status, body = await chat(client, "tiny-llama", device="cpu")  # a folder: the transformers engine
        assert status == 200, body
        assert body["usage"]["completion_tokens"] > 0
        loaded = (await (await client.get("/v1/models/loaded")).json())["loaded_models"]
        assert [(m["model"], m["backend"]) for m in loaded] == [("tiny-llama", "transformers")]
        stats = await (await client.get("/v1/models/stats")).json()
        assert stats["loads"] == 2 and stats["evictions"] == 1

        models_list = {m["id"]: m for m in (await (await client.get("/v1/models")).json())["data"]}
        assert models_list["tiny-llama"]["loaded"] is True
        assert models_list[f"demo/{DEMO_NAME}.gguf"]["loaded"] is False


async def test_a_streamed_answer_from_a_dynamically_loaded_gguf(models: Path) -> None:
    async with router_client(config(models)) as client:
        resp = await client.post("/v1/chat/completions", json={
            "model": f"demo/{DEMO_NAME}.gguf", "stream": True, "max_tokens": 40, "temperature": 0,
            "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status == 200
        text = await resp.text()
        assert text.rstrip().endswith("data: [DONE]")
        assert "tiny" in text
