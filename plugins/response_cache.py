"""An opt-in exact-match response cache (``cache:``), a built-in plugin.

    cache: {enabled: true, ttl_s: 300, max_entries: 1000, max_entry_kb: 256}

Only deterministic chat and text completions are cached: ``temperature: 0`` or a
``seed``. The key is the request body as the backend receives it (after the other
plugins' changes: generation defaults, seed 001's fields taken off), keys sorted, with
the model the router resolved it to (after aliases), stream flag included: a streamed
request is answered from a streamed answer, replayed event for event. What is stored is
the backend's own answer, before any transform, so a hit goes through the transforms
again (a ``separate_thinking`` request gets its fields from a cached plain one).

``X-Router-Cache``: ``hit``, ``miss`` (asked the backend; stored if it could be) or
``bypass`` (not deterministic, or ``Cache-Control: no-cache`` / ``no-store``). Errors, a
200 carrying an error, a stream that was cut or sent an error, and answers over
``max_entry_kb`` are never stored. A hit carries the original backend's name in
``X-Router-Backend``.

One ``cachetools.TTLCache`` per router (per ``RouterView``), made on the first request.
With ``enabled: false`` (the default) every hook returns at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from cachetools import TTLCache

from router import (
    BackendView,
    ProxyRequest,
    ResponseTransform,
    RouterView,
    SSEEvent,
    StaticResponse,
    hookimpl,
)

CACHED_ENDPOINTS = ("chat/completions", "completions")
CONTEXT_KEY = "response_cache"
HEADER = "X-Router-Cache"


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    chunks: tuple[bytes, ...]
    content_type: str
    backend: str


@dataclasses.dataclass(slots=True)
class Note:
    key: str
    cache: TTLCache[str, Entry]


_caches: dict[int, TTLCache[str, Entry]] = {}


def _cache_for(router: RouterView) -> TTLCache[str, Entry]:
    cache = _caches.get(id(router))
    if cache is None:
        config = router.config.cache
        cache = _caches[id(router)] = TTLCache(maxsize=config.max_entries, ttl=config.ttl_s)
    return cache


def deterministic(payload: dict[str, Any]) -> bool:
    temperature = payload.get("temperature")
    seed = payload.get("seed")
    return ((isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 0)
            or (isinstance(seed, int) and not isinstance(seed, bool)))


def cache_key(request: ProxyRequest, router: RouterView) -> str:
    body = {k: v for k, v in request.payload.items() if k != "model"}
    text = json.dumps([request.endpoint, router.resolve(request.model), body],
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _say(request: ProxyRequest, verdict: str) -> None:
    if request.response_headers is None:
        request.response_headers = {}
    request.response_headers[HEADER] = verdict


@hookimpl
def prepare_request(request: ProxyRequest, router: RouterView) -> None:
    if not router.config.cache.enabled or request.endpoint not in CACHED_ENDPOINTS:
        return
    control = request.headers.get("Cache-Control", "").lower()
    if "no-cache" in control or "no-store" in control or not deterministic(request.payload):
        _say(request, "bypass")
        return
    request.context[CONTEXT_KEY] = Note(cache_key(request, router), _cache_for(router))
    _say(request, "miss")


@hookimpl
def answer_request(request: ProxyRequest) -> StaticResponse | None:
    note: Note | None = request.context.get(CONTEXT_KEY)
    if note is None:
        return None
    entry = note.cache.get(note.key)
    if entry is None:
        return None
    del request.context[CONTEXT_KEY]  # a hit is not stored again
    _say(request, "hit")
    assert request.response_headers is not None
    request.response_headers["X-Router-Backend"] = entry.backend
    return StaticResponse(list(entry.chunks), content_type=entry.content_type)


@hookimpl
def transform_response(request: ProxyRequest, backend: BackendView | None, status: int, content_type: str,
                       router: RouterView) -> ResponseTransform | None:
    note: Note | None = request.context.get(CONTEXT_KEY)
    if note is None or backend is None or status != 200:
        return None
    return Recorder(note, backend.name, content_type, int(router.config.cache.max_entry_kb * 1024))


@hookimpl
def shutdown(state: RouterView) -> None:
    _caches.pop(id(state), None)


class Recorder(ResponseTransform):
    """Keeps the backend's answer (first in the chain: what it sent, as it sent it) and
    stores it once it is known to be whole."""

    def __init__(self, note: Note, backend: str, content_type: str, limit: int) -> None:
        self.note = note
        self.backend = backend
        self.content_type = content_type
        self.limit = limit
        self.events: list[bytes] | None = []
        self.size = 0

    def body(self, body: bytes, content_type: str) -> bytes:
        if len(body) <= self.limit and not body.lstrip().startswith(b'{"error"'):
            self.note.cache[self.note.key] = Entry((body,), content_type, self.backend)
        return body

    def event(self, event: SSEEvent) -> Iterable[SSEEvent]:
        if self.events is not None:
            raw = event.encode()
            self.size += len(raw)
            if self.size > self.limit or event.data.startswith(b'{"error"'):
                self.events = None  # too big, or an error: not stored
            else:
                self.events.append(raw)
                if event.is_done:  # only a stream that ended properly is stored
                    self.note.cache[self.note.key] = Entry((b"".join(self.events),), self.content_type,
                                                           self.backend)
                    self.events = None
        return (event,)
