"""The shape of config.yaml: typed dataclasses, one per section, with checked bounds.

``setting(default, ...)`` declares a field whose value the loader checks (with file, key
and line in the message). ``flatten()`` and ``overrides_of()`` let a provider declare a
group of keys once and accept it both as backend-level defaults and as per-model
overrides (see ``plugins.gguf``). Nothing here reads files; ``router.config.loader`` does.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path
from typing import Any


def setting(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, choices: tuple[str, ...] | None = None,
            length: int | None = None, help: str | None = None) -> Any:  # noqa: A002 - argparse's name for it
    """A dataclass field whose value the loader checks (with file, key and line).

    ``length``: a list must have exactly that many items, none of them empty. ``help``
    documents the key; the worker toolkit also turns such fields into CLI flags. A list
    default is copied for each instance.
    """
    metadata = {"ge": ge, "gt": gt, "le": le, "choices": choices, "length": length, "help": help}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


bounded = setting  # the name the first plugins used


def flatten(cls: type) -> Any:
    """A field holding a dataclass whose keys are written at this level, not nested:
    ``n_ctx: 8192`` at the backend level fills ``options.<field>.n_ctx``."""
    return dataclasses.field(default_factory=cls, metadata={"flatten": cls})


def overrides_of(cls: type) -> Any:
    """A ``dict[str, Any]`` field holding only the keys of ``cls`` written at this level,
    each checked against ``cls``'s field (type and bounds): per-model overrides of
    backend-level defaults, applied with ``dataclasses.replace(defaults, **overrides)``."""
    return dataclasses.field(default_factory=dict, metadata={"overrides_of": cls})


def accepted_keys(cls: type) -> set[str]:
    """The YAML keys a dataclass accepts, flattened groups included."""
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        nested = f.metadata.get("flatten") or f.metadata.get("overrides_of")
        if nested is not None:
            keys |= accepted_keys(nested)
        elif f.init:
            keys.add(f.name)
    return keys


@dataclasses.dataclass
class TLSConfig:
    """``server.tls``: serve HTTPS with this certificate chain and private key (PEM files)."""

    cert: str
    key: str


@dataclasses.dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = setting(8400, ge=0, le=65535)
    admin_key: str | None = dataclasses.field(default=None, repr=False)
    max_body_mb: float = setting(32.0, gt=0)
    max_response_mb: float = setting(64.0, gt=0)
    header_timeout_s: float = setting(10.0, gt=0)
    body_timeout_s: float = setting(30.0, gt=0)
    keepalive_timeout_s: float = setting(75.0, gt=0)
    write_timeout_s: float = setting(60.0, gt=0)
    log_level: str = setting("info", choices=("debug", "info", "warning", "error"))
    # Operations (docs/operations.md): TLS, CORS, request logs, tracing.
    tls: TLSConfig | None = None
    cors_origins: list[str] = dataclasses.field(default_factory=list)
    log_format: str = setting("pretty", choices=("json", "pretty"))
    log_payloads: bool = False
    service_name: str = "router"
    otlp_endpoint: str | None = None
    #: Requests to the OpenAI endpoints in progress at once, router-wide; beyond, 429.
    max_concurrent: int | None = setting(None, ge=1)


@dataclasses.dataclass
class CircuitBreakerConfig:
    failure_threshold: int = setting(5, ge=1)
    cooldown_s: float = setting(10.0, ge=0)
    success_threshold: int = setting(1, ge=1)


@dataclasses.dataclass
class HedgeConfig:
    """``routing.hedge``: when the first backend has sent no first token after
    ``after_ms``, a second attempt starts on another backend; the first to send content
    wins and the other is closed. At most ``budget_pct`` of requests are hedged (10 s window)."""

    after_ms: float = setting(800.0, gt=0)
    budget_pct: float = setting(5.0, ge=0, le=100)


@dataclasses.dataclass
class RoutingConfig:
    strategy: str = "round_robin"
    discovery_interval_s: float = setting(60.0, gt=0)
    health_check_interval_s: float = setting(5.0, gt=0)
    retries: int = setting(2, ge=0)
    timeout_s: float = setting(600.0, gt=0)
    sticky_key: str = "auto"
    model_strategies: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Add ``_routing: {backend, model_type}`` to non-streamed answers (X-Router-Backend always says it).
    expose_routing_info: bool = False
    # Streams that survive (docs/routing.md): a stream is sent to the client only once
    # its first token arrives (or this many bytes are held; 0: at once).
    commit_after_bytes: int = setting(16384, ge=0)
    #: A backend that sends no token within this is abandoned before the client saw a
    #: byte (per backend too; None: no limit but routing.timeout_s).
    first_token_timeout_s: float | None = setting(None, gt=0)
    #: A 429 (Retry-After up to max_retry_after_s), a 500 or a reset is retried this many
    #: times on the same backend before failing over.
    same_backend_retries: int = setting(1, ge=0)
    max_retry_after_s: float = setting(5.0, ge=0)
    #: A stream broken after content reached the client is continued on another backend
    #: that accepts an assistant prefill (``continuation``) at most this many times.
    max_continuations: int = setting(1, ge=0)
    #: Model globs whose streams are never continued (the per-model opt-out).
    no_continuation: list[str] = dataclasses.field(default_factory=list)
    #: Retries and hedges together add at most this share of the requests of the last
    #: 10 s (plus retry_budget_min); beyond, a request fails fast (None: off).
    retry_budget_pct: float | None = setting(None, ge=0)
    retry_budget_min: int = setting(3, ge=0)
    #: Opt-in hedging: a second attempt when the first has no first token after after_ms.
    hedge: HedgeConfig | None = None


@dataclasses.dataclass
class ReasoningFormat:
    """How answers carry their thinking (docs/reasoning.md): ``auto`` parses a leading think
    tag or GPT-OSS harmony markers, ``think`` only the tags, ``harmony`` only the markers,
    ``none`` nothing (the answer passes untouched, byte for byte)."""

    parser: str = setting("auto", choices=("auto", "think", "harmony", "none"))
    tags: list[str] = setting(["<think>", "</think>"], length=2)


@dataclasses.dataclass
class ReasoningConfig(ReasoningFormat):
    """A backend's ``reasoning:``; ``models`` overrides it for the models matching a glob
    (the first glob that matches wins)."""

    models: dict[str, ReasoningFormat] = dataclasses.field(default_factory=dict)

    def for_model(self, *names: str) -> ReasoningFormat:
        """The format for a model, by any of its names (client-facing, served)."""
        for pattern, fmt in self.models.items():
            if any(fnmatch.fnmatchcase(name, pattern) for name in names):
                return fmt
        return self


@dataclasses.dataclass
class GenerationDefaults:
    """Sampling values applied when the client leaves them out (None: none applied)."""

    temperature: float | None = setting(None, ge=0, le=2)
    top_p: float | None = setting(None, gt=0, le=1)
    max_tokens: int | None = setting(None, ge=1)


@dataclasses.dataclass
class GenerationModelConfig:
    """``generation.models.<glob>``: what differs for the models matching the glob."""

    defaults: GenerationDefaults = dataclasses.field(default_factory=GenerationDefaults)
    max_tokens_limit: int | None = setting(None, ge=1)


@dataclasses.dataclass
class GenerationConfig:
    """``generation``: defaults, the max_tokens limit, and the models clients may use."""

    defaults: GenerationDefaults = dataclasses.field(default_factory=GenerationDefaults)
    max_tokens_limit: int | None = setting(None, ge=1)
    on_limit: str = setting("reject", choices=("reject", "clamp"))
    allowed_models: list[str] = dataclasses.field(default_factory=lambda: ["*"])
    models: dict[str, GenerationModelConfig] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class CacheConfig:
    """``cache``: exact-match answers for deterministic requests (docs/cache.md)."""

    enabled: bool = False
    ttl_s: float = setting(300.0, gt=0)
    max_entries: int = setting(1000, ge=1)
    max_entry_kb: float = setting(256.0, gt=0)


@dataclasses.dataclass
class ResponsesConfig:
    """``responses``: what ``POST /v1/responses`` keeps for ``store: true`` (docs/apis.md)."""

    #: An SQLite file (relative to the config file's folder); none: kept in memory only.
    store: str | None = None
    ttl_s: float = setting(30 * 86400.0, gt=0)
    max_responses: int = setting(10000, ge=1)


@dataclasses.dataclass
class BackendConfig:
    name: str
    provider: str
    base_url: str | None = None
    api_key: str | None = dataclasses.field(default=None, repr=False)
    weight: float = setting(1.0, gt=0)
    max_concurrent: int | None = setting(None, ge=1)
    max_queue: int = setting(64, ge=0)
    health_check_path: str = "/v1/models"
    connect_timeout_s: float = setting(5.0, gt=0)
    first_byte_timeout_s: float = setting(300.0, gt=0)
    read_timeout_s: float = setting(120.0, gt=0)
    #: No token within this: abandoned, the request moves on (default: routing's).
    first_token_timeout_s: float | None = setting(None, gt=0)
    #: The model's context length here, when the backend does not report it: a
    #: context_length_exceeded fails over only to backends with more (or unknown).
    context_length: int | None = setting(None, ge=1)
    #: Whether it continues a trailing assistant message (a prefill), so a broken stream
    #: can go on here (None: the provider's default; true for the local engines).
    continuation: bool | None = None
    #: The APIs it serves natively: a /v1/messages or /v1/responses request goes to such a
    #: backend as the client sent it (byte for byte), to the others translated to chat
    #: completions (None: the provider's default; openai_compatible: chat, completions, embeddings).
    apis: list[str] | None = setting(None, choices=("chat", "completions", "embeddings", "responses", "messages"))
    headers: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    reasoning: ReasoningConfig = dataclasses.field(default_factory=ReasoningConfig)
    # The provider's own keys (an instance of its options_class), validated like the rest.
    options: Any = None
    # The config file's directory (not a YAML key): relative paths a provider reads
    # (model files, say) are relative to it, wherever the router was started from.
    base_dir: Path | None = dataclasses.field(default=None, repr=False)

    def path(self, value: str) -> Path:
        """A path from this backend's config, relative ones taken from the config's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir or Path.cwd()) / path


@dataclasses.dataclass
class ClientKeyConfig:
    """One client key declared in ``auth.keys`` (more come through ``/admin/keys``)."""

    name: str
    key: str = dataclasses.field(repr=False)
    models: list[str] = dataclasses.field(default_factory=lambda: ["*"])
    rpm: int | None = setting(None, ge=1)
    tpm: int | None = setting(None, ge=1)


@dataclasses.dataclass
class AuthConfig:
    """``auth``: client keys. With no ``auth`` section the router is open."""

    store: str | None = None
    keys: list[ClientKeyConfig] = dataclasses.field(default_factory=list)
    open: bool = False


@dataclasses.dataclass
class Config:
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    routing: RoutingConfig = dataclasses.field(default_factory=RoutingConfig)
    circuit_breaker: CircuitBreakerConfig = dataclasses.field(default_factory=CircuitBreakerConfig)
    backends: list[BackendConfig] = dataclasses.field(default_factory=list)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    auth: AuthConfig | None = None
    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    responses: ResponsesConfig = dataclasses.field(default_factory=ResponsesConfig)
    path: str = "<memory>"
    base_dir: Path = dataclasses.field(default_factory=Path.cwd)
    #: Config key -> the environment variable that set it (not a YAML key; ``router check`` shows it).
    from_env: dict[str, str] = dataclasses.field(default_factory=dict)


