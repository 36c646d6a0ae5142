"""What the router records about each finished request: one structured log line
(``server.log_format``: ``json`` or ``pretty``) and the request metrics behind ``/metrics``.

Both run once per request, when it has finished (streams included), from what the request
already carries: its identity's name, model, backend, status, latency, time to first
token and the answer's usage (parsed only here, from the bytes the relay kept by
reference). Prompts and answers are logged only with ``server.log_payloads: true``. The
metrics are prometheus-client objects in the app's own registry (``metrics`` extra); with
prometheus-client missing, only the log line is written.

With ``server.otlp_endpoint`` (``OTEL_EXPORTER_OTLP_ENDPOINT``; the ``otel`` extra), each
request is also a trace: a span with ``gen_ai.*`` attributes and a child span per backend
attempt, exported over OTLP/HTTP (``Tracing``), the service named by ``server.service_name``
(``SERVICE_NAME``).

Series (names from the OpenTelemetry GenAI conventions where they exist):

    gen_ai_server_request_duration_seconds    histogram  model, backend, status, key
    gen_ai_server_time_to_first_token_seconds histogram  model, backend, key (streams)
    gen_ai_client_token_usage                 histogram  model, backend, key, token_type
    router_model_requests_total               counter    model, backend, status, key
    router_tokens_total                       counter    model, backend, key, token_type
    router_rate_limited_total                 counter    key
    router_failovers_total                    counter    model, backend
    router_requests_in_flight                 gauge
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import TYPE_CHECKING, Any

from router import jsonlib
from router.config.loader import ConfigError
from router.config.schema import ServerConfig
from router.identity import Identity
from router.request import ProxyRequest

if TYPE_CHECKING:
    from router.routing.backend import Backend

log = logging.getLogger("router.requests")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


def key_name(request: ProxyRequest) -> str:
    identity = request.identity
    if isinstance(identity, Identity) and identity.name:
        return identity.name
    return "" if identity is None else type(identity).__name__


class RequestMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.duration = Histogram("gen_ai_server_request_duration_seconds",
                                  "Seconds from a request's receipt to the end of its answer.",
                                  ["model", "backend", "status", "key"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram("gen_ai_server_time_to_first_token_seconds",
                              "Seconds from a streamed request's receipt to its first byte.",
                              ["model", "backend", "key"], buckets=DURATION_BUCKETS, registry=r)
        self.token_usage = Histogram("gen_ai_client_token_usage", "Tokens per request, by type (input, output).",
                                     ["model", "backend", "key", "token_type"], buckets=TOKEN_BUCKETS, registry=r)
        self.requests = Counter("router_model_requests", "Requests by model, backend, status and key name.",
                                ["model", "backend", "status", "key"], registry=r)
        self.tokens = Counter("router_tokens", "Tokens by model, backend, key name and type (input, output).",
                              ["model", "backend", "key", "token_type"], registry=r)
        self.rate_limited = Counter("router_rate_limited", "Requests refused for a key's rpm/tpm.",
                                    ["key"], registry=r)
        self.in_flight = Gauge("router_requests_in_flight", "Client requests being answered now.", registry=r)
        self.failovers = Counter("router_failovers", "Requests answered by a backend after another failed them.",
                                 ["model", "backend"], registry=r)

        # The labelled children, cached per (model, backend, status, key): one dict lookup
        # per request instead of a labels() call per series.
        self._children: dict[tuple[str, str, int, str], tuple[Any, ...]] = {}
        self._token_children: dict[tuple[str, str, str], tuple[Any, ...]] = {}

    def _for(self, model: str, backend: str, status: int, key: str) -> tuple[Any, ...]:
        children = self._children.get((model, backend, status, key))
        if children is None:
            code = str(status)
            children = (self.duration.labels(model, backend, code, key), self.requests.labels(model, backend, code, key),
                        self.ttft.labels(model, backend, key))
            if len(self._children) < 10_000:  # client-chosen model names: bound the cache, not the series
                self._children[(model, backend, status, key)] = children
        return children

    def _tokens(self, model: str, backend: str, key: str) -> tuple[Any, ...]:
        children = self._token_children.get((model, backend, key))
        if children is None:
            children = tuple(series.labels(model, backend, key, kind) for kind in ("input", "output")
                             for series in (self.token_usage, self.tokens))
            if len(self._token_children) < 10_000:
                self._token_children[(model, backend, key)] = children
        return children

    def record(self, request: ProxyRequest, backend: str, status: int, elapsed_s: float, key: str,
               usage: dict[str, int] | None) -> None:
        model = request.model
        duration, requests, ttft = self._for(model, backend, status, key)
        duration.observe(elapsed_s)
        requests.inc()
        if request.stream and request.first_byte_at is not None and status < 400:
            ttft.observe(request.first_byte_at - request.started)
        if usage:
            usage_in, tokens_in, usage_out, tokens_out = self._tokens(model, backend, key)
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if prompt is not None:
                usage_in.observe(prompt)
                tokens_in.inc(prompt)
            if completion is not None:
                usage_out.observe(completion)
                tokens_out.inc(completion)
        if request.error_code == "rate_limit_exceeded":
            self.rate_limited.labels(key).inc()
        attempts = request.attempts
        if len(attempts) > 1 and status < 400 and backend:
            self.failovers.labels(model, backend).inc()


OPERATIONS = {"chat/completions": "chat", "completions": "text_completion", "embeddings": "embeddings"}


class Tracing:
    """OpenTelemetry spans (``server.otlp_endpoint``, the ``otel`` extra): one per request
    with ``gen_ai.*`` attributes, and one child span per backend attempt. Spans are made
    when the request has finished, with the times it recorded, and exported in batches by
    the SDK's own thread, so a request never waits on the collector."""

    def __init__(self, endpoint: str, service_name: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url), schedule_delay_millis=1000))
        self.tracer = self.provider.get_tracer("router")
        # Monotonic times (what requests record) -> the wall clock, in nanoseconds.
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def _ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._offset_ns

    def record(self, request: ProxyRequest, backend: Backend | None, status: int, elapsed_s: float, key: str,
               usage: dict[str, int] | None) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        operation = OPERATIONS.get(request.endpoint, request.endpoint)
        start = self._ns(request.started)
        end = self._ns(request.started + elapsed_s)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": request.model,
            "http.response.status_code": status,
            "router.request_id": request.request_id,
            "router.stream": request.stream,
        }
        if backend is not None:
            attributes["gen_ai.system"] = backend.config.provider
            attributes["gen_ai.response.model"] = backend.config.aliases.get(request.target_model,
                                                                                request.target_model)
            attributes["router.backend"] = backend.name
        if key:
            attributes["router.key"] = key
        if usage:
            for name, field in (("gen_ai.usage.input_tokens", "prompt_tokens"),
                                ("gen_ai.usage.output_tokens", "completion_tokens")):
                if field in usage:
                    attributes[name] = usage[field]
        if request.error_code:
            attributes["error.type"] = request.error_code
        span = self.tracer.start_span(f"{operation} {request.model}".strip(), kind=SpanKind.SERVER,
                                      start_time=start, attributes=attributes)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, request.error_code or str(status)))
        context = trace.set_span_in_context(span)
        # The backend attempts, in order ("name" answered, "name=code" failed), each from
        # the end of the one before (or the request's start) to when it was settled.
        attempts = list(request.attempts) or ([backend.name] if backend is not None else [])
        ended = list(getattr(request.attempts, "ended", []))
        previous = start
        for i, attempt in enumerate(attempts):
            name, _, failure = attempt.partition("=")
            name = name.split(" ")[0]
            until = self._ns(ended[i]) if i < len(ended) else (
                self._ns(request.first_byte_at) if request.first_byte_at is not None else end)
            child = self.tracer.start_span(f"attempt {name}", context=context, kind=SpanKind.CLIENT,
                                           start_time=previous, attributes={"router.backend": name})
            if "(continuation)" in attempt:
                child.set_attribute("router.continuation", True)
            if failure:
                child.set_attribute("error.type", failure.split(" ")[0])
                child.set_status(Status(StatusCode.ERROR, failure))
            child.end(end_time=max(previous, until))
            previous = max(previous, until)
        span.end(end_time=end)

    def close(self) -> None:
        self.provider.shutdown()  # flushes what is left


class Telemetry:
    """One per app: the request log, the request metrics and (with an OTLP endpoint) traces."""

    def __init__(self, server: ServerConfig, file: str = "") -> None:
        self.payloads = server.log_payloads
        try:
            self.metrics: RequestMetrics | None = RequestMetrics()
        except ImportError:
            self.metrics = None
        self.tracing: Tracing | None = None
        if server.otlp_endpoint:
            try:
                self.tracing = Tracing(server.otlp_endpoint, server.service_name)
            except ImportError as exc:
                raise ConfigError(file, "server.otlp_endpoint", None,
                                  "tracing needs OpenTelemetry: pip install '.[otel]'") from exc

    def close(self) -> None:
        if self.tracing is not None:
            self.tracing.close()

    def started(self) -> None:
        if self.metrics is not None:
            self.metrics.in_flight.inc()

    def finished(self, request: ProxyRequest, backend: Backend | None, status: int, elapsed_s: float) -> None:
        metrics = self.metrics
        logging_on = log.isEnabledFor(logging.INFO)
        identity = request.identity if isinstance(request.identity, Identity) else None
        if metrics is None and not logging_on and self.tracing is None and identity is None:
            return
        key = key_name(request)
        wanted = metrics is not None or logging_on or self.tracing is not None or (
            identity is not None and identity.wants_usage)
        usage = request.usage() if status < 400 and wanted else None
        if identity is not None:
            identity.answered(status, usage)
        backend_name = backend.name if backend is not None else None
        if metrics is not None:
            metrics.in_flight.dec()
            metrics.record(request, backend_name or "", status, elapsed_s, key, usage)
        if self.tracing is not None:
            self.tracing.record(request, backend, status, elapsed_s, key, usage)
        if logging_on:
            fields: dict[str, Any] = {
                "request_id": request.request_id, "endpoint": request.endpoint, "key": key or None,
                "model": request.model or None, "backend": backend_name, "status": status,
                "stream": request.stream, "latency_ms": round(elapsed_s * 1000, 2),
                "ttft_ms": None if request.ttft_s is None else round(request.ttft_s * 1000, 2),
                "prompt_tokens": usage.get("prompt_tokens") if usage else None,
                "completion_tokens": usage.get("completion_tokens") if usage else None,
            }
            if request.error_code:
                fields["error"] = request.error_code
            if self.payloads:
                fields["request_body"] = request.payload or None
                raw = request.usage_raw
                if raw and not request.stream:
                    fields["response_body"] = raw.decode("utf-8", "replace")
            log.info("%s", _Pretty(fields), extra={"fields": fields})


class _Pretty:
    """The pretty line, formatted only if a handler writes it as text (not for json)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return _pretty(self.fields)


def _pretty(fields: dict[str, Any]) -> str:
    head = f"{fields['endpoint']} {fields['status']} {fields['latency_ms']}ms"
    rest = " ".join(f"{k}={v}" for k, v in fields.items()
                    if k not in ("endpoint", "status", "latency_ms") and v is not None
                    and k not in ("request_body", "response_body"))
    tail = "".join(f" {k}={jsonlib.dumps(fields[k]).decode()}" for k in ("request_body", "response_body")
                   if fields.get(k) is not None)
    return f"{head} {rest}{tail}"


class JSONFormatter(logging.Formatter):
    """Every log record as one JSON object; a request line's fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return jsonlib.dumps(out).decode()


def setup_logging(level: str, log_format: str) -> None:
    """The router's logging: ``pretty`` lines or ``json`` objects on stderr."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
