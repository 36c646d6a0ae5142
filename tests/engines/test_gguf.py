"""The gguf provider end to end: a tiny GGUF written here, served through a real router
(``python -m router serve``) with real worker processes, called with the openai SDK.

The model is ``plugins.gguf.demo``'s: deterministic, so every answer can be checked
exactly (``Hello! I am a tiny demo model served by the router.``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from plugins.gguf.demo import REPLY, SENTENCE, write_demo_model
from router.testing import RouterProcess, free_port
from tests.engines.helpers import ADMIN, get_json, wait_for, worker_status

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(ROOT)}
EOT = 4  # <|im_end|> in the demo vocabulary: banned with logit_bias for long generations
NO_EOT = {str(EOT): -100}
HELLO = [{"role": "user", "content": "hi"}]



def post_json(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("gguf")
    model = write_demo_model(base / "weights" / "tiny.gguf")
    models_dir = base / "models"
    models_dir.mkdir()
    (models_dir / "tiny-demo.gguf").write_bytes(model.read_bytes())
    (models_dir / "broken.gguf").write_bytes(model.read_bytes()[:100_000])  # truncated download
    (models_dir / "notgguf.gguf").write_bytes(b"<html>404 Not Found</html>" * 10)
    import gguf

    alien = gguf.GGUFWriter(str(models_dir / "alien.gguf"), "notanarch")
    alien.add_block_count(1)
    alien.write_header_to_file()
    alien.write_kv_data_to_file()
    alien.write_tensors_to_file()
    alien.close()
    return {"base": base, "model": model, "models_dir": models_dir}


@pytest.fixture(scope="module")
def router(files: dict[str, Path]) -> Any:
    model = files["model"]
    config = files["base"] / "config.yaml"
    config.write_text(f"""
server: {{admin_key: {ADMIN}}}
routing: {{retries: 0, health_check_interval_s: 2, discovery_interval_s: 2}}
circuit_breaker: {{failure_threshold: 1000}}
backends:
  - name: local
    provider: gguf
    models_dir: {files['models_dir']}
    n_threads: 1
    n_threads_batch: 1
    max_tokens_limit: 64
    models:
      - {{name: chat, path: {model}, n_ctx: 512, preload: true}}
      - {{name: long, path: {model}, n_ctx: 32768, max_tokens_limit: 100000, max_queue: 1}}
      - {{name: cached, path: {model}, prompt_cache: ram}}
      - {{name: embed, path: {model}, embedding: true}}
      - {{name: victim, path: {model}, max_tokens_limit: 100000}}
      - {{name: lazy, path: {model}}}
      - {{name: missing, path: {files['base']}/nope/model.gguf}}
""")
    with RouterProcess(config, env=ENV) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(router: RouterProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0)


def async_client(router: RouterProcess) -> openai.AsyncOpenAI:
    """One per ``asyncio.run``: an async client's connections belong to one event loop."""
    return openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def direct(files: dict[str, Path]) -> Any:
    """llama-cpp-python called directly, to check what the router reports."""
    import llama_cpp

    return llama_cpp.Llama(str(files["model"]), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False)




# -- models and loading --------------------------------------------------------------------


def test_models_listed_whether_loaded_or_not(router: RouterProcess, client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    expected = {"chat", "long", "cached", "embed", "victim", "lazy", "missing",
                "tiny-demo", "broken", "notgguf", "alien"}
    assert expected <= set(models)
    wait_for(lambda: worker_status(router, "chat")["state"] == "ready")  # preload: true
    # /v1/models shows the state as of the last discovery (discovery_interval_s = 2).
    wait_for(lambda: {m.id: m for m in client.models.list().data}["chat"].model_extra["loaded"], timeout=6)
    models = {m.id: m for m in client.models.list().data}
    assert models["lazy"].model_extra["loaded"] is False
    assert worker_status(router, "lazy")["state"] == "stopped"


def test_concurrent_first_requests_start_one_worker(router: RouterProcess) -> None:
    async def burst() -> list[Any]:
        aclient = async_client(router)
        return await asyncio.gather(*(
            aclient.chat.completions.create(model="lazy", messages=HELLO) for _ in range(4)))

    replies = asyncio.run(burst())
    assert [r.choices[0].message.content for r in replies] == [REPLY] * 4
    assert router.log().count("starting gguf worker for 'lazy'") == 1


# -- chat -------------------------------------------------------------------------------------


def test_chat_uses_gguf_template_and_real_usage(client: openai.OpenAI, direct: Any) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        {"role": "user", "content": "Thanks, café?"},
    ]
    reply = client.chat.completions.create(model="chat", messages=messages)
    assert reply.choices[0].message.content == REPLY
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "chat"
    # The prompt the worker counted is exactly the GGUF template's rendering of the messages.
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = direct.metadata["tokenizer.chat_template"]
    rendered = Jinja2ChatFormatter(template, eos_token="<|im_end|>", bos_token="<s>")(messages=messages)
    assert "<|im_start|>tool\nsunny, 21 C<|im_end|>" in rendered.prompt
    assert reply.usage.prompt_tokens == len(direct.tokenize(rendered.prompt.encode(), add_bos=False, special=True))
    assert reply.usage.completion_tokens == len(SENTENCE)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + len(SENTENCE)


def test_stream_token_by_token_with_usage(router: RouterProcess) -> None:
    async def run() -> tuple[list[str], Any]:
        aclient = async_client(router)
        stream = await aclient.chat.completions.create(
            model="chat", messages=HELLO, stream=True, stream_options={"include_usage": True})
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        return pieces, usage

    pieces, usage = asyncio.run(run())
    assert pieces == [p.replace("▁", " ") for p in SENTENCE]  # one event per token
    assert usage.completion_tokens == len(SENTENCE)
    assert usage.prompt_tokens > 5


def test_json_schema_response_parses_and_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}},
            "vip": {"type": "boolean"},
        },
        "required": ["name", "age", "tags", "vip"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Describe a person as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    data = json.loads(reply.choices[0].message.content)
    jsonschema.validate(data, schema)
    reply = client.chat.completions.create(model="chat", messages=HELLO, response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_forced_tool_call(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_sampling_parameters_stop_and_max_tokens(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="chat", messages=HELLO, stop=[" tiny"], seed=7, temperature=0.7, top_p=0.9,
        presence_penalty=0.1, frequency_penalty=0.1, extra_body={"top_k": 20, "repeat_penalty": 1.0})
    assert reply.choices[0].message.content == "Hello! I am a"
    reply = client.chat.completions.create(model="chat", messages=HELLO, max_tokens=3)
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("Hello! I am", "length")
    assert reply.usage.completion_tokens == 3
    # max_tokens above the backend's max_tokens_limit (64) is capped to it.
    reply = client.chat.completions.create(model="chat", messages=HELLO, max_tokens=5000, logit_bias=NO_EOT)
    assert reply.usage.completion_tokens == 64
    assert reply.choices[0].finish_reason == "length"


def test_legacy_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="chat", prompt="Say something", max_tokens=4)
    assert reply.choices[0].text == "Hello! I am a"
    assert reply.usage.completion_tokens == 4
    assert reply.usage.prompt_tokens > 3


def test_embeddings(client: openai.OpenAI, direct: Any) -> None:
    result = client.embeddings.create(model="embed", input=["hello world", "another text"])
    assert [len(d.embedding) for d in result.data] == [64, 64]
    assert result.usage.prompt_tokens == sum(
        len(direct.tokenize(t.encode(), add_bos=True)) for t in ["hello world", "another text"])
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="chat", input="hello")
    assert "embedding: true" in info.value.message


def test_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "word " * 400}])
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length is 512 tokens" in info.value.message


# -- cancellation, queueing, crashes ---------------------------------------------------------


def test_disconnect_stops_generation(router: RouterProcess, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="long", messages=HELLO, stream=True, max_tokens=30000, logit_bias=NO_EOT)
    got = 0
    for chunk in stream:
        got += 1
        if got == 5:
            break
    stream.close()
    url = worker_status(router, "long")["url"]
    took = wait_for(lambda: get_json(f"{url}/health")[1]["queue"]["running"] == 0, timeout=5)
    queue = get_json(f"{url}/health")[1]["queue"]
    assert queue["cancelled"] >= 1, queue
    # Generating all 30000 tokens takes many seconds; it stopped right after the client left.
    assert queue["last_stream_tokens"] < 10000, queue
    assert took < 2.0


def test_queue_overflow_gets_429_and_depth_is_visible(router: RouterProcess) -> None:
    async def run() -> None:
        aclient = async_client(router)
        stream = await aclient.chat.completions.create(
            model="long", messages=HELLO, stream=True, max_tokens=30000, logit_bias=NO_EOT)
        first = await stream.__anext__()  # generating now: the model's one slot is taken
        assert first.choices
        waiting = asyncio.create_task(aclient.chat.completions.create(model="long", messages=HELLO))
        url = worker_status(router, "long")["url"]
        for _ in range(200):
            if get_json(f"{url}/health")[1]["queue"]["waiting"] == 1:
                break
            await asyncio.sleep(0.02)
        assert get_json(f"{url}/health")[1]["queue"]["waiting"] == 1
        assert worker_status(router, "long")["queued"] == 1
        with pytest.raises(openai.RateLimitError) as info:
            await aclient.chat.completions.create(model="long", messages=HELLO)
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert "max_queue = 1" in info.value.message
        await stream.close()
        reply = await asyncio.wait_for(waiting, 10)
        assert reply.choices[0].message.content == REPLY

    asyncio.run(run())


def test_killed_worker_gives_502_then_restarts(router: RouterProcess, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="victim", messages=HELLO)
    status = worker_status(router, "victim")
    pid, url = status["pid"], status["url"]
    errors: list[BaseException] = []

    def long_request() -> None:
        try:
            client.chat.completions.create(model="victim", messages=HELLO, max_tokens=90000, logit_bias=NO_EOT)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    import threading

    thread = threading.Thread(target=long_request)
    thread.start()
    wait_for(lambda: get_json(f"{url}/health")[1]["queue"]["running"] == 1)
    os.kill(pid, signal.SIGKILL)
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], openai.APIStatusError), errors
    assert errors[0].status_code == 502
    assert "crashed (killed by SIGKILL)" in errors[0].message
    reply = client.chat.completions.create(model="victim", messages=HELLO)
    assert reply.choices[0].message.content == REPLY
    status = worker_status(router, "victim")
    assert status["restarts"] == 1 and status["pid"] != pid


@pytest.mark.parametrize(("model", "expected"), [
    ("missing", "model file not found: "),
    ("broken", "corrupted or incomplete"),
    ("notgguf", "is not a GGUF file"),
    ("alien", "unknown model architecture: 'notanarch'"),
])
def test_load_errors_say_what_to_do(client: openai.OpenAI, files: dict[str, Path], model: str, expected: str) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=model, messages=HELLO)
    assert expected in info.value.message
    if model == "missing":
        assert str(files["base"] / "nope" / "model.gguf") in info.value.message
        assert info.value.code == "model_not_found_on_disk"


# -- prompt cache -----------------------------------------------------------------------------


def test_prompt_cache_and_warm_up(router: RouterProcess, client: openai.OpenAI) -> None:
    history = [{"role": "system", "content": "You answer questions about this document. " + "lorem ipsum " * 120},
               {"role": "user", "content": "First question?"}]
    follow_up = [*history, {"role": "assistant", "content": REPLY}, {"role": "user", "content": "And then?"}]
    results = {}
    for model in ("cached", "lazy"):  # with prompt_cache: ram, and without
        status, warm = post_json(f"{router.url}/v1/chat/completions",
                                 {"model": model, "messages": follow_up[:-1], "restore_cache": True})
        assert status == 200 and warm["prompt_tokens"] > 1000, warm
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "unrelated"}])
        reply = client.chat.completions.create(model=model, messages=follow_up)
        results[model] = (warm["prompt_tokens"], reply.usage.prompt_tokens_details.cached_tokens)
    warmed, cached = results["cached"]
    # Everything up to the warm-up's own assistant-turn header was restored, not recomputed.
    assert cached >= warmed - 12
    assert results["lazy"][1] < 20  # without a prompt cache the unrelated request evicted it
    # The seed's /restore_cache endpoint, on the worker itself.
    url = worker_status(router, "cached")["url"]
    status, body = post_json(f"{url}/restore_cache", {"messages": history})
    assert status == 200 and body["prompt_tokens"] > 1000


# -- standalone worker, and the router without the engine ------------------------------------


def test_standalone_worker_behind_openai_compatible(files: dict[str, Path], tmp_path: Path) -> None:
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "router", "worker", "--provider", "gguf", "--model", str(files["model"]),
         "--model-id", "remote-tiny", "--port", str(port), "--n-threads", "1", "--n-threads-batch", "1"],
        env={**os.environ, **ENV}, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _health_ok(f"http://127.0.0.1:{port}/health"), timeout=30, interval=0.1)
        config = tmp_path / "remote.yaml"
        config.write_text(f"""
backends:
  - name: gpu-box
    provider: openai_compatible
    base_url: http://127.0.0.1:{port}/v1
""")
        with RouterProcess(config, env=ENV) as proc:
            c = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="none", max_retries=0)
            assert [m.id for m in c.models.list().data] == ["remote-tiny"]
            reply = c.chat.completions.create(model="remote-tiny", messages=HELLO)
            assert reply.choices[0].message.content == REPLY
            pieces = [ch.choices[0].delta.content for ch in
                      c.chat.completions.create(model="remote-tiny", messages=HELLO, stream=True)
                      if ch.choices and ch.choices[0].delta.content]
            assert "".join(pieces) == REPLY
    finally:
        worker.terminate()
        worker.wait(10)


def _health_ok(url: str) -> bool:
    try:
        return get_json(url)[0] == 200
    except OSError:
        return False


def test_router_starts_without_llama_cpp(files: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "block"
    blocker.mkdir()
    # An interpreter where llama_cpp cannot be imported, as on a machine without the extra.
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['llama_cpp'] = None\n")
    config = tmp_path / "noengine.yaml"
    config.write_text(f"""
backends:
  - name: local
    provider: gguf
    models: [{files['model']}]
""")
    with RouterProcess(config, env={"PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"}) as proc:
        _, health = get_json(f"{proc.url}/health")
        assert "pip install '.[gguf]'" in health["backends"]["local"]
        c = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model="tiny", messages=HELLO)
        assert info.value.status_code == 503
        assert "pip install '.[gguf]'" in info.value.message
    # The same for a model found in models_dir (no engine is needed to list the folder).
    folder = tmp_path / "dir-models"
    folder.mkdir()
    (folder / "found.gguf").write_bytes(files["model"].read_bytes())
    config.write_text(f"""
backends:
  - name: local
    provider: gguf
    models_dir: {folder}
""")
    with RouterProcess(config, env={"PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"}) as proc:
        c = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model="found", messages=HELLO)
        assert info.value.status_code == 503, info.value.message
        assert "pip install '.[gguf]'" in info.value.message


def test_idle_worker_is_stopped_and_memory_returned(files: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "idle.yaml"
    config.write_text(f"""
server: {{admin_key: {ADMIN}}}
backends:
  - name: local
    provider: gguf
    idle_ttl_s: 0.5
    n_threads: 1
    n_threads_batch: 1
    models: [{files['model']}]
""")
    with RouterProcess(config, env=ENV) as proc:
        c = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="none", max_retries=0)
        assert c.chat.completions.create(model="tiny", messages=HELLO).choices[0].message.content == REPLY
        pid = worker_status(proc, "tiny")["pid"]
        wait_for(lambda: worker_status(proc, "tiny")["state"] == "stopped", timeout=10, interval=0.1)
        assert not Path(f"/proc/{pid}").exists()  # the process and all its memory are gone
        assert c.chat.completions.create(model="tiny", messages=HELLO).choices[0].message.content == REPLY


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = site / "config.yaml"
    config.write_text("""
backends:
  - name: local
    provider: gguf
    models_dir: ./models
    demo_model: true
    n_threads: 1
    n_threads_batch: 1
""")
    # Started from another directory, with a relative path to the config.
    with RouterProcess(os.path.relpath(config, elsewhere), env=ENV, cwd=elsewhere) as proc:
        c = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="none", max_retries=0)
        (model,) = c.models.list().data
        assert model.id == "tiny-demo" and model.model_extra["path"] == str(site / "models" / "tiny-demo.gguf")
        reply = c.chat.completions.create(model="tiny-demo", messages=HELLO, max_tokens=16)
        assert reply.choices[0].message.content
    assert (site / "models" / "tiny-demo.gguf").is_file() and not (elsewhere / "models").exists()
