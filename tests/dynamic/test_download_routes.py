"""The download endpoints of the management API, through the router in-process, against the
fake Hugging Face Hub (tests/fakehub.py) on 127.0.0.1: shapes, progress to completion, the
model in the inventory and routable, cancel, a wrong repo, an escaping destination."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from router.testing import router_client
from tests.fakehub import FakeHub

MiB = 1 << 20


@pytest.fixture
async def hub(monkeypatch: pytest.MonkeyPatch) -> Any:
    hub = await FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        yield hub
    finally:
        await hub.stop()


def config(models: Path) -> dict[str, Any]:
    return {"backends": [{"name": "dyn", "provider": "dynamic", "models_dir": str(models)}]}


async def job_until(client: Any, job_id: str, done: Any, timeout: float = 60.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while True:
        job = await (await client.get(f"/v1/models/download/{job_id}")).json()
        if done(job) or loop.time() > until:
            return job
        await asyncio.sleep(0.1)


async def test_download_to_completion_then_inventory_and_models(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("org/tiny-GGUF", {"tiny-Q4_K_M.gguf": b"GGUF" + b"\1" * MiB, "tiny-Q8_0.gguf": b"GGUF" + b"\2" * 64,
                                   "README.md": b"# tiny\n"})
    models = tmp_path / "models"
    models.mkdir()
    async with router_client(config(models)) as client:
        resp = await client.post("/v1/models/verify-repo", json={"url": "https://huggingface.co/org/tiny-GGUF",
                                                                 "quantization": "Q4_K_M"})
        verify = await resp.json()
        assert resp.status == 200 and verify["status"] == "accessible" and verify["matched_files"] == 1
        resp = await client.post("/v1/models/download", json={"url": "org/tiny-GGUF", "quantization": "Q4_K_M"})
        job = await resp.json()
        assert resp.status == 200, job
        assert job["status"] in ("pending", "downloading") and job["job_id"]
        done = await job_until(client, job["job_id"], lambda j: j["status"] not in ("pending", "downloading"))
        assert done["status"] == "completed", done
        assert done["bytes_done"] == done["bytes_total"] == MiB + 4 and done["files_done"] == done["files_total"] == 1
        listing = await (await client.get("/v1/models/download")).json()
        assert listing["total"] == 1 and listing["downloads"][0]["job_id"] == job["job_id"]
        inventory = await (await client.get("/v1/models/inventory")).json()
        (model,) = inventory["models"]
        assert model["model_name"] == "tiny-gguf" and model["files"][0]["quantization"] == "Q4_K_M"
        # Routable at once (discovery runs on a miss): the request reaches the engine, which
        # cannot load these made-up bytes; the answer says so, not "no such model".
        resp = await client.post("/v1/chat/completions", json={
            "model": "/models/tiny-gguf/tiny-Q4_K_M.gguf", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status == 500 and (await resp.json())["error"]["code"] == "model_load_failed"
        models_now = {m["id"] for m in (await (await client.get("/v1/models")).json())["data"]}
        assert "tiny-gguf/tiny-Q4_K_M.gguf" in models_now


async def test_cancel_wrong_repo_and_escaping_destination(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("org/big-GGUF", {"big-Q4_K_M.gguf": b"GGUF" + b"\0" * (8 * MiB)})
    hub.throttle_bps = MiB
    models = tmp_path / "models"
    models.mkdir()
    async with router_client(config(models)) as client:
        job = await (await client.post("/v1/models/download", json={"url": "org/big-GGUF"})).json()
        await job_until(client, job["job_id"], lambda j: j["bytes_done"] > 0)
        resp = await client.delete(f"/v1/models/download/{job['job_id']}")
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "cancelled"
        await hub.wait_for(lambda: hub.transfers_open == 0)
        assert hub.bytes_served < 8 * MiB  # really stopped, mid-file
        assert (await (await client.get("/v1/models/inventory")).json())["total_models"] == 0

        resp = await client.post("/v1/models/download", json={"url": "org/no-such-repo"})
        body = await resp.json()
        assert resp.status == 404 and body["error"]["code"] == "repo_not_found" and body["detail"]
        resp = await client.post("/v1/models/download", json={"url": "org/big-GGUF", "destination": "../outside"})
        body = await resp.json()
        assert resp.status == 400 and body["error"]["param"] == "destination"
        assert not (tmp_path / "outside").exists()
        resp = await client.get("/v1/models/download/download_unknown")
        body = await resp.json()
        assert resp.status == 404 and body["detail"] == "Download job not found: download_unknown"
        resp = await client.post("/v1/models/download", json={})
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "url"
