"""Tracing: with OTEL_EXPORTER_OTLP_ENDPOINT set, each request is a span with gen_ai.*
attributes and a child span per backend attempt, received by an OTLP/HTTP receiver the
test runs on 127.0.0.1 (decoded with OpenTelemetry's own protobuf classes)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from router.testing import FakeUpstream, free_port, router_client

KEY = "tracing-key-0123456789abc"
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces with protobuf bodies."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            self.resources.append({a.key: _value(a.value) for a in resource_spans.resource.attributes})
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append({"name": span.name, "trace_id": span.trace_id.hex(),
                                       "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                                       "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                                       "status": span.status.code,
                                       "attributes": {a.key: _value(a.value) for a in span.attributes}})
        return web.Response(content_type="application/x-protobuf", body=b"")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


async def run_router(receiver: Receiver, monkeypatch: Any, ups: list[FakeUpstream], requests: list[dict[str, Any]],
                     roots: int) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
    monkeypatch.setenv("SERVICE_NAME", "router-under-test")
    cfg = {"auth": {"keys": [{"name": "team-a", "key": KEY}]}, "routing": {"strategy": "round_robin"},
           "backends": [{"name": u.name, "provider": "openai_compatible", "base_url": u.url} for u in ups]}
    async with router_client(cfg) as client:
        for body in requests:
            await (await client.post("/v1/chat/completions", json=body, headers={"x-api-key": KEY})).read()
    # Leaving the router flushes the spans it still holds.
    for _ in range(100):
        if len([s for s in receiver.spans if not s["parent"]]) >= roots:
            break
        await asyncio.sleep(0.05)


async def test_a_span_per_request_with_gen_ai_attributes(monkeypatch):
    receiver = await Receiver().start()
    good = await FakeUpstream("good").start()
    try:
        await run_router(receiver, monkeypatch, [good], [CHAT, CHAT, {**CHAT, "model": "nope"}], roots=3)
    finally:
        await receiver.stop()
        await good.stop()
    assert receiver.resources[0]["service.name"] == "router-under-test"
    roots = [s for s in receiver.spans if not s["parent"]]
    assert len(roots) == 3
    ok = [s for s in roots if s["attributes"]["http.response.status_code"] == 200]
    assert len(ok) == 2
    for span in ok:
        a = span["attributes"]
        assert span["name"] == "chat test-model"
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "test-model"
        assert a["gen_ai.response.model"] == "test-model" and a["gen_ai.system"] == "openai_compatible"
        assert a["gen_ai.usage.input_tokens"] == 5 and a["gen_ai.usage.output_tokens"] == 4
        assert a["router.backend"] == "good" and a["router.key"] == "team-a"
        assert span["end"] >= span["start"] > 0
        (child,) = [s for s in receiver.spans if s["parent"] == span["span_id"]]
        assert child["name"] == "attempt good" and child["trace_id"] == span["trace_id"]
        assert span["start"] <= child["start"] <= child["end"] <= span["end"]
    (missing,) = [s for s in roots if s["attributes"]["http.response.status_code"] == 404]
    assert missing["attributes"]["error.type"] == "model_not_found"
    assert not [s for s in receiver.spans if s["parent"] == missing["span_id"]]  # no backend was tried
    assert KEY not in repr(receiver.spans)


async def test_failed_backend_attempts_are_child_spans(monkeypatch):
    receiver = await Receiver().start()
    good = await FakeUpstream("good").start()
    bad = await FakeUpstream("bad").start()
    bad.behaviour.fail_status = 503
    try:
        await run_router(receiver, monkeypatch, [bad, good], [CHAT, CHAT], roots=2)
    finally:
        await receiver.stop()
        await good.stop()
        await bad.stop()
    roots = [s for s in receiver.spans if not s["parent"]]
    assert [s["attributes"]["router.backend"] for s in roots] == ["good", "good"]
    # Round robin sent requests to the failing backend first: their attempt spans say so.
    failed = [s for s in receiver.spans if s["parent"] and s["attributes"].get("error.type")]
    assert failed and {s["attributes"]["router.backend"] for s in failed} == {"bad"}
    assert all(s["status"] == 2 for s in failed)  # STATUS_CODE_ERROR
    for span in failed:  # a failed attempt ends before the one that answered starts
        (parent,) = [s for s in roots if s["span_id"] == span["parent"]]
        (answered,) = [s for s in receiver.spans if s["parent"] == parent["span_id"] and s not in failed]
        assert parent["start"] <= span["start"] <= span["end"] <= answered["start"] <= answered["end"]
