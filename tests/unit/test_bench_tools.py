"""The benchmark's own tools count what they see (no timings are asserted)."""

from __future__ import annotations

import asyncio

from bench.loadgen import LoadSpec, run_load
from bench.upstream import UpstreamProtocol


class QuickStreams(UpstreamProtocol):
    chunks = 3
    chunk_delay_s = 0.0


class SpacedStreams(UpstreamProtocol):
    chunks = 3
    chunk_delay_s = 0.001


async def _serve(protocol: type[UpstreamProtocol]) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_loadgen_counts_requests_and_stream_chunks() -> None:
    for protocol in (QuickStreams, SpacedStreams):
        server, url = await _serve(protocol)
        try:
            plain = await run_load(LoadSpec(url=url, concurrency=4, requests=50))
            assert plain["requests"] == 50
            assert plain["errors"] == 0
            stream = await run_load(LoadSpec(url=url, concurrency=2, requests=10, stream=True, chunks=3))
            assert stream["requests"] == 10
            assert stream["errors"] == 0
            assert stream["chunks_per_stream"] == 3
            assert stream["ttfc_p50_ms"] is not None
        finally:
            server.close()
            await server.wait_closed()


async def test_loadgen_counts_errors() -> None:
    server, url = await _serve(QuickStreams)
    try:
        result = await run_load(LoadSpec(url=url, concurrency=2, requests=6, path="/v1/nowhere"))
        assert result["requests"] == 0
        assert result["errors"] == 6
        assert "HTTP 404" in result["error_samples"][0]
    finally:
        server.close()
        await server.wait_closed()


async def test_loadgen_duration_mode_measures_a_window() -> None:
    server, url = await _serve(QuickStreams)
    try:
        result = await run_load(LoadSpec(url=url, concurrency=2, duration_s=0.2, warmup_s=0.05))
        assert result["errors"] == 0
        assert result["requests"] >= 20  # min_completions keeps the window open until then
        assert result["completed_total"] >= result["requests"]
    finally:
        server.close()
        await server.wait_closed()
