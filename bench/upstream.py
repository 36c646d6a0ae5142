"""A cheap OpenAI-compatible upstream for benchmarks: ``python -m bench.upstream --port P``.

It is a bare ``asyncio.Protocol`` HTTP/1.1 server (uvloop when installed) that records
nothing and checks nothing, so that it costs as little as possible and the proxy under
test is what gets measured. Non-streaming answers are one precomputed chat completion;
streaming answers are ``--chunks`` SSE events ``--chunk-delay-ms`` apart (chunked
transfer encoding, one HTTP chunk per event), then a finish event and ``[DONE]``.

Each streamed event carries the moment it was sent (``time.monotonic_ns()``, which is
system-wide on Linux) inside its content as ``~<ns>~``: the load generator reads it on
arrival to tell whether a proxy held any chunk back. It sits in the content (not in an
extra field) so that proxies which re-encode chunks, like LiteLLM, keep it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time

MODEL = "bench-model"
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')

_COMPLETION = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello! This is a fixed answer from the benchmark upstream."},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":12,'
    b'"total_tokens":24}}'
)
_MODELS = (
    b'{"object":"list","data":[{"id":"bench-model","object":"model","created":1700000000,'
    b'"owned_by":"bench"}]}'
)
_HEALTH = b'{"status":"ok"}'

_CHUNK_HEAD = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench-model","choices":[{"index":0,"delta":{'
)
_CHUNK_TAIL = b'"},"finish_reason":null}]}\n\n'
_FINAL = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench-model","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def _fixed(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )


_OK_COMPLETION = _fixed(b"200 OK", _COMPLETION)
_OK_MODELS = _fixed(b"200 OK", _MODELS)
_OK_HEALTH = _fixed(b"200 OK", _HEALTH)
_NOT_FOUND = _fixed(b"404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def stream_event(index: int) -> bytes:
    """One SSE event stamped with the time it is sent."""
    role = b'"role":"assistant",' if index == 0 else b""
    return _CHUNK_HEAD + role + b'"content":"~%d~ ' % time.monotonic_ns() + _CHUNK_TAIL


class UpstreamProtocol(asyncio.Protocol):
    chunks = 20
    chunk_delay_s = 0.001

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.close_after = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._handle()

    def _handle(self) -> None:
        while not self.busy and self.transport is not None:
            buf = self.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            start = end + 4
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17 : j if j >= 0 else len(head)])
                if len(buf) < start + length:
                    return
                body = bytes(buf[start : start + length])
                del buf[: start + length]
            elif b"\r\ntransfer-encoding: chunked" in head:
                k = buf.find(b"\r\n0\r\n\r\n", start - 2)
                if k < 0:
                    return
                body = bytes(buf[start:k])  # still framed; only searched for "stream"
                del buf[: k + 7]
            else:
                body = b""
                del buf[:start]
            self.close_after = b"\r\nconnection: close" in head
            self._respond(head[: head.find(b"\r\n")], body)

    def _respond(self, request_line: bytes, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        method, _, rest = request_line.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method == b"post" and path.endswith(b"/completions"):
            if _STREAM_TRUE.search(body):
                self._start_stream()
                return
            transport.write(_OK_COMPLETION)
        elif method == b"get" and path.endswith(b"/models"):
            transport.write(_OK_MODELS)
        elif method == b"get" and b"health" in path:
            transport.write(_OK_HEALTH)
        else:
            transport.write(_NOT_FOUND)
        self._done()

    def _done(self) -> None:
        if self.close_after and self.transport is not None:
            self.transport.close()

    def _start_stream(self) -> None:
        self.busy = True
        assert self.transport is not None
        if self.chunk_delay_s <= 0:
            parts = [_STREAM_HEAD]
            parts += [_http_chunk(stream_event(i)) for i in range(self.chunks)]
            parts.append(_http_chunk(_FINAL) + b"0\r\n\r\n")
            self.transport.write(b"".join(parts))
            self._end_stream()
            return
        self.transport.write(_STREAM_HEAD + _http_chunk(stream_event(0)))
        self._next(1)

    def _next(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.chunk_delay_s, self._send_chunk, index)

    def _send_chunk(self, index: int) -> None:
        self.timer = None
        if self.transport is None:
            return
        if index < self.chunks:
            self.transport.write(_http_chunk(stream_event(index)))
            self._next(index + 1)
            return
        self.transport.write(_http_chunk(_FINAL) + b"0\r\n\r\n")
        self._end_stream()

    def _end_stream(self) -> None:
        self.busy = False
        self._done()
        if self.buf:
            self._handle()


async def serve(host: str, port: int, chunks: int, chunk_delay_ms: float) -> None:
    UpstreamProtocol.chunks = chunks
    UpstreamProtocol.chunk_delay_s = chunk_delay_ms / 1000.0
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"Upstream listening on http://{host}:{bound}", flush=True)
    async with server:
        await server.serve_forever()


def run_loop(coro: object) -> None:
    """Run ``coro`` on uvloop when installed (as the router does), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=20, help="content events per stream")
    parser.add_argument("--chunk-delay-ms", type=float, default=1.0, help="delay between events")
    args = parser.parse_args(argv)
    try:
        run_loop(serve(args.host, args.port, args.chunks, args.chunk_delay_ms))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
