"""The gptq provider end to end: a tiny LLaMA written here (random weights, a tokenizer
trained offline, a chat template), quantized to 4-bit GPTQ on the CPU with the router's
own ``quantize`` command, and both folders served through a real router (``python -m
router serve``) with real worker processes, called with the openai SDK.

Answers are checked against transformers' own greedy ``generate`` on the same folder
(run in a subprocess, ``gptq_reference.py``). Random models often end after a token or
two, so requests that need length send ``ignore_eos`` (end-of-sequence banned), and the
reference bans it the same way (``min_new_tokens``). Nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from router.testing import RouterProcess, free_port
from tests.engines.helpers import ADMIN, get_json, wait_for, worker_status

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
HELLO = [{"role": "user", "content": "hi there"}]
LONG = {"ignore_eos": True}
PROMPTS = ["Once upon a time", "Hello world, this is", "The quick brown fox jumps over the lazy", "a"]




def env(base: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "GPTQ_WORKDIR": str(base / "work")}


# -- the models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("gptq")
    fp32, plain = base / "tiny-fp32", base / "tiny-plain"
    script = ("import sys; from plugins.gptq.tiny import write_tiny_model as w; "
              "w(sys.argv[1]); w(sys.argv[2], chat_template=False)")
    subprocess.run([sys.executable, "-c", script, str(fp32), str(plain)], check=True, cwd=base,
                   env={**os.environ, **env(base)}, capture_output=True)
    # The quantize command, as a user runs it (its own progress bar on stderr).
    quantize = subprocess.run(
        [sys.executable, "-m", "router", "quantize", "--model", str(fp32), "--out", str(base / "tiny-gptq"),
         "--bits", "4", "--group-size", "32", "--device", "cpu"],
        cwd=base, env={**os.environ, **env(base)}, capture_output=True, text=True, timeout=300)
    assert quantize.returncode == 0, quantize.stderr
    # Folders that cannot be served, each for its own reason.
    (base / "not-a-model").mkdir()
    (base / "not-a-model" / "README.md").write_text("weights coming soon\n")
    no_weights = base / "no-weights"
    no_weights.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (no_weights / name).write_bytes((fp32 / name).read_bytes())
    huge = base / "huge"
    huge.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (huge / name).write_bytes((fp32 / name).read_bytes())
    with open(huge / "model.safetensors", "wb") as f:  # a sparse 1 TiB file: takes no disk
        f.truncate(1 << 40)
    (base / "quantize.txt").write_text(quantize.stderr)
    return {"base": base, "fp32": fp32, "gptq": base / "tiny-gptq", "plain": plain,
            "quantize_stderr": base / "quantize.txt"}


@pytest.fixture(scope="module")
def router(files: dict[str, Path]) -> Any:
    base = files["base"]
    config = base / "config.yaml"
    config.write_text(f"""
server: {{admin_key: {ADMIN}}}
routing: {{retries: 0, health_check_interval_s: 2, discovery_interval_s: 2}}
circuit_breaker: {{failure_threshold: 1000}}
backends:
  - name: local
    provider: gptq
    device: cpu
    max_tokens_limit: 3500
    startup_timeout_s: 120
    models:
      - {{name: fp32, path: {files['fp32']}, preload: true, max_batch: 4, max_queue: 2}}
      - {{name: gptq, path: {files['gptq']}, preload: true, max_batch: 4}}
      - {{name: plain, path: {files['plain']}, max_batch: 1}}  # one at a time: the same loop
      - {{name: missing, path: {base}/nope/Llama-2-7B-GPTQ}}
      - {{name: not-a-model, path: {base}/not-a-model}}
      - {{name: no-weights, path: {base}/no-weights}}
      - {{name: on-cuda, path: {files['fp32']}, device: cuda}}
      - {{name: huge, path: {base}/huge}}
""")
    with RouterProcess(config, env=env(base)) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(router: RouterProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0, timeout=120)


def async_client(router: RouterProcess) -> openai.AsyncOpenAI:
    """One per ``asyncio.run``: an async client's connections belong to one event loop."""
    return openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0, timeout=120)



def worker_health(router: RouterProcess, model: str) -> dict[str, Any]:
    return get_json(f"{worker_status(router, model)['url']}/health")[1]


def reference(files: dict[str, Path], folder: str, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """transformers' greedy generate on the folder, in a process of its own."""
    work = files["base"] / "work"
    work.mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, str(HERE / "gptq_reference.py")],
                            input=json.dumps({"folder": str(files[folder]), "cases": cases}),
                            capture_output=True, text=True, cwd=work, env={**os.environ, **env(files["base"])},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return list(json.loads(line.removeprefix("RESULT ")))


@pytest.fixture(scope="module")
def expected(files: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    chat = [{"chat": HELLO, "tokens": 24},
            {"chat": [{"role": "system", "content": "Keep answers short."},
                      {"role": "user", "content": "What can you do?"}], "tokens": 24}]
    texts = [{"text": p, "tokens": 32} for p in PROMPTS]
    return {"fp32": reference(files, "fp32", chat + texts), "gptq": reference(files, "gptq", chat + texts)}


# -- quantize and the models --------------------------------------------------------------------


def test_quantize_writes_a_gptq_folder_with_a_progress_bar(files: dict[str, Path]) -> None:
    out = files["gptq"]
    config = json.loads((out / "config.json").read_text())
    q = config["quantization_config"]
    assert (q["quant_method"], q["bits"], q["group_size"], q["format"]) == ("gptq", 4, 32, "gptq")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    # The model's own generation config is kept (gptqmodel would turn sampling on).
    assert json.loads((out / "generation_config.json").read_text()) == \
        json.loads((files["fp32"] / "generation_config.json").read_text())
    stderr = files["quantize_stderr"].read_text()
    assert "quantize [##############################] 2/2 layers | done" in stderr
    assert f"wrote {out} (llama model, gptq 4-bit" in stderr
    assert not (files["base"] / "logs").exists() and not (ROOT / "logs").exists()  # gptqmodel's ./logs


def test_quantize_refuses_what_it_cannot_do(files: dict[str, Path]) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "router", "quantize", *args], capture_output=True,
                              text=True, env={**os.environ, **env(files["base"])}, timeout=60)

    base = files["base"]
    result = run("--model", str(files["gptq"]), "--out", str(base / "again"))
    assert result.returncode == 2 and "is already quantized" in result.stderr
    result = run("--model", str(files["fp32"]), "--out", str(base / "x"), "--group-size", "48")
    assert result.returncode == 2 and "hidden_size = 128 is not a multiple of --group-size 48" in result.stderr
    result = run("--model", str(files["fp32"]), "--out", str(files["gptq"]))
    assert result.returncode == 2 and "exists and is not an empty folder" in result.stderr
    result = run("--model", str(base / "nope"), "--out", str(base / "x"))
    assert result.returncode == 2 and f"model folder not found: {base / 'nope'}" in result.stderr
    result = run("--model", str(files["fp32"]), "--out", str(base / "x"), "--device", "cuda")
    assert result.returncode == 2 and "--device cuda: torch sees no CUDA GPU" in result.stderr
    assert not (base / "x").exists()


def test_models_listed_with_loaded_context_and_device(router: RouterProcess, client: openai.OpenAI,
                                                      files: dict[str, Path]) -> None:
    wait_for(lambda: worker_status(router, "fp32")["state"] == "ready"
             and worker_status(router, "gptq")["state"] == "ready", timeout=120, interval=0.2)
    wait_for(lambda: {m.id: m for m in client.models.list().data}["gptq"].model_extra["loaded"], timeout=10)
    models = {m.id: m.model_extra for m in client.models.list().data}
    assert {"fp32", "gptq", "plain", "missing", "huge"} <= set(models)
    assert models["gptq"]["loaded"] is True and models["gptq"]["device"] == "cpu"
    assert models["gptq"]["context_length"] == 4096 and models["gptq"]["path"] == str(files["gptq"])
    assert models["plain"]["loaded"] is False and models["plain"]["device"] == "cpu"
    assert models["on-cuda"]["device"] == "cuda"
    health = worker_health(router, "gptq")
    assert health["quantization"] == {"quant_method": "gptq", "bits": 4, "group_size": 32}
    assert (health["device"], health["dtype"], health["batching"]) == ("cpu", "float32", "padded")


# -- answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["fp32", "gptq"])
def test_greedy_chat_equals_transformers_generate(client: openai.OpenAI, expected: Any, model: str) -> None:
    cases = [HELLO, [{"role": "system", "content": "Keep answers short."},
                     {"role": "user", "content": "What can you do?"}]]
    for messages, want in zip(cases, expected[model][:2], strict=True):
        reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24,
                                               extra_body=LONG)
        assert reply.choices[0].message.content == want["text"]
        assert reply.choices[0].finish_reason == "length"
        # Real usage: the chat template's tokens, and every token generated.
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (want["prompt_tokens"], 24)
        assert reply.usage.total_tokens == want["prompt_tokens"] + 24


def test_greedy_completion_equals_generate_and_streams_token_by_token(router: RouterProcess,
                                                                      expected: Any) -> None:
    async def run() -> tuple[list[str], Any]:
        stream = await async_client(router).completions.create(
            model="gptq", prompt=PROMPTS[0], max_tokens=32, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body=LONG)
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            if chunk.choices and chunk.choices[0].text:
                pieces.append(chunk.choices[0].text)
        return pieces, usage

    pieces, usage = asyncio.run(run())
    want = expected["gptq"][2]
    assert "".join(pieces) == want["text"]
    assert len(pieces) == 32  # one event per token (every token of this vocabulary is whole text)
    assert (usage.prompt_tokens, usage.completion_tokens) == (want["prompt_tokens"], 32)


def test_chat_stream_with_usage(router: RouterProcess, expected: Any) -> None:
    async def run() -> list[Any]:
        stream = await async_client(router).chat.completions.create(
            model="fp32", messages=HELLO, max_tokens=24, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body=LONG)
        return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected["fp32"][0]["text"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24


def test_stop_strings_cut_the_answer(client: openai.OpenAI, expected: Any) -> None:
    full = expected["gptq"][2]["text"]
    cut = full[3:7]  # somewhere inside the greedy answer
    assert cut and full.find(cut) >= 3
    for stop in (cut, ["zzzz-not-there", cut]):
        reply = client.completions.create(model="gptq", prompt=PROMPTS[0], max_tokens=32, temperature=0,
                                          stop=stop, extra_body=LONG)
        assert reply.choices[0].text == full[:full.find(cut)]
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage.completion_tokens < 32


def test_sampling_parameters(client: openai.OpenAI) -> None:
    def sample(**kwargs: Any) -> str:
        extra = {**LONG, **kwargs.pop("extra_body", {})}
        reply = client.completions.create(model="fp32", prompt="Hello", max_tokens=16, extra_body=extra,
                                          **kwargs)
        return reply.choices[0].text

    a = sample(temperature=1.2, top_p=0.9, seed=7, extra_body={"top_k": 40})
    assert a == sample(temperature=1.2, top_p=0.9, seed=7, extra_body={"top_k": 40})  # seeded
    assert len({sample(temperature=1.5, seed=s) for s in range(4)}) > 1
    greedy = sample(temperature=0)
    penalized = sample(temperature=0, frequency_penalty=2.0, presence_penalty=2.0)
    repeated = sample(temperature=0, extra_body={"repetition_penalty": 5.0})
    assert greedy != penalized or greedy != repeated  # penalties change a repetitive answer
    reply = client.completions.create(model="fp32", prompt="Hello", max_tokens=5000, temperature=0, extra_body=LONG)
    assert reply.usage.completion_tokens == 3500 and reply.choices[0].finish_reason == "length"  # max_tokens_limit
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="fp32", prompt="Hello", temperature=5)
    assert info.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="fp32", prompt="Hello", n=2)
    assert "n must be 1" in info.value.message


def test_chat_without_template_uses_the_documented_fallback(client: openai.OpenAI, files: dict[str, Path]) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    chat = client.chat.completions.create(model="plain", messages=messages, temperature=0, max_tokens=20,
                                          extra_body=LONG)
    # Seed 000's format, sent as a plain completion, gives the same answer.
    prompt = "System: Be brief.\nUser: Hello\nAssistant:"
    plain = client.completions.create(model="plain", prompt=prompt, temperature=0, max_tokens=20,
                                      stop=["\nUser:", "\nSystem:"], extra_body=LONG)
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.usage.prompt_tokens == plain.usage.prompt_tokens
    health = worker_health_by_name(client, "plain")
    assert health["chat_template"] == "fallback"
    # max_batch: 1 runs through the same loop, one request at a time.
    assert health["queue"]["max_batch"] == 1 and health["engine"]["peak_batch"] == 1


def worker_health_by_name(client: openai.OpenAI, model: str) -> dict[str, Any]:
    base = str(client.base_url).removesuffix("/v1/")
    _, status = get_json(f"{base}/status", admin=True)
    url = status["backends"][0]["provider_status"]["models"][model]["url"]
    return get_json(f"{url}/health")[1]


def test_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fp32", messages=[{"role": "user", "content": "hello " * 5000}])
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length is 4096 tokens" in info.value.message


# -- batching, cancellation, the queue, crashes ------------------------------------------------


def test_concurrent_requests_are_decoded_together_and_answers_do_not_change(
        router: RouterProcess, expected: Any) -> None:
    async def one(client: openai.AsyncOpenAI, prompt: str) -> str:
        reply = await client.completions.create(model="gptq", prompt=prompt, max_tokens=32, temperature=0,
                                                extra_body=LONG)
        return reply.choices[0].text

    async def run() -> tuple[list[str], list[str]]:
        client = async_client(router)
        alone = [await one(client, p) for p in PROMPTS]
        together = await asyncio.gather(*(one(client, p) for p in PROMPTS))
        return alone, together

    before = worker_health(router, "gptq")["engine"]
    alone, together = asyncio.run(run())
    after = worker_health(router, "gptq")["engine"]
    want = [case["text"] for case in expected["gptq"][2:]]
    assert alone == want and together == want
    # 8 requests of 32 tokens: one by one that is 4 x 31 decode steps; together, the four
    # shared steps (a step decodes one token for every request in the batch).
    steps = after["decode_steps"] - before["decode_steps"]
    assert after["batched_steps"] - before["batched_steps"] >= 25
    assert steps <= 4 * 31 + 31 + 8, (before, after)
    assert after["peak_batch"] == 4


def test_a_request_joins_a_running_batch(router: RouterProcess) -> None:
    async def run() -> tuple[str, str]:
        client = async_client(router)
        stream = await client.completions.create(model="fp32", prompt="Hello", max_tokens=2000,
                                                 temperature=0, stream=True, extra_body=LONG)
        await stream.__anext__()  # generating now
        joined = await client.completions.create(model="fp32", prompt=PROMPTS[1], max_tokens=32,
                                                 temperature=0, extra_body=LONG)
        still = worker_health(router, "fp32")["queue"]["running"]
        await stream.close()
        return joined.choices[0].text, str(still)

    text, running = asyncio.run(run())
    # It finished while the long one was still generating (it did not wait for it)...
    assert running == "1"
    # ... with the answer it gets alone.
    alone = openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0).completions.create(
        model="fp32", prompt=PROMPTS[1], max_tokens=32, temperature=0, extra_body=LONG)
    assert text == alone.choices[0].text


def test_disconnect_stops_generation(router: RouterProcess, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="fp32", messages=HELLO, stream=True, max_tokens=3500,
                                            extra_body=LONG)
    got = 0
    for _ in stream:
        got += 1
        if got == 5:
            break
    stream.close()
    url = worker_status(router, "fp32")["url"]
    took = wait_for(lambda: get_json(f"{url}/health")[1]["queue"]["running"] == 0, timeout=5)
    queue = get_json(f"{url}/health")[1]["queue"]
    assert queue["cancelled"] >= 1, queue
    # Generating all 3500 tokens takes many seconds; it stopped right after the client left.
    assert queue["last_stream_tokens"] < 500, queue
    assert took < 2.0


def test_queue_overflow_gets_429_with_retry_after(router: RouterProcess) -> None:
    async def run() -> None:
        client = async_client(router)
        streams = []
        for _ in range(4):  # max_batch: 4 generating
            s = await client.completions.create(model="fp32", prompt="Hello", max_tokens=3500, stream=True,
                                                extra_body=LONG)
            await s.__anext__()
            streams.append(s)
        waiting = [asyncio.create_task(client.completions.create(model="fp32", prompt="Hi", max_tokens=2))
                   for _ in range(2)]  # max_queue: 2 waiting
        for _ in range(200):
            if worker_health(router, "fp32")["queue"]["waiting"] == 2:
                break
            await asyncio.sleep(0.02)
        assert worker_health(router, "fp32")["queue"]["waiting"] == 2
        with pytest.raises(openai.RateLimitError) as info:
            await client.completions.create(model="fp32", prompt="Hi", max_tokens=2)
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert "max_queue = 2" in info.value.message
        for s in streams:
            await s.close()
        replies = await asyncio.wait_for(asyncio.gather(*waiting), 30)
        assert all(r.choices[0].finish_reason in ("length", "stop") for r in replies)

    asyncio.run(run())


def test_killed_worker_gives_502_then_restarts(router: RouterProcess, client: openai.OpenAI) -> None:
    client.completions.create(model="plain", prompt="Hi", max_tokens=2)
    status = worker_status(router, "plain")
    pid, url = status["pid"], status["url"]
    errors: list[BaseException] = []

    def long_request() -> None:
        try:
            client.completions.create(model="plain", prompt="Hi", max_tokens=3500, extra_body=LONG)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=long_request)
    thread.start()
    wait_for(lambda: get_json(f"{url}/health")[1]["queue"]["running"] == 1)
    os.kill(pid, signal.SIGKILL)
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], openai.APIStatusError), errors
    assert errors[0].status_code == 502
    assert "crashed (killed by SIGKILL)" in errors[0].message
    reply = client.completions.create(model="plain", prompt="Hi", max_tokens=4, extra_body=LONG)
    assert reply.usage.completion_tokens == 4
    status = worker_status(router, "plain")
    assert status["restarts"] == 1 and status["pid"] != pid


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "code", "expected"), [
    ("missing", "model_not_found_on_disk", "model folder not found: {base}/nope/Llama-2-7B-GPTQ"),
    ("not-a-model", "not_a_model", "{base}/not-a-model is not a Hugging Face model folder: it has no config.json"),
    ("no-weights", "weights_missing", "{base}/no-weights has a config.json but no weights"),
    ("on-cuda", "cuda_unavailable", "device 'cuda' was asked for, but torch sees no CUDA GPU"),
    ("huge", "out_of_memory", "does not fit: it needs about 1126.40 GiB"),
])
def test_load_errors_name_the_model_and_say_what_to_do(client: openai.OpenAI, files: dict[str, Path],
                                                        model: str, code: str, expected: str) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=model, messages=HELLO)
    assert info.value.code == code, info.value.message
    assert expected.format(base=files["base"]) in info.value.message
    assert repr(model) in info.value.message
    if model == "huge":
        assert "of RAM is free on cpu" in info.value.message
    # The router stays up and serves the others.
    assert client.completions.create(model="fp32", prompt="Hi", max_tokens=2).choices


def test_idle_ttl_per_model(files: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "idle.yaml"
    config.write_text(f"""
server: {{admin_key: {ADMIN}}}
backends:
  - name: local
    provider: gptq
    device: cpu
    idle_ttl_s: 0.5
    models:
      - {{name: quick, path: {files['fp32']}}}
      - {{name: stays, path: {files['fp32']}, idle_ttl_s: 0}}
""")
    with RouterProcess(config, env=env(files["base"])) as proc:
        c = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="none", max_retries=0, timeout=120)
        for model in ("quick", "stays"):
            assert c.completions.create(model=model, prompt="Hi", max_tokens=2).choices
        pid = worker_status(proc, "quick")["pid"]
        wait_for(lambda: worker_status(proc, "quick")["state"] == "stopped", timeout=15, interval=0.1)
        assert not Path(f"/proc/{pid}").exists()  # the process and all its memory are gone
        time.sleep(1.5)
        assert worker_status(proc, "stays")["state"] == "ready"


# -- the standalone worker ----------------------------------------------------------------------


def test_standalone_worker_behind_openai_compatible(files: dict[str, Path], expected: Any, tmp_path: Path) -> None:
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "router", "worker", "--provider", "gptq", "--model", str(files["gptq"]),
         "--model-id", "remote-gptq", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        env={**os.environ, **env(files["base"])}, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        wait_for(lambda: _health_ok(f"http://127.0.0.1:{port}/health"), timeout=90, interval=0.2)
        config = tmp_path / "remote.yaml"
        config.write_text(f"""
backends:
  - name: gpu-box
    provider: openai_compatible
    base_url: http://127.0.0.1:{port}/v1
""")
        with RouterProcess(config, env=env(files["base"])) as proc:
            c = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="none", max_retries=0)
            assert [m.id for m in c.models.list().data] == ["remote-gptq"]
            reply = c.completions.create(model="remote-gptq", prompt=PROMPTS[0], max_tokens=32, temperature=0,
                                         extra_body=LONG)
            assert reply.choices[0].text == expected["gptq"][2]["text"]
            pieces = [ch.choices[0].delta.content for ch in
                      c.chat.completions.create(model="remote-gptq", messages=HELLO, stream=True, max_tokens=24,
                                                temperature=0, extra_body=LONG)
                      if ch.choices and ch.choices[0].delta.content]
            assert "".join(pieces) == expected["gptq"][0]["text"]
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=10)
    assert f"gptq worker: listening on http://127.0.0.1:{port}" in stderr
    assert "gptq worker: serving 'remote-gptq'" in stderr
    assert not (tmp_path / "logs").exists()  # gptqmodel wrote its ./logs in the worker's own directory


def test_standalone_worker_load_failure_line(files: dict[str, Path], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router", "worker", "--provider", "gptq", "--model", str(files["base"] / "no-weights"),
         "--port", "0"], env={**os.environ, **env(files["base"])}, capture_output=True, text=True, timeout=120,
        cwd=tmp_path)
    assert result.returncode == 3
    line = next(x for x in result.stderr.splitlines() if x.startswith("gptq worker: load failed: "))
    failure = json.loads(line.removeprefix("gptq worker: load failed: "))
    assert failure["code"] == "weights_missing" and "no weights" in failure["message"]


def _health_ok(url: str) -> bool:
    try:
        return get_json(url)[0] == 200
    except OSError:
        return False
