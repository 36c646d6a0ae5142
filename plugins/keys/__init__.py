"""Client keys with limits (``auth:``), and the ``/admin/keys`` API.

A request carries its key as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``.
A missing or wrong key is a 401 (``invalid_api_key``), a model the key may not use a 403
(``model_not_allowed``; ``/v1/models`` lists only the key's models), and a key over its
``rpm`` or ``tpm`` a 429 (``rate_limit_exceeded``, with ``Retry-After``). Every answer to a
key with limits carries OpenAI's ``x-ratelimit-*`` headers. Tokens are counted from the
answer's ``usage``, which the router reads from the bytes it relays (``Identity.answered``),
so counting keeps the zero-copy relay; only for a stream that did not ask for usage does
the plugin ask the backend for the usage chunk (``stream_options.include_usage``) and keep
that chunk from the client (a response transform, for those streams only).

Keys are declared in the config (``auth.keys``) or made through ``POST /admin/keys``
(shown once; only their SHA-256 digest is stored, in ``auth.store``). With no ``auth``
section the plugin does nothing and the router is open, as it always was. Health, admin
(``server.admin_key``), metrics and API description routes need no client key.

Built on the public API only (``authenticate``, ``prepare_request``,
``transform_response``, ``register_routes``, ``startup``/``shutdown``), like a
third-party plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from router import (
    AuthenticationFailed,
    Conflict,
    Identity,
    InvalidRequest,
    ModelNotAllowed,
    NotFound,
    ProxyRequest,
    RateLimited,
    ResponseTransform,
    Route,
    RouterView,
    SSEEvent,
    admin_only,
    hookimpl,
    jsonlib,
)
from plugins.keys.limits import Bucket, headers
from plugins.keys.store import KeyStore

log = logging.getLogger("router.keys")

KEY_PREFIX = "sk-prx-"
#: How often ``last_used`` and request counts are written to the store.
FLUSH_INTERVAL_S = 5.0
#: Paths that never need a client key: health, the admin API (it has its own key),
#: metrics, the API description and its UI, the dashboard's files (its API takes the admin key).
PUBLIC_PATHS = ("/health", "/metrics", "/status", "/admin/", "/openapi.json", "/docs", "/swagger-ui", "/ui")
_NAME = re.compile(r"[A-Za-z0-9._-]+")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyRecord:
    """One key: its limits, its buckets, its counters (never the key itself)."""

    __slots__ = ("id", "name", "prefix", "digest", "models", "rpm", "tpm", "created", "last_used",
                 "requests", "tokens", "source", "dirty", "requests_bucket", "tokens_bucket", "_allowed")

    def __init__(self, *, id: str, name: str, prefix: str, digest: str, models: list[str],  # noqa: A002
                 rpm: int | None, tpm: int | None, created: float, source: str,
                 last_used: float | None = None, requests: int = 0, tokens: int = 0) -> None:
        self.id, self.name, self.prefix, self.digest = id, name, prefix, digest
        self.models, self.rpm, self.tpm = list(models), rpm, tpm
        self.created, self.last_used, self.requests, self.tokens = created, last_used, requests, tokens
        self.source = source
        self.dirty = False
        now = time.monotonic()
        self.requests_bucket = Bucket(rpm, now) if rpm else None
        self.tokens_bucket = Bucket(tpm, now) if tpm else None
        all_models = not models or "*" in models
        self._allowed = None if all_models else re.compile("|".join(fnmatch.translate(g) for g in models))

    @property
    def limited(self) -> bool:
        return self.requests_bucket is not None or self.tokens_bucket is not None

    def allows(self, model: str) -> bool:
        return self._allowed is None or self._allowed.match(model) is not None

    def admit(self, now: float) -> None:
        """Take one request from the buckets, or raise 429 saying which limit and when."""
        waits = []
        if self.requests_bucket is not None:
            waits.append(("requests per minute", self.rpm, self.requests_bucket.wait_s(now)))
        if self.tokens_bucket is not None:
            waits.append(("tokens per minute", self.tpm, self.tokens_bucket.wait_s(now)))
        over = [(what, limit, wait) for what, limit, wait in waits if wait > 0]
        if over:
            what, limit, wait = max(over, key=lambda item: item[2])
            raise RateLimited(
                f"rate limit reached for the key {self.name!r}: {limit} {what}; retry in {wait:.1f}s",
                retry_after=wait,
            )
        if self.requests_bucket is not None:
            self.requests_bucket.take(1, now)

    def charge(self, tokens: int) -> None:
        self.tokens += tokens
        self.dirty = True
        if self.tokens_bucket is not None:
            self.tokens_bucket.take(tokens, time.monotonic())

    def public(self) -> dict[str, Any]:
        """What the admin API shows: everything but the key and its digest."""
        return {"id": self.id, "name": self.name, "prefix": self.prefix, "models": self.models or ["*"],
                "rpm": self.rpm, "tpm": self.tpm, "created": self.created, "last_used": self.last_used,
                "requests": self.requests, "tokens": self.tokens, "source": self.source}

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "prefix": self.prefix, "digest": self.digest,
                "models": self.models, "rpm": self.rpm, "tpm": self.tpm, "created": self.created,
                "last_used": self.last_used, "requests": self.requests, "tokens": self.tokens}


class KeyIdentity(Identity):
    """Who sent a request: its key's record (one per request, so per-request notes fit)."""

    def __init__(self, record: KeyRecord) -> None:
        self.record = record
        self.name = record.name
        self.strip_usage = False
        self.wants_usage = record.tokens_bucket is not None

    def answered(self, status: int, usage: Mapping[str, int] | None) -> None:
        if usage:
            total = usage.get("total_tokens")
            if not isinstance(total, int):
                total = sum(usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens"))
            self.record.charge(total)

    def allows_model(self, model: str) -> bool:
        return self.record.allows(model)

    def response_headers(self) -> Mapping[str, str] | None:
        record = self.record
        if not record.limited:
            return None
        now = time.monotonic()
        out: dict[str, str] = {}
        if record.requests_bucket is not None:
            out.update(headers("requests", record.requests_bucket, now))
        if record.tokens_bucket is not None:
            out.update(headers("tokens", record.tokens_bucket, now))
        return out


class KeyRing:
    """One router's keys: config ones, then stored ones, by digest and by id."""

    def __init__(self, view: RouterView) -> None:
        auth = view.config.auth
        assert auth is not None
        self.open = auth.open
        self.store = KeyStore(auth.store)
        self.by_digest: dict[str, KeyRecord] = {}
        self.by_id: dict[str, KeyRecord] = {}
        self._flusher: asyncio.Task[None] | None = None
        now = time.time()
        for entry in auth.keys:
            self._add(KeyRecord(id=f"config-{entry.name}", name=entry.name, prefix=entry.key[:11],
                                digest=digest(entry.key), models=entry.models, rpm=entry.rpm, tpm=entry.tpm,
                                created=now, source="config"))

    def _add(self, record: KeyRecord) -> None:
        self.by_digest[record.digest] = record
        self.by_id[record.id] = record

    def names(self) -> set[str]:
        return {r.name for r in self.by_id.values()}

    async def start(self) -> None:
        names = self.names()
        for row in await self.store.open():
            if row["name"] in names or row["digest"] in self.by_digest:
                log.warning("the stored key %r (%s) has the name or key of one in the config file; "
                            "the file wins and the stored one is not used", row["name"], row["id"])
                continue
            self._add(KeyRecord(**row, source="api"))
        if not self.by_id and not self.open:
            log.warning("auth: no client keys yet, so every request is refused with 401; "
                        "declare some in auth.keys or create them with POST /admin/keys")
        if self.by_id:
            log.info("client keys: %d (%s)", len(self.by_id), ", ".join(sorted(self.names())))
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush()

    async def flush(self) -> None:
        used = [r for r in self.by_id.values() if r.dirty and r.source == "api"]
        for record in used:
            record.dirty = False
        await self.store.save_usage((r.id, r.last_used, r.requests, r.tokens) for r in used)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
        await self.store.close()

    def identify(self, request: web.Request) -> KeyIdentity | None:
        key = _presented_key(request)
        if key is None:
            if self.open:
                return None
            raise AuthenticationFailed(
                "no API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            )
        record = self.by_digest.get(digest(key))
        if record is None:
            raise AuthenticationFailed(
                "the API key is not valid (mistyped, revoked or never issued); "
                "ask the router's operator for one"
            )
        record.requests += 1
        record.last_used = time.time()
        record.dirty = True
        return KeyIdentity(record)

    async def create(self, name: str, models: list[str], rpm: int | None, tpm: int | None) -> tuple[KeyRecord, str]:
        if name in self.names():
            raise Conflict(f"a key named {name!r} exists already", param="name")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(id="key-" + secrets.token_hex(8), name=name, prefix=key[:11], digest=digest(key),
                           models=models, rpm=rpm, tpm=tpm, created=time.time(), source="api")
        await self.store.add(record.row())
        self._add(record)
        return record, key

    async def revoke(self, key_id: str) -> KeyRecord:
        record = self.by_id.get(key_id)
        if record is None:
            raise NotFound(f"no key with id {key_id!r} (GET /admin/keys lists them)")
        if record.source == "config":
            raise Conflict(f"the key {record.name!r} is declared in the config file (auth.keys): remove it there")
        del self.by_id[key_id]
        del self.by_digest[record.digest]
        await self.store.delete(key_id)
        return record


def _presented_key(request: web.Request) -> str | None:
    authorization = request.headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


class UsageStripper(ResponseTransform):
    """Keeps from the client the usage chunk it did not ask for (the plugin asked the
    backend for it, to count the stream's tokens)."""

    def event(self, event: SSEEvent) -> Iterable[SSEEvent]:
        if event.is_done or b'"usage"' not in event.data:
            return (event,)
        try:
            data = jsonlib.loads(event.data)
        except ValueError:
            return (event,)
        if isinstance(data, dict) and data.get("choices") == []:
            return ()
        return (event,)


STRIPPER = UsageStripper()


# -- hooks ------------------------------------------------------------------------------------

#: The key ring of each running router (by its view), so routers in one process stay apart.
_RINGS: dict[int, KeyRing] = {}


def _ring(router: RouterView) -> KeyRing | None:
    return _RINGS.get(id(router))


@hookimpl
async def startup(state: RouterView) -> None:
    if state.config.auth is None:
        return
    ring = KeyRing(state)
    await ring.start()
    _RINGS[id(state)] = ring


@hookimpl
async def shutdown(state: RouterView) -> None:
    ring = _RINGS.pop(id(state), None)
    if ring is not None:
        await ring.stop()


@hookimpl
def authenticate(request: web.Request, router: RouterView) -> KeyIdentity | None:
    ring = _RINGS.get(id(router)) if _RINGS else None
    if ring is None or request.path.startswith(PUBLIC_PATHS):
        return None
    return ring.identify(request)


@hookimpl
def prepare_request(request: ProxyRequest) -> None:
    identity = request.identity
    if not isinstance(identity, KeyIdentity):
        return
    record = identity.record
    if not record.allows(request.model):
        raise ModelNotAllowed(f"this API key ({record.name!r}) may not use the model {request.model!r}",
                              param="model")
    if not record.limited:
        return
    record.admit(time.monotonic())
    if record.tokens_bucket is not None and request.stream:
        options = request.payload.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage")):
            # Tokens are counted from usage: ask for the usage chunk, keep it from the client.
            identity.strip_usage = True
            request.update_payload(stream_options={**(options if isinstance(options, dict) else {}),
                                                   "include_usage": True})


@hookimpl
def transform_response(request: ProxyRequest, status: int) -> ResponseTransform | None:
    identity = request.identity
    if isinstance(identity, KeyIdentity) and identity.strip_usage and status < 400:
        return STRIPPER
    return None


# -- the admin API ----------------------------------------------------------------------------

_FIELDS = {"name", "models", "rpm", "tpm"}


def _limit(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest(f"{field}: must be a whole number of at least 1 (or null for no limit), "
                             f"got {value!r}", param=field)
    return value


def _key_spec(body: object) -> tuple[str, list[str], int | None, int | None]:
    if not isinstance(body, dict):
        raise InvalidRequest('send a JSON object: {"name": "...", "models"?: [...], "rpm"?: N, "tpm"?: N}')
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: unknown key (known keys: {', '.join(sorted(_FIELDS))})",
                             param=unknown[0])
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest("name: required, letters, digits, '.', '_' and '-' only", param="name")
    models = body.get("models", ["*"])
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise InvalidRequest('models: a non-empty list of names or globs, e.g. ["llama-*"]', param="models")
    return name, models, _limit(body, "rpm"), _limit(body, "tpm")


def _routes_ring(request: web.Request, router: RouterView) -> KeyRing:
    ring = _ring(router)
    if ring is None:
        raise NotFound("client keys are off: add an auth: section to the config (docs/operations.md)")
    return ring


def admin_routes(router: RouterView) -> list[Route]:
    async def list_keys(request: web.Request) -> web.Response:
        ring = _routes_ring(request, router)
        keys = sorted(ring.by_id.values(), key=lambda r: r.created)
        return _json({"keys": [r.public() for r in keys]})

    async def create_key(request: web.Request) -> web.Response:
        ring = _routes_ring(request, router)
        try:
            body = jsonlib.loads(await request.read())
        except ValueError as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
        record, key = await ring.create(*_key_spec(body))
        log.info("client key %r created (%s)", record.name, record.id)
        return _json({**record.public(), "key": key}, status=201)

    async def revoke_key(request: web.Request) -> web.Response:
        ring = _routes_ring(request, router)
        record = await ring.revoke(request.match_info["id"])
        log.info("client key %r revoked (%s)", record.name, record.id)
        return _json({"revoked": record.id, "name": record.name})

    return [
        Route("GET", "/admin/keys", admin_only(list_keys), "client keys (without secrets)"),
        Route("POST", "/admin/keys", admin_only(create_key), "create a client key (shown once)"),
        Route("DELETE", "/admin/keys/{id}", admin_only(revoke_key), "revoke a client key at once"),
    ]


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=jsonlib.dumps(data), status=status, content_type="application/json")


@hookimpl
def register_routes(register: Any, router: RouterView) -> None:
    for route in admin_routes(router):
        register(route)
