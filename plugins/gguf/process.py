"""Supervision of one worker process: start it, know when it is ready, notice when it dies.

States follow llama-swap's process machinery: stopped -> starting -> ready -> stopping.
``ensure_ready`` is idempotent and guarded by a lock, so concurrent first requests start
one worker and all wait for it. Readiness is the worker's ``/health`` answering 200; a
worker that exits while loading is reported with the reason it printed (llama.cpp's own
log lines), and one that dies later is noticed on the next request and restarted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from router.errors import UpstreamError, UpstreamTimeout
from plugins.gguf.settings import LISTENING_PREFIX, LOAD_FAILED_PREFIX, WorkerSettings

log = logging.getLogger("router.gguf")

_REPO_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


class ModelLoadFailed(UpstreamError):
    """The worker could not load its model (the message says why and what to do)."""

    status = 500
    type = "server_error"
    code = "model_load_failed"


class WorkerCrashed(UpstreamError):
    status = 502
    code = "worker_crashed"


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker gets SIGTERM if the router dies, so no orphan holds the model."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort on other platforms
        pass


class WorkerProcess:
    def __init__(self, settings: WorkerSettings, session: aiohttp.ClientSession, *,
                 provider: str = "gguf", startup_timeout_s: float = 120.0) -> None:
        self.settings = settings
        self.model_id = settings.served_id
        self.session = session
        self.provider = provider
        self.startup_timeout_s = startup_timeout_s
        self.state = WorkerState.STOPPED
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()
        self.tail: collections.deque[str] = collections.deque(maxlen=60)
        self.restarts = 0
        self.last_exit: str | None = None
        self.last_used = time.monotonic()
        self.in_flight = 0
        self.preload = False
        self._reader: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "router", "worker", "--provider", self.provider,
                *self.settings.to_argv()]

    async def ensure_ready(self) -> str:
        """Start the worker unless it is ready; return its URL. Concurrent callers share one start."""
        if self.state is WorkerState.READY and self.alive():
            return self.url
        async with self.lock:
            if self.state is WorkerState.READY and self.alive():
                return self.url
            if self.proc is not None and not self.alive():
                self.last_exit = describe_exit(self.proc.returncode)
                log.warning("gguf worker for %r had exited (%s); restarting it", self.model_id, self.last_exit)
                self.restarts += 1
                self.proc = None
            await self._start()
            return self.url

    async def _start(self) -> None:
        self.state = WorkerState.STARTING
        # Port 0: the worker binds a free port itself and reports it (no race between
        # choosing a port here and binding it there).
        self.settings.port = 0
        self._listening.clear()
        self.tail.clear()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)}
        started = time.monotonic()
        log.info("starting gguf worker for %r: %s", self.model_id, " ".join(self.command()))
        self.proc = await asyncio.create_subprocess_exec(
            *self.command(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self._reader = asyncio.create_task(self._read_stderr(self.proc))
        try:
            await self._wait_healthy(started)
        except BaseException:
            await self.stop()
            raise
        self.state = WorkerState.READY
        log.info("gguf worker for %r ready on %s (pid %s) in %.2fs", self.model_id, self.url,
                 self.proc.pid, time.monotonic() - started)

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while True:
            line = await proc.stderr.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text.startswith(LISTENING_PREFIX):
                self.settings.port = int(text.rsplit(":", 1)[1])
                self._listening.set()
            self.tail.append(text)
            log.debug("[%s] %s", self.model_id, text)

    async def _wait_healthy(self, started: float) -> None:
        assert self.proc is not None
        delay = 0.02
        while time.monotonic() - started < self.startup_timeout_s:
            if self.proc.returncode is not None:
                break
            if not self._listening.is_set():  # it has not bound its port yet
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._listening.wait(), delay)
                delay = min(delay * 1.5, 0.25)
                continue
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with asyncio.timeout(2):
                    async with self.session.get(f"{self.url}/health") as response:
                        if response.status == 200:
                            return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), delay)
            delay = min(delay * 1.5, 0.25)
        if self.proc.returncode is None:
            raise UpstreamTimeout(
                f"the gguf worker for model {self.model_id!r} did not load "
                f"{self.settings.model} within startup_timeout_s = {self.startup_timeout_s:g}s"
            )
        if self._reader is not None:  # let the last lines of its log arrive
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 2)
        raise self.load_failure()

    def load_failure(self) -> UpstreamError:
        code = self.proc.returncode if self.proc is not None else None
        for line in reversed(self.tail):
            if line.startswith(LOAD_FAILED_PREFIX):
                message = line[len(LOAD_FAILED_PREFIX):]
                return ModelLoadFailed(message, code=_code_hint(message))
        last = " | ".join(list(self.tail)[-5:]) or "no output"
        return ModelLoadFailed(
            f"the gguf worker for model {self.model_id!r} ({self.settings.model}) exited while "
            f"loading ({describe_exit(code)}); its last log lines: {last}"
        )

    async def crash_error(self) -> UpstreamError | None:
        """If the worker died, the error its held requests get (and mark it for restart)."""
        if self.proc is None:
            return None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), 0.5)
        if self.proc.returncode is None:
            return None
        self.state = WorkerState.STOPPED
        self.last_exit = describe_exit(self.proc.returncode)
        return WorkerCrashed(
            f"the gguf worker for model {self.model_id!r} crashed ({self.last_exit}) while "
            "handling this request; it is restarted for the next request"
        )

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            self.state = WorkerState.STOPPED
            return
        self.state = WorkerState.STOPPING
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self.last_exit = describe_exit(proc.returncode)
        self.proc = None
        self.state = WorkerState.STOPPED

    def status(self) -> dict[str, Any]:
        alive = self.alive()
        return {
            "state": self.state.value if alive or self.state is not WorkerState.READY else "exited",
            "pid": self.proc.pid if self.proc is not None else None,
            "url": self.url if alive else None,
            "in_flight": self.in_flight,
            "queued": max(0, self.in_flight - 1),
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "path": self.settings.model,
        }


def _code_hint(message: str) -> str:
    low = message.lower()
    if "not found" in low and "model file" in low:
        return "model_not_found_on_disk"
    if "not a gguf file" in low:
        return "not_gguf"
    if "not enough memory" in low:
        return "out_of_memory"
    if "architecture" in low:
        return "unsupported_architecture"
    return "model_load_failed"
