"""Supervision of one worker process: start it, know when it is ready, notice when it dies.

States follow the process machinery of on-demand model swappers: stopped -> starting ->
ready -> stopping, plus failed (it could not load, or it died on its own).
``ensure_ready`` is idempotent and runs under a lock, so concurrent first requests share
one start. Readiness is the
worker's listening line (``router.workers.protocol``) then its health path answering 200,
or, for a fixed port, the health path alone. A worker that exits while loading is
reported with the code and message it printed, else with the tail of its log; one that
dies later is noticed (``crash_error``) and started again on the next request.
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
from typing import Any

import aiohttp

from router.errors import ModelLoadFailed, UpstreamError, UpstreamTimeout, WorkerCrashed
from router.workers import protocol
from router.workers.launch import Launch, free_port

_log = logging.getLogger("router.workers")


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


def describe_exit(code: int | None) -> str:
    """``exit status 3``, ``killed by SIGKILL`` (asyncio reports a signal as -N)."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker gets SIGTERM if the router dies, so no orphan holds a model."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


class ManagedProcess:
    """One worker process, started on demand, stopped with SIGTERM then SIGKILL.

    ``label`` names it in logs and errors ("myengine worker for 'qwen'"). ``session`` is
    only used for health checks.
    """

    def __init__(self, launch: Launch, session: aiohttp.ClientSession, *, label: str,
                 logger: logging.Logger | None = None, tail_lines: int = 60) -> None:
        self.launch = launch
        self.session = session
        self.label = label
        self.log = logger or _log
        self.state = State.STOPPED
        self.port: int | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        #: The last lines the worker printed (stdout and stderr), for error messages.
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._lines_since_ready = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._listening = asyncio.Event()
        self._load_failure: protocol.LoadFailed | None = None

    # -- what it is now ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"the {self.label} has no port yet")
        return f"http://{self.launch.host}:{self.port}"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def loaded(self) -> bool:
        """Whether it holds resources (a live process: starting, ready or stopping)."""
        return self.alive()

    @property
    def current(self) -> State:
        """The state, with a process that died on its own shown as failed."""
        if self.state is State.READY and not self.alive():
            return State.FAILED
        return self.state

    def status(self) -> dict[str, Any]:
        alive = self.alive()
        return {
            "state": self.current.value,
            "pid": self.pid,
            "url": self.url if alive and self.port is not None else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }

    # -- starting ----------------------------------------------------------------------------

    async def ensure_ready(self) -> str:
        """Start the worker unless it is ready; return its URL. Concurrent callers share
        one start. Raises ``ModelLoadFailed`` or ``UpstreamTimeout``."""
        if self.state is State.READY and self.alive():
            return self.url
        async with self._lock:
            if self.state is State.READY and self.alive():
                return self.url
            if self._proc is not None:  # it died on its own since it was started
                self.last_exit = describe_exit(self._proc.returncode)
                self.log.warning("%s had exited (%s); restarting it", self.label, self.last_exit)
                self.restarts += 1
                await self._stop_locked()
            try:
                await self._start()
            except BaseException:
                await self._stop_locked()
                self.state = State.FAILED
                raise
            return self.url

    async def _start(self) -> None:
        launch = self.launch
        self.state = State.STARTING
        self._listening.clear()
        self._load_failure = None
        self.tail.clear()
        self.port = None if launch.reports_port else (launch.port or free_port(launch.host))
        argv = launch.command(self.port)
        started = time.monotonic()
        self.log.info("starting %s: %s", self.label, " ".join(argv))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=launch.environment(), cwd=launch.cwd,
                start_new_session=True,  # its own process group: stop() reaches its children too
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except OSError as exc:
            raise ModelLoadFailed(f"cannot start the {self.label} ({argv[0]}): {exc}",
                                  code="worker_not_started") from exc
        self._reader = asyncio.create_task(self._read_output(self._proc))
        await self._wait_ready(self._proc, started)
        self.state = State.READY
        self._lines_since_ready = 0
        self.log.info("%s ready on %s (pid %s) in %.2fs", self.label, self.url, self._proc.pid,
                      time.monotonic() - started)

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line over the stream's limit: skip it
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            message = protocol.parse_line(text)
            if isinstance(message, protocol.Listening) and self.launch.reports_port:
                self.port = message.port
                self._listening.set()
            elif isinstance(message, protocol.LoadFailed):
                self._load_failure = message
            self.tail.append(text)
            self._lines_since_ready += 1
            self.log.debug("[%s] %s", self.label, text)

    async def _wait_ready(self, proc: asyncio.subprocess.Process, started: float) -> None:
        timeout = self.launch.startup_timeout_s
        delay = 0.02
        while time.monotonic() - started < timeout and proc.returncode is None:
            if self.port is None:  # it has not reported its port yet
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._listening.wait(), delay)
            elif await self._healthy():
                return
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(proc.wait()), delay)
            delay = min(delay * 1.5, 0.25)
        if proc.returncode is None:
            raise UpstreamTimeout(f"the {self.label} did not become ready within "
                                  f"startup_timeout_s = {timeout:g}s")
        if self._reader is not None:  # let the last lines of its log arrive
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 2)
        raise self._load_error(proc.returncode)

    async def _healthy(self) -> bool:
        try:
            async with self.session.get(self.url + self.launch.health_path,
                                        timeout=aiohttp.ClientTimeout(total=2)) as response:
                return response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    def _load_error(self, returncode: int | None) -> ModelLoadFailed:
        if self._load_failure is not None:
            return ModelLoadFailed(self._load_failure.message, code=self._load_failure.code)
        return ModelLoadFailed(f"the {self.label} exited while loading ({describe_exit(returncode)}); "
                               f"its last log lines: {self._last_lines(5)}")

    def _last_lines(self, n: int) -> str:
        return " | ".join(list(self.tail)[-n:]) or "no output"

    # -- dying and stopping ------------------------------------------------------------------

    async def crash_error(self) -> UpstreamError | None:
        """If the worker died, the error its requests get (it is restarted on the next
        ``ensure_ready``); None while it is alive."""
        proc = self._proc
        if proc is None:
            return None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), 0.5)
        if proc.returncode is None:
            return None
        self.last_exit = describe_exit(proc.returncode)
        message = (f"the {self.label} crashed ({self.last_exit}) while handling this request; "
                   "it is restarted for the next request")
        if self._lines_since_ready:
            message += f"; its last log lines: {self._last_lines(min(3, self._lines_since_ready))}"
        return WorkerCrashed(message)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout_s``. A start in progress is ended
        (its callers get an error); the next ``ensure_ready`` starts afresh."""
        if self.state is State.STARTING:
            self._signal(signal.SIGTERM)
        async with self._lock:
            await self._stop_locked()

    async def _stop_locked(self) -> None:
        proc = self._proc
        if proc is not None:
            self.state = State.STOPPING
            if proc.returncode is None:
                self._signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), self.launch.stop_timeout_s)
                except asyncio.TimeoutError:
                    self.log.warning("%s ignored SIGTERM for %gs; killing it", self.label,
                                     self.launch.stop_timeout_s)
                    self._signal(signal.SIGKILL)
                    await proc.wait()
            self._signal(signal.SIGKILL)  # what is left of its process group
            self.last_exit = describe_exit(proc.returncode)
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 1)
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        self._proc = None
        self.state = State.STOPPED

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
