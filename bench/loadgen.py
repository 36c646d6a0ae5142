"""A load generator for OpenAI-compatible endpoints: fixed concurrency, for a fixed time
or a fixed number of requests.

``python -m bench.loadgen --url http://127.0.0.1:8400 --concurrency 16 --duration 5 [--stream]``

Each of ``concurrency`` keep-alive connections sends one request at a time (closed loop).
The client is a bare ``asyncio.Protocol`` (uvloop when installed) with the request bytes
built once, so it costs far less CPU than the proxies it measures. It understands the two
response framings servers use here: ``Content-Length`` and chunked transfer encoding.

Reported: requests/s, latency p50/p90/p99 (ms), errors; for streams also time to first
chunk (first body byte), full-stream time, and the per-chunk lag: for every event the
upstream stamped with its send time (``~<monotonic ns>~``, see ``bench.upstream``), the
time it took to reach the client. A proxy that holds chunks back shows a lag that grows
with the chunk delay, not just a constant added cost.

Throughput counts the requests that complete inside the measuring window (after
``warmup``); latencies are those same requests'.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
import time
from typing import Any
from urllib.parse import urlsplit

_STAMP = re.compile(rb"~(\d+)~")


def request_bytes(host: str, port: int, path: str, body: bytes, auth: str | None = None) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: */*\r\nContent-Length: {len(body)}\r\n"
    )
    if auth:
        head += f"Authorization: Bearer {auth}\r\n"
    return head.encode() + b"\r\n" + body


def chat_body(model: str, stream: bool) -> bytes:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in one short sentence."},
        ],
        "max_tokens": 32,
        "temperature": 0.0,
    }
    if stream:
        payload["stream"] = True
    return json.dumps(payload, separators=(",", ":")).encode()


class Result:
    """One finished request; times are ``time.monotonic_ns()``."""

    __slots__ = ("start", "end", "first", "status", "stamps", "body")

    def __init__(self, start: int) -> None:
        self.start = start
        self.end = 0
        self.first = 0
        self.status = 0
        self.stamps: list[int] = []  # lag in ns of each stamped event
        self.body = bytearray()


class ClientProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, scan_stamps: bool) -> None:
        self.scan_stamps = scan_stamps
        self.transport: asyncio.Transport | None = None
        self.future: asyncio.Future[Result] | None = None
        self.result: Result | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()
        self.in_head = True
        self.length = -1        # Content-Length, -1 when chunked or read-to-close
        self.chunked = False
        self.chunk_left = -1    # bytes of the current chunk still to read (-1: expect a size line)
        self.keep_alive = True
        self.scan_pos = 0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        fut = self.future
        if fut is not None and not fut.done():
            result = self.result
            if result is not None and not self.in_head and self.length < 0 and not self.chunked:
                self._finish()  # a read-to-close body
            else:
                fut.set_exception(ConnectionError(f"connection lost: {exc}"))

    def eof_received(self) -> bool | None:
        return None

    def data_received(self, data: bytes) -> None:
        result = self.result
        if result is None:
            return
        now = time.monotonic_ns()
        buf = self.buf
        buf += data
        if self.in_head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            self.in_head = False
            result.status = int(head[9:12])
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                self.length = int(head[i + 17 : j if j >= 0 else len(head)])
            elif b"\r\ntransfer-encoding: chunked" in head:
                self.chunked = True
            if b"\r\nconnection: close" in head:
                self.keep_alive = False
        if self.chunked:
            self._read_chunked(result, now)
        else:
            if buf:
                if not result.first:
                    result.first = now
                result.body += buf
                del buf[:]
                if self.scan_stamps:
                    self._scan(result, now)
            if self.length >= 0 and len(result.body) >= self.length:
                self._finish()

    # -- parsing -------------------------------------------------------------------------

    def _read_chunked(self, result: Result, now: int) -> None:
        buf = self.buf
        got = False
        while buf:
            if self.chunk_left < 0:
                nl = buf.find(b"\r\n")
                if nl < 0:
                    break
                size = int(bytes(buf[:nl]).split(b";", 1)[0], 16)
                if size == 0:
                    if buf.find(b"\r\n\r\n") < 0:  # the last chunk, then (empty) trailers
                        break
                    del buf[:]
                    if got and self.scan_stamps:
                        self._scan(result, now)
                    self._finish()
                    return
                del buf[: nl + 2]
                self.chunk_left = size
            take = min(self.chunk_left, len(buf))
            if take:
                if not result.first:
                    result.first = now
                result.body += buf[:take]
                del buf[:take]
                self.chunk_left -= take
                got = True
            if self.chunk_left == 0:
                if len(buf) < 2:
                    break
                del buf[:2]
                self.chunk_left = -1
            elif not buf:
                break
        if got and self.scan_stamps:
            self._scan(result, now)

    def _scan(self, result: Result, now: int) -> None:
        body = result.body
        last = -1
        for match in _STAMP.finditer(body, self.scan_pos):
            result.stamps.append(now - int(match.group(1)))
            last = match.end()
        self.scan_pos = max(last, len(body) - 32, self.scan_pos)

    def _finish(self) -> None:
        result = self.result
        fut = self.future
        assert result is not None and fut is not None
        result.end = time.monotonic_ns()
        self.result = None
        keep = self.keep_alive
        self._reset()
        if not keep and self.transport is not None:
            self.transport.close()
            self.closed = True
        if not fut.done():
            fut.set_result(result)

    # -- API -----------------------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[Result]:
        assert self.transport is not None
        self.future = asyncio.get_running_loop().create_future()
        self.result = Result(time.monotonic_ns())
        self.transport.write(data)
        return self.future


@dataclasses.dataclass
class LoadSpec:
    url: str
    concurrency: int = 16
    duration_s: float = 2.0
    warmup_s: float = 0.3
    requests: int | None = None      # a count instead of a duration
    stream: bool = False
    chunks: int = 0                  # expected stamped events per stream (0: don't check)
    model: str = "bench-model"
    path: str = "/v1/chat/completions"
    auth: str | None = None
    timeout_s: float = 60.0
    min_completions: int = 20        # keep the window open until this many fell inside it
    max_extra_s: float = 15.0        # ... but no longer than this past duration_s


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def _ms(ns_values: list[int]) -> list[float]:
    return sorted(v / 1e6 for v in ns_values)


def summarize(results: list[Result], errors: int, window_s: float, spec: LoadSpec,
              error_samples: list[str]) -> dict[str, Any]:
    lat = _ms([r.end - r.start for r in results])
    out: dict[str, Any] = {
        "requests": len(results),
        "errors": errors,
        "window_s": round(window_s, 3),
        "rps": len(results) / window_s if window_s > 0 else 0.0,
        "p50_ms": _percentile(lat, 50),
        "p90_ms": _percentile(lat, 90),
        "p99_ms": _percentile(lat, 99),
        "mean_ms": sum(lat) / len(lat) if lat else None,
    }
    if spec.stream:
        ttfc = _ms([r.first - r.start for r in results if r.first])
        lags = _ms([lag for r in results for lag in r.stamps])
        out.update({
            "ttfc_p50_ms": _percentile(ttfc, 50),
            "ttfc_p90_ms": _percentile(ttfc, 90),
            "ttfc_p99_ms": _percentile(ttfc, 99),
            "stream_p50_ms": out["p50_ms"],
            "stream_p99_ms": out["p99_ms"],
            "chunk_lag_p50_ms": _percentile(lags, 50),
            "chunk_lag_p99_ms": _percentile(lags, 99),
            "chunk_lag_max_ms": lags[-1] if lags else None,
            "chunks_per_stream": (len(lags) / len(results)) if results else None,
        })
    if error_samples:
        out["error_samples"] = error_samples[:5]
    return out


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Run one measurement and return its summary (see the module docstring)."""
    parts = urlsplit(spec.url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = (parts.path.rstrip("/") + spec.path) if parts.path not in ("", "/") else spec.path
    payload = request_bytes(host, port, path, chat_body(spec.model, spec.stream), spec.auth)
    loop = asyncio.get_running_loop()
    results: list[Result] = []
    completed = [0]
    error_samples: list[str] = []
    errors = 0
    started = time.monotonic_ns()
    # The window opens after ``warmup_s`` *and* once ``concurrency`` requests have completed
    # (a slow server's first answers are not its steady state), lasts ``duration_s``, and
    # stays open (up to ``max_extra_s`` more) until ``min_completions`` fell inside it.
    warm_min = started + int(spec.warmup_s * 1e9)
    clock = {"warm_end": 0, "end": 0, "stop": 0}
    hard_stop = warm_min + int((spec.duration_s + spec.max_extra_s) * 1e9)
    in_window = [0]
    remaining = [spec.requests] if spec.requests is not None else None
    expect = b"data: [DONE]" if spec.stream else b'"choices"'

    async def connect() -> ClientProtocol:
        _, proto = await loop.create_connection(lambda: ClientProtocol(spec.stream), host, port)
        return proto

    def should_stop() -> bool:
        if clock["stop"]:
            return True
        now = time.monotonic_ns()
        if (clock["end"] and now >= clock["end"] and in_window[0] >= spec.min_completions) or now >= hard_stop:
            clock["stop"] = now
            return True
        return False

    async def worker() -> None:
        nonlocal errors
        proto: ClientProtocol | None = None
        while True:
            if remaining is not None:
                if remaining[0] <= 0:
                    break
                remaining[0] -= 1
            elif should_stop():
                break
            try:
                if proto is None or proto.closed:
                    proto = await connect()
                result = await asyncio.wait_for(proto.send(payload), spec.timeout_s)
            except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
                errors += 1
                if len(error_samples) < 5:
                    error_samples.append(f"{type(exc).__name__}: {exc}")
                if proto is not None and proto.transport is not None:
                    proto.transport.close()
                proto = None
                await asyncio.sleep(0.01)
                continue
            ok = result.status == 200 and expect in result.body
            if ok and spec.stream and spec.chunks and len(result.stamps) < spec.chunks:
                ok = False
            if not ok:
                errors += 1
                if len(error_samples) < 5:
                    error_samples.append(f"HTTP {result.status}: {bytes(result.body[:200])!r}")
                continue
            completed[0] += 1
            result.body = bytearray()  # keep memory flat; only timings are needed
            if remaining is not None:
                results.append(result)
                continue
            if not clock["warm_end"]:
                if result.end >= warm_min and completed[0] >= spec.concurrency:
                    clock["warm_end"] = result.end
                    clock["end"] = result.end + int(spec.duration_s * 1e9)
                continue
            if not clock["stop"] or result.end <= clock["stop"]:
                results.append(result)
                in_window[0] += 1
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    if remaining is not None:
        window = (time.monotonic_ns() - started) / 1e9
    else:
        window = (clock["stop"] - clock["warm_end"]) / 1e9 if clock["warm_end"] else 0.0
    summary = summarize(results, errors, window, spec, error_samples)
    summary["completed_total"] = completed[0]  # including warm-up (for CPU per request)
    return summary


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def measure(spec: LoadSpec) -> dict[str, Any]:
    """Run ``run_load`` on a fresh (uvloop) event loop; for use from synchronous code."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(run_load(spec))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8400")
    parser.add_argument("--concurrency", "-c", type=int, default=16)
    parser.add_argument("--duration", "-d", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds not measured first")
    parser.add_argument("--requests", "-n", type=int, help="a request count instead of a duration")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--api-key")
    args = parser.parse_args(argv)
    spec = LoadSpec(url=args.url, concurrency=args.concurrency, duration_s=args.duration,
                    warmup_s=args.warmup, requests=args.requests, stream=args.stream,
                    model=args.model, path=args.path, auth=args.api_key)
    print(json.dumps(measure(spec), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
