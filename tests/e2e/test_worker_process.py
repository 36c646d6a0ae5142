"""router.workers end to end: real worker processes on 127.0.0.1 (``echo_worker.py``, a
deterministic engine served by ``router.workers.server``, and plain commands for the
fixed-port path), supervised by ``ManagedProcess`` and reached through ``WorkerClient``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.errors import ModelLoadFailed, Overloaded, UpstreamTimeout, WorkerCrashed
from router.workers import Launch, LeasedResponse, ManagedProcess, State, WorkerClient

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(Path(__file__).with_name("echo_worker.py"))
ENV = {"PYTHONPATH": str(ROOT)}


def echo_launch(*flags: str, **kwargs: Any) -> Launch:
    kwargs.setdefault("startup_timeout_s", 20)
    kwargs.setdefault("stop_timeout_s", 3)
    return Launch(argv=[sys.executable, SCRIPT, "--port", "0", *flags], env=ENV, **kwargs)


@pytest.fixture
async def client() -> AsyncIterator[WorkerClient]:
    c = WorkerClient(connect_timeout_s=5, read_timeout_s=10)
    yield c
    await c.aclose()


@pytest.fixture
async def supervise(client: WorkerClient) -> AsyncIterator[Any]:
    started: list[ManagedProcess] = []

    def make(launch: Launch, label: str = "echo worker for 'echo'") -> ManagedProcess:
        process = ManagedProcess(launch, client.session, label=label)
        started.append(process)
        return process

    yield make
    for process in started:
        await process.stop()


class Releases:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def chat(content: str, **extra: Any) -> bytes:
    return json.dumps({"model": "echo", "messages": [{"role": "user", "content": content}], **extra}).encode()


async def sse_events(response: LeasedResponse) -> list[Any]:
    raw = b""
    async for chunk in response.iter_chunks():
        raw += chunk
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    return [e.decode() if e == b"[DONE]" else json.loads(e) for e in events]


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json()


# -- ready, serving, stopping ---------------------------------------------------------------


async def test_ready_serves_whole_and_streamed_then_stops_gracefully(client: WorkerClient, supervise: Any) -> None:
    process: ManagedProcess = supervise(echo_launch())
    assert process.current is State.STOPPED and process.status()["pid"] is None
    url = await process.ensure_ready()
    assert process.state is State.READY and url == f"http://127.0.0.1:{process.port}"
    status, health = await get_json(client.session, f"{url}/health")
    assert status == 200 and health["status"] == "ok" and health["engine"] == "echo"
    assert health["queue"]["running"] == 0 and health["queue"]["max_queue"] == 8
    assert (await get_json(client.session, f"{url}/v1/models"))[1]["data"][0]["owned_by"] == "echo"

    released = Releases()
    response = await client.post(process, "/v1/chat/completions", chat("hello world"), release=released)
    assert json.loads(await response.read())["choices"][0]["message"]["content"] == "echo: hello world"
    response.close()
    response.close()
    assert released.count == 1

    response = await client.post(process, "/v1/chat/completions", chat("a b c", stream=True), release=released)
    events = await sse_events(response)
    response.close()
    assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == ["echo:", "a", "b", "c"]
    assert events[-1] == "[DONE]" and released.count == 2
    assert (await get_json(client.session, f"{url}/health"))[1]["queue"]["last_stream_tokens"] == 4

    pid = process.pid
    await process.stop()
    assert process.state is State.STOPPED and process.last_exit == "exit status 0"
    assert pid is not None and not Path(f"/proc/{pid}").exists()


async def test_concurrent_first_callers_share_one_start(client: WorkerClient, supervise: Any,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    process: ManagedProcess = supervise(echo_launch("--load-s", "0.6"))
    caplog.set_level(logging.INFO, logger="router.workers")
    starts = [asyncio.create_task(process.ensure_ready()) for _ in range(5)]
    for _ in range(200):  # bound and reported, still loading
        if process.port is not None:
            break
        await asyncio.sleep(0.01)
    status, health = await get_json(client.session, f"http://127.0.0.1:{process.port}/health")
    assert (status, health["status"]) == (503, "loading")
    assert process.state is State.STARTING
    urls = await asyncio.gather(*starts)
    assert len(set(urls)) == 1
    assert sum("starting echo worker for 'echo'" in r.getMessage() for r in caplog.records) == 1


async def test_stop_while_loading_ends_the_start_at_once(supervise: Any) -> None:
    process: ManagedProcess = supervise(echo_launch("--load-s", "30"))
    start = asyncio.create_task(process.ensure_ready())
    for _ in range(500):
        if process.port is not None:
            break
        await asyncio.sleep(0.01)
    assert process.state is State.STARTING
    began = time.monotonic()
    await process.stop()
    assert time.monotonic() - began < 2.5  # the worker exited on SIGTERM, mid-load
    assert process.state is State.STOPPED and process.last_exit == "exit status 0"
    with pytest.raises(ModelLoadFailed, match="exited while loading"):
        await start


# -- load failures --------------------------------------------------------------------------


async def test_load_failure_carries_the_engines_code_and_message(supervise: Any) -> None:
    process: ManagedProcess = supervise(echo_launch("--fail-load", "out_of_memory"))
    with pytest.raises(ModelLoadFailed) as info:
        await process.ensure_ready()
    assert info.value.code == "out_of_memory"
    assert info.value.message == "cannot load echo: told to fail"
    assert process.current is State.FAILED and process.pid is None
    assert process.last_exit == "exit status 3"


async def test_exit_while_loading_is_described_with_the_log_tail(supervise: Any) -> None:
    process: ManagedProcess = supervise(echo_launch("--exit-while-loading", "7"))
    with pytest.raises(ModelLoadFailed) as info:
        await process.ensure_ready()
    assert info.value.code == "model_load_failed"
    assert "exited while loading (exit status 7)" in info.value.message
    assert "out of luck while loading" in info.value.message
    assert any("echo worker: listening on http://127.0.0.1:" in line for line in process.tail)


async def test_a_command_that_cannot_start(supervise: Any) -> None:
    process: ManagedProcess = supervise(Launch(argv=["/nonexistent/engine", "serve"]))
    with pytest.raises(ModelLoadFailed) as info:
        await process.ensure_ready()
    assert info.value.code == "worker_not_started" and "/nonexistent/engine" in info.value.message


async def test_startup_timeout_kills_the_process(supervise: Any) -> None:
    launch = Launch(argv=[sys.executable, "-c", "import time; time.sleep(60)"], port=0,
                    startup_timeout_s=0.5, stop_timeout_s=1)
    process: ManagedProcess = supervise(launch, "sleeper")
    with pytest.raises(UpstreamTimeout, match=r"the sleeper did not become ready within startup_timeout_s = 0.5s"):
        await process.ensure_ready()
    assert process.current is State.FAILED and process.pid is None


# -- crashes --------------------------------------------------------------------------------


async def test_crash_mid_stream_is_described_and_the_next_request_restarts(client: WorkerClient,
                                                                           supervise: Any) -> None:
    process: ManagedProcess = supervise(echo_launch("--token-s", "0.05"))  # headers out before it dies
    await process.ensure_ready()
    first_pid = process.pid
    released = Releases()
    response = await client.post(process, "/v1/chat/completions", chat("die now please", stream=True), release=released)
    with pytest.raises(WorkerCrashed) as info:
        await sse_events(response)
    response.close()
    assert "the echo worker for 'echo' crashed (killed by SIGKILL) while handling this request" in info.value.message
    assert info.value.status == 502 and released.count == 1
    assert process.current is State.FAILED and process.last_exit == "killed by SIGKILL"

    await process.ensure_ready()
    assert process.restarts == 1 and process.pid != first_pid
    response = await client.post(process, "/v1/chat/completions", chat("back"))
    assert json.loads(await response.read())["choices"][0]["message"]["content"] == "echo: back"
    response.close()


async def test_a_worker_killed_between_requests_is_reported_on_connect(client: WorkerClient,
                                                                      supervise: Any) -> None:
    process: ManagedProcess = supervise(echo_launch())
    await process.ensure_ready()
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    released = Releases()
    with pytest.raises(WorkerCrashed, match=r"crashed \(killed by SIGKILL\)"):
        await client.post(process, "/v1/chat/completions", chat("hi"), release=released)
    assert released.count == 1


async def test_stop_escalates_to_sigkill_for_a_command_on_a_fixed_port(client: WorkerClient,
                                                                      supervise: Any) -> None:
    # A `cmd` engine that cannot report its port and ignores SIGTERM.
    code = ("import signal, sys, http.server; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)"
            ".serve_forever()")
    launch = Launch(argv=[sys.executable, "-c", code, "{port}"], port=0, health_path="/",
                    cwd=str(Path(__file__).parent), stop_timeout_s=0.5)
    process: ManagedProcess = supervise(launch, "stubborn server")
    url = await process.ensure_ready()
    assert process.port is not None and url.endswith(f":{process.port}")
    async with client.session.get(f"{url}/echo_worker.py") as r:  # really serving on that port
        assert r.status == 200
    started = time.monotonic()
    await process.stop()
    assert time.monotonic() - started >= 0.5
    assert process.last_exit == "killed by SIGKILL" and process.state is State.STOPPED


async def test_worker_dies_with_its_supervisor(tmp_path: Path) -> None:
    supervisor = tmp_path / "supervisor.py"
    supervisor.write_text(f"""
import asyncio, sys, time
from router.workers import Launch, ManagedProcess, WorkerClient

async def main():
    client = WorkerClient(connect_timeout_s=5, read_timeout_s=5)
    process = ManagedProcess(Launch(argv=[sys.executable, {SCRIPT!r}, "--port", "0"]), client.session, label="w")
    await process.ensure_ready()
    print(process.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
""")
    proc = subprocess.Popen([sys.executable, str(supervisor)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    try:
        assert proc.stdout is not None
        worker_pid = int(proc.stdout.readline())
        assert Path(f"/proc/{worker_pid}").exists()
        proc.kill()  # the router dies without stopping its workers
        proc.wait(5)
        for _ in range(100):
            if not _running(worker_pid):
                break
            time.sleep(0.05)
        assert not _running(worker_pid)
    finally:
        proc.kill()
        proc.wait(5)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


# -- admission, cancellation, errors, extensions, batches -----------------------------------


async def test_a_full_queue_is_overloaded_and_a_client_that_leaves_cancels(client: WorkerClient,
                                                                          supervise: Any) -> None:
    process: ManagedProcess = supervise(echo_launch("--max-queue", "0", "--token-s", "0.002"))
    url = await process.ensure_ready()
    stream = await client.post(process, "/v1/chat/completions", chat("forever", stream=True))
    chunks = stream.iter_chunks()
    await chunks.__anext__()  # generating: the one slot is taken
    released = Releases()
    with pytest.raises(Overloaded) as info:
        await client.post(process, "/v1/chat/completions", chat("me too"), release=released)
    assert "model 'echo' is busy" in info.value.message and "max_queue = 0" in info.value.message
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    assert info.value.status == 429 and released.count == 1
    stream.close()  # the client goes away mid-stream
    for _ in range(200):
        queue = (await get_json(client.session, f"{url}/health"))[1]["queue"]
        if queue["running"] == 0:
            break
        await asyncio.sleep(0.01)
    assert queue["running"] == 0 and queue["cancelled"] == 1
    assert queue["last_stream_tokens"] < 100_000  # it stopped long before the end


async def test_errors_leave_as_openai_envelopes(client: WorkerClient, supervise: Any) -> None:
    process: ManagedProcess = supervise(echo_launch())
    await process.ensure_ready()
    cases = [
        (b"{not json", 400, "invalid_request"),
        (json.dumps({"model": "other", "messages": []}).encode(), 404, "model_not_found"),
        (chat("x" * 1001), 400, "context_length_exceeded"),
    ]
    for body, status, code in cases:
        response = await client.post(process, "/v1/chat/completions", body)
        envelope = json.loads(await response.read())
        response.close()
        assert (response.status, envelope["error"]["code"]) == (status, code), envelope
    response = await client.post(process, "/v1/embeddings", json.dumps({"input": "x"}).encode())
    assert response.status == 400 and "does not serve embeddings" in (await response.read()).decode()
    response.close()


async def test_extension_by_its_route_and_by_a_flag_in_a_chat_body(client: WorkerClient, supervise: Any) -> None:
    process: ManagedProcess = supervise(echo_launch())
    await process.ensure_ready()
    for path, body in (("/warm", chat("a")), ("/v1/chat/completions", chat("a", warm=True))):
        response = await client.post(process, path, body)
        assert json.loads(await response.read()) == {"object": "echo.warm", "messages": 1}
        response.close()


async def test_a_batching_engine_serves_waiting_requests_in_one_call(client: WorkerClient, supervise: Any) -> None:
    process: ManagedProcess = supervise(echo_launch("--max-batch", "4", "--token-s", "0.5"))
    url = await process.ensure_ready()

    async def one(i: int) -> dict[str, Any]:
        response = await client.post(process, "/v1/chat/completions", chat(f"n{i}"))
        try:
            return dict(json.loads(await response.read()))
        finally:
            response.close()

    first = asyncio.create_task(one(0))
    for _ in range(200):  # the first call is running; the next four gather meanwhile
        if (await get_json(client.session, f"{url}/health"))[1]["queue"]["running"] == 1:
            break
        await asyncio.sleep(0.005)
    rest = asyncio.gather(*(one(i) for i in range(1, 5)))
    results = [await first, *await rest]
    assert [r["choices"][0]["message"]["content"] for r in results] == [f"echo: n{i}" for i in range(5)]
    assert results[0]["batch_size"] == 1
    assert {r["batch_size"] for r in results[1:]} == {4}
    queue = (await get_json(client.session, f"{url}/health"))[1]["queue"]
    assert queue["batches"] == 2 and queue["max_batch"] == 4
