"""The soak: thousands of requests, streamed and not, against three backends that fail at
random (resets, 5xx, stalls, cut streams, streams without their end, a backend killed and
restarted), while at least one backend stays healthy at any moment.

    python -m bench.soak [--requests 3000] [--concurrency 32] [--seed 1]

Afterwards every client request must have either succeeded (a whole answer, or a stream
that ended with ``data: [DONE]`` and no error) or got a clear OpenAI error (an error
envelope, or an error event before ``[DONE]``): none hung, none was cut silently, no 5xx
made by the router itself, RSS flat, no leaked connections, tasks or file descriptors.
The router runs in-process (so its tasks and connections can be counted), in a loop of
its own; the upstreams run in another; the load in a third.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import yaml

from router.testing import BackgroundLoop, Behaviour, FakeUpstream, RouterServer

FAULTS = ("reset", "503", "stall", "cut", "no_done", "kill")
HI = [{"role": "user", "content": "hi"}]


@dataclasses.dataclass
class SoakReport:
    requests: int = 0
    ok: int = 0
    clear_errors: dict[str, int] = dataclasses.field(default_factory=dict)
    hung: int = 0
    cut_silently: int = 0
    router_5xx: int = 0
    faults_injected: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    rss_mib_start: float = 0.0
    rss_mib_end: float = 0.0
    tasks_start: int = 0
    tasks_end: int = 0
    connections_end: int = 0
    upstream_connections_in_use: int = 0
    backend_pending: int = 0
    fds_start: int = 0
    fds_end: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def error(self, kind: str) -> None:
        self.clear_errors[kind] = self.clear_errors.get(kind, 0) + 1


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def healthy() -> Behaviour:
    """A healthy backend that takes a little time, so faults meet requests in flight."""
    return Behaviour(delay_s=0.01, chunk_delay_s=0.003, chunks=5)


class Chaos:
    """Flips the upstreams between healthy and a random fault. One of them, the anchor,
    stays healthy; the anchor moves every ``ANCHOR_S``, and a new anchor is healed
    ``HANDOVER_S`` before the old one may fail, long enough for the router to see it
    (health checks every 0.5 s, circuits cool for 0.5 s). So a healthy backend exists,
    as the router can know it, at every moment."""

    ANCHOR_S = 2.0
    HANDOVER_S = 1.5

    def __init__(self, upstreams: list[FakeUpstream], rng: random.Random, report: SoakReport) -> None:
        self.upstreams = upstreams
        self.rng = rng
        self.report = report
        self.protected = {upstreams[0].name}
        self.stopped = False

    async def run(self) -> None:
        await asyncio.gather(self._faults(), self._rotate())

    async def _rotate(self) -> None:
        names = [u.name for u in self.upstreams]
        anchor = names[0]
        while not self.stopped:
            await asyncio.sleep(self.ANCHOR_S)
            incoming = self.rng.choice([n for n in names if n != anchor])
            self.protected.add(incoming)
            self._by_name(incoming).behaviour = healthy()
            await asyncio.sleep(self.HANDOVER_S)
            self.protected.discard(anchor)
            anchor = incoming

    def _by_name(self, name: str) -> FakeUpstream:
        return next(u for u in self.upstreams if u.name == name)

    async def _faults(self) -> None:
        while not self.stopped:
            await asyncio.sleep(self.rng.uniform(0.02, 0.15))
            upstream = self.rng.choice([u for u in self.upstreams if u.name not in self.protected] or [None])
            if upstream is None:
                continue
            if self.rng.random() < 0.3:
                upstream.behaviour = healthy()
            else:
                await self.inject(upstream, self.rng.choice(FAULTS))

    async def inject(self, upstream: FakeUpstream, fault: str) -> None:
        self.report.faults_injected[fault] = self.report.faults_injected.get(fault, 0) + 1
        if fault == "kill":
            port = upstream.port
            await upstream.kill()
            await asyncio.sleep(self.rng.uniform(0.1, 0.4))
            await upstream.start(port)
            return
        behaviour = healthy()
        if fault == "reset":
            behaviour.reset = True
        elif fault == "503":
            behaviour.fail_status = 503
        elif fault == "stall":
            behaviour.delay_s = 5.0  # beyond first_byte_timeout_s
        elif fault == "cut":
            behaviour.die_after_chunks = 1
        elif fault == "no_done":
            behaviour.omit_done = behaviour.omit_finish = True
        upstream.behaviour = behaviour

    async def heal(self) -> None:
        self.stopped = True
        for upstream in self.upstreams:
            upstream.behaviour = healthy()


async def one_request(session: aiohttp.ClientSession, url: str, stream: bool, report: SoakReport) -> None:
    body = {"model": "test-model", "messages": HI, "stream": stream}
    try:
        async with asyncio.timeout(30):
            async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
                raw = await resp.read()
                from_backend = "X-Router-Backend" in resp.headers
                if resp.status != 200:
                    error = json.loads(raw)["error"]  # a clear error has OpenAI's envelope
                    if resp.status >= 500 and not from_backend:
                        report.router_5xx += 1
                        report.problems.append(f"router {resp.status}: {error.get('message')}")
                    report.error(f"{resp.status} {error.get('code')}")
                    return
                if not stream:
                    json.loads(raw)["choices"][0]["message"]
                    report.ok += 1
                    return
                events = [e for e in raw.split(b"\n\n") if e.strip()]
                if not events or events[-1] != b"data: [DONE]":
                    report.cut_silently += 1
                    report.problems.append(f"stream without [DONE]: ...{raw[-120:]!r}")
                    return
                errors = [e for e in events if e.startswith(b'data: {"error"')]
                if errors:
                    report.error("stream " + str(json.loads(errors[-1][6:])["error"].get("code")))
                else:
                    report.ok += 1
    except TimeoutError:
        report.hung += 1
    except (aiohttp.ClientError, ValueError, KeyError) as exc:
        report.problems.append(f"client saw {type(exc).__name__}: {exc}")


async def load(url: str, requests: int, concurrency: int, rng: random.Random, report: SoakReport) -> None:
    queue = iter(range(requests))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            for _ in queue:
                report.requests += 1
                await one_request(session, url, rng.random() < 0.5, report)
        await asyncio.gather(*(worker() for _ in range(concurrency)))


def run_soak(requests: int = 3000, concurrency: int = 32, seed: int = 1) -> SoakReport:
    rng = random.Random(seed)
    report = SoakReport()
    upstream_loop, router_loop = BackgroundLoop(), BackgroundLoop()
    upstreams = [upstream_loop.start_upstream(name) for name in ("a", "b", "c")]
    for upstream in upstreams:
        upstream.record = False
        upstream.behaviour = healthy()
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    config = {
        "routing": {"retries": 2, "health_check_interval_s": 0.5, "discovery_interval_s": 5},
        "circuit_breaker": {"failure_threshold": 3, "cooldown_s": 0.5},
        "backends": [{"name": u.name, "provider": "openai_compatible", "base_url": u.url,
                      "first_byte_timeout_s": 1.0, "read_timeout_s": 1.0} for u in upstreams],
    }
    (workdir / "soak.yaml").write_text(yaml.safe_dump(config))
    router = RouterServer(workdir / "soak.yaml", router_loop).start()
    # One log line per request, kept by the test's log capture, would read as a leak.
    request_log = logging.getLogger("router.requests")
    request_log_level = request_log.level
    request_log.setLevel(logging.WARNING)
    try:
        # Warm-up, healthy: pools and caches fill, then the baseline is taken.
        asyncio.run(load(router.url, 200, concurrency, rng, SoakReport()))
        gc.collect()
        report.rss_mib_start, report.fds_start = rss_mib(), open_fds()
        report.tasks_start = _settled_tasks(router_loop)
        chaos = Chaos(upstreams, rng, report)
        chaos_task = asyncio.run_coroutine_threadsafe(chaos.run(), upstream_loop.loop)
        started = time.monotonic()
        asyncio.run(load(router.url, requests, concurrency, rng, report))
        report.seconds = time.monotonic() - started
        upstream_loop.run(chaos.heal())
        chaos_task.result(10)
        time.sleep(1.5)  # let circuits close, lingering connections end
        gc.collect()
        report.rss_mib_end, report.fds_end = rss_mib(), open_fds()
        report.tasks_end = _settled_tasks(router_loop)
        report.connections_end = router_loop.run(_connections(router))
        report.upstream_connections_in_use, report.backend_pending = _settled_in_use(router_loop, router)
    finally:
        request_log.setLevel(request_log_level)
        router.stop()
        for upstream in upstreams:
            upstream_loop.run(upstream.stop())
        upstream_loop.close()
        router_loop.close()
    return report


T = TypeVar("T")


def _settled_tasks(loop: BackgroundLoop) -> int:
    """The router's tasks that persist: the fewest of a few samples 0.2 s apart (a health
    check in progress has short-lived child tasks; they are not leaks)."""
    return min(_samples(lambda: len(loop.run(_tasks()))))


def _samples(take: Callable[[], T], n: int = 5, every_s: float = 0.2) -> list[T]:
    """``n`` readings ``every_s`` apart: what persists is in the fewest of them, what is
    in flight for a moment is not."""
    out = []
    for _ in range(n):
        out.append(take())
        time.sleep(every_s)
    return out


async def _tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current}


async def _connections(router: RouterServer) -> int:
    runner = router._runner
    server = runner.server if runner is not None else None
    return len(server.connections) if server is not None else 0


def _settled_in_use(loop: BackgroundLoop, router: RouterServer) -> tuple[int, int]:
    """The fewest connections in use and requests pending over a few samples 0.2 s apart: a
    round of health checks (one connection per backend, every 0.5 s here) is in flight for a
    moment, on a slow machine long enough to be sampled; a leak is there in every sample."""
    samples = _samples(lambda: loop.run(_in_use(router)))
    return min(in_use for in_use, _ in samples), min(pending for _, pending in samples)


async def _in_use(router: RouterServer) -> tuple[int, int]:
    """Upstream connections checked out of the backends' pools, and requests the backends
    still count as in flight or queued: both must be 0 once the load is over."""
    from router.web.middlewares import STATE

    runner = router._runner
    assert runner is not None
    state = runner.app[STATE]
    in_use = pending = 0
    for backend in state.backends.backends.values():
        session = getattr(backend.provider, "session", None)
        connector = getattr(session, "connector", None)
        in_use += len(getattr(connector, "_acquired", ()))  # aiohttp has no public count
        pending += backend.pending + backend.in_flight
    return in_use, pending


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    report = run_soak(args.requests, args.concurrency, args.seed)
    print(json.dumps(dataclasses.asdict(report), indent=2))
    return 1 if verdict(report) else 0


def verdict(report: SoakReport) -> list[str]:
    """What went wrong (empty: the soak passed)."""
    bad = [f"{report.hung} requests hung"] if report.hung else []
    if report.cut_silently:
        bad.append(f"{report.cut_silently} streams cut silently")
    if report.router_5xx:
        bad.append(f"{report.router_5xx} 5xx answers made by the router")
    if report.ok + sum(report.clear_errors.values()) != report.requests:
        bad.append("some requests ended neither in success nor in a clear error")
    if report.tasks_end > report.tasks_start:
        bad.append(f"tasks grew from {report.tasks_start} to {report.tasks_end}")
    if report.connections_end or report.upstream_connections_in_use or report.backend_pending:
        bad.append(f"leaked: {report.connections_end} client connections, "
                   f"{report.upstream_connections_in_use} upstream connections in use, "
                   f"{report.backend_pending} requests still counted by backends")
    if report.rss_mib_end - report.rss_mib_start > 10:
        bad.append(f"RSS grew {report.rss_mib_end - report.rss_mib_start:.1f} MiB")
    return bad + report.problems[:10]


if __name__ == "__main__":
    sys.exit(main())
