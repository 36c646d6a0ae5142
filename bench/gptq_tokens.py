"""Tokens/s of a Hugging Face model through the router (``gptq`` provider) vs transformers
called directly, for 1 and 4 concurrent clients, same run, same folder, same settings
(CPU, 1 torch thread, float32, greedy, end-of-sequence banned so every request makes
exactly ``--tokens`` tokens):

* direct, 1 client: ``model.generate`` on one prompt in this process;
* direct, 4 clients: ``model.generate`` on the 4 prompts as one left-padded batch
  (transformers' own batching), and one after another;
* router: lean HTTP clients streaming from ``python -m router serve`` -> gptq worker
  (``max_batch: 4``, continuous batching), 1 client, then 4 at once.

    python bench/gptq_tokens.py                       # the tiny LLaMA (2 x 128), fp32 and GPTQ 4-bit
    python bench/gptq_tokens.py --big                 # also a 6 x 512 LLaMA (~16M parameters)

The worker's own counters (decode steps, steps with several requests) are reported too:
they show the 4 clients decoded together. Run from any directory: gptqmodel's ./logs go
to a temporary one.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from router.testing import RouterProcess  # noqa: E402

PROMPTS = ["Once upon a time", "Hello world, this is", "The quick brown fox jumps over the lazy", "a"]


def stream(url: str, prompt: str, tokens: int) -> tuple[int, float]:
    """One streamed completion; (tokens generated, as its usage says; seconds)."""
    body = json.dumps({"model": "bench", "prompt": prompt, "stream": True, "max_tokens": tokens,
                       "temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True}}).encode()
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    started = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    n = 0
    for line in response:
        if line.startswith(b"data: {"):
            event = json.loads(line[6:])  # parsed, as a client would (direct gets objects too)
            if event.get("usage"):
                n = event["usage"]["completion_tokens"]
    elapsed = time.perf_counter() - started
    conn.close()
    return n, elapsed


def router_clients(url: str, clients: int, tokens: int) -> float:
    """Aggregate tokens/s of ``clients`` concurrent streams."""
    results: list[tuple[int, float]] = []
    threads = [threading.Thread(target=lambda p=p: results.append(stream(url, p, tokens)))
               for p in PROMPTS[:clients]]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    got = sum(n for n, _ in results)
    assert got == clients * tokens, results
    return clients * tokens / wall


class Direct:
    def __init__(self, folder: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.torch = torch
        with contextlib.redirect_stdout(sys.stderr):  # gptqmodel prints; stdout is the report
            self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                              device_map="cpu", local_files_only=True)
        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.tok.padding_side = "left"

    def generate(self, prompts: list[str], tokens: int) -> float:
        """Tokens/s of one ``generate`` call on these prompts (one padded batch)."""
        batch = self.tok(prompts, return_tensors="pt", padding=True)
        started = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(**batch, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                                      pad_token_id=self.tok.pad_token_id)
        elapsed = time.perf_counter() - started
        assert out.shape[1] - batch["input_ids"].shape[1] == tokens
        return len(prompts) * tokens / elapsed


def measure(folder: Path, tokens: int, repeats: int, work: Path) -> dict[str, Any]:
    config = work / f"{folder.name}.yaml"
    config.write_text(f"""
server: {{admin_key: bench}}
backends:
  - name: local
    provider: gptq
    device: cpu
    threads: 1
    max_batch: 4
    models:
      - {{name: bench, path: {folder}, preload: true}}
""")
    direct = Direct(folder)
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "GPTQ_WORKDIR": str(work)}
    with RouterProcess(config, env=env) as router:
        _wait_ready(router.url)
        direct.generate(PROMPTS[:1], 8)
        stream(router.url, PROMPTS[0], 8)
        rows: dict[str, list[float]] = {k: [] for k in ("direct_1", "direct_4_batched", "direct_4_serial",
                                                        "router_1", "router_4")}
        for _ in range(repeats):  # interleaved, so load on the machine hits both alike
            rows["direct_1"].append(direct.generate(PROMPTS[:1], tokens))
            rows["router_1"].append(router_clients(router.url, 1, tokens))
            rows["direct_4_batched"].append(direct.generate(PROMPTS, tokens))
            serial = [direct.generate([p], tokens) for p in PROMPTS]
            rows["direct_4_serial"].append(len(serial) / sum(1 / s for s in serial))
            rows["router_4"].append(router_clients(router.url, 4, tokens))
        health = _health(router.url)
    out: dict[str, Any] = {k: round(statistics.median(v), 1) for k, v in rows.items()}
    out["router_1_over_direct_1"] = round(out["router_1"] / out["direct_1"], 3)
    out["router_4_over_direct_4_batched"] = round(out["router_4"] / out["direct_4_batched"], 3)
    out["router_4_over_router_1"] = round(out["router_4"] / out["router_1"], 2)
    out["worker_counters"] = health.get("engine")
    out["tokens_per_request"] = tokens
    return out


def _health(url: str) -> dict[str, Any]:
    import urllib.request

    req = urllib.request.Request(f"{url}/status", headers={"Authorization": "Bearer bench"})
    with urllib.request.urlopen(req, timeout=10) as r:
        worker = json.load(r)["backends"][0]["provider_status"]["models"]["bench"]["url"]
    with urllib.request.urlopen(f"{worker}/health", timeout=10) as r:
        return dict(json.load(r))


def _wait_ready(url: str, timeout: float = 300) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if _health(url).get("status") == "ok":
                return
        except (OSError, KeyError, TypeError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError("the worker did not load")


def build(work: Path, name: str, **shape: int) -> tuple[Path, Path]:
    """The fp32 folder and its GPTQ 4-bit build (through ``python -m router quantize``)."""
    fp32, gptq = work / f"{name}-fp32", work / f"{name}-gptq"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "GPTQ_WORKDIR": str(work)}
    script = "import sys, json; from plugins.gptq.tiny import write_tiny_model as w; w(sys.argv[1], **json.loads(sys.argv[2]))"
    subprocess.run([sys.executable, "-c", script, str(fp32), json.dumps(shape)], check=True, env=env,
                   cwd=work, capture_output=True)
    subprocess.run([sys.executable, "-m", "router", "quantize", "--model", str(fp32), "--out", str(gptq),
                    "--group-size", "32", "--device", "cpu"], check=True, env=env, cwd=work, capture_output=True)
    return fp32, gptq


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big", action="store_true", help="also a 6 x 512 LLaMA")
    parser.add_argument("--big-tokens", type=int, default=64)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.chdir(work)  # gptqmodel (imported by transformers for GPTQ folders) writes ./logs
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        fp32, gptq = build(work, "tiny")
        results["tiny 2x128 fp32"] = measure(fp32, args.tokens, args.repeats, work)
        results["tiny 2x128 gptq-4bit"] = measure(gptq, args.tokens, args.repeats, work)
        if args.big:
            fp32, gptq = build(work, "big", layers=6, hidden=512, heads=8)
            results["6x512 fp32"] = measure(fp32, args.big_tokens, max(2, args.repeats - 1), work)
            results["6x512 gptq-4bit"] = measure(gptq, args.big_tokens, max(2, args.repeats - 1), work)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
