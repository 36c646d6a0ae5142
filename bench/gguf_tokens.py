"""Tokens/s of a GGUF model through the router vs llama-cpp-python called directly.

Same run, same model file, same settings (1 thread, greedy, end-of-turn banned so every
run generates exactly ``--tokens`` tokens), both streaming token by token:

* direct: ``Llama.create_chat_completion(stream=True)`` in this process;
* router: a lean HTTP client streaming from ``python -m router serve`` -> gguf worker.

    python bench/gguf_tokens.py                 # the tiny demo model (2 x 64)
    python bench/gguf_tokens.py --big           # also a ~100M-parameter f16 model

On the tiny model the per-token relay cost dominates (report the added µs per token);
the ~100M model's per-token cost is realistic, so its tokens/s ratio is what users see.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plugins.gguf.demo import write_demo_model  # noqa: E402
from router.testing import RouterProcess  # noqa: E402

EOT = 4
MESSAGES = [{"role": "user", "content": "Tell me about yourself."}]


def direct_run(llama, tokens: int) -> float:
    started = time.perf_counter()
    n = 0
    for chunk in llama.create_chat_completion(MESSAGES, stream=True, max_tokens=tokens, temperature=0.0,
                                              logit_bias={EOT: -100.0}):
        if chunk["choices"][0]["delta"].get("content"):
            n += 1
    elapsed = time.perf_counter() - started
    assert n == tokens, n
    return elapsed


def router_run(url: str, model: str, tokens: int) -> float:
    """Stream through the router with a lean HTTP client, parsing each event as JSON (as
    ``direct_run`` gets each chunk as a dict): the SDK's per-chunk model building would
    otherwise be counted as the router's cost."""
    body = json.dumps({"model": model, "messages": MESSAGES, "stream": True, "max_tokens": tokens,
                       "temperature": 0.0, "logit_bias": {str(EOT): -100}}).encode()
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    n = 0
    for line in response:
        if line.startswith(b"data: {"):
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content"):
                n += 1
    elapsed = time.perf_counter() - started
    conn.close()
    assert n == tokens, n
    return elapsed


def measure(path: Path, tokens: int, repeats: int) -> dict[str, float]:
    import llama_cpp

    config = path.parent / f"{path.stem}.yaml"
    config.write_text(f"""
backends:
  - name: local
    provider: gguf
    n_threads: 1
    n_threads_batch: 1
    max_tokens_limit: {tokens}
    models:
      - {{name: bench, path: {path}, preload: true}}
""")
    llama = llama_cpp.Llama(str(path), n_ctx=4096, n_threads=1, n_threads_batch=1, verbose=False)
    with RouterProcess(config, env={"PYTHONPATH": str(ROOT)}) as router:
        direct_run(llama, min(tokens, 32))
        router_run(router.url, "bench", min(tokens, 32))  # loads the worker
        direct, routed = [], []
        for _ in range(repeats):  # interleaved, so load on the machine hits both alike
            direct.append(direct_run(llama, tokens))
            routed.append(router_run(router.url, "bench", tokens))
    d, r = statistics.median(direct), statistics.median(routed)
    return {"tokens": tokens, "direct_tok_s": round(tokens / d, 1), "router_tok_s": round(tokens / r, 1),
            "ratio": round(d / r, 3), "added_us_per_token": round((r - d) / tokens * 1e6, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--big", action="store_true", help="also a ~100M-parameter f16 model")
    parser.add_argument("--big-tokens", type=int, default=128)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_demo_model(Path(tmp) / "tiny.gguf")
        results["tiny (2x64, f32)"] = measure(tiny, args.tokens, args.repeats)
        if args.big:
            big = write_demo_model(Path(tmp) / "big.gguf", layers=12, hidden=768, heads=12, ff=2048, f16=True)
            results["~100M (12x768, f16)"] = measure(big, args.big_tokens, max(2, args.repeats // 2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
