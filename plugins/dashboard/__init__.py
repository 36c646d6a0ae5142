"""The dashboard: a web UI at ``/ui`` (docs/ui.md), served by the router itself.

Plain HTML, CSS and JavaScript in ``static/`` (shipped as package data: no build step, no
CDN). The pages are public files; everything they show comes from the admin API
(``server.admin_key``, which the sign-in form asks for) and the OpenAI and management
endpoints. What the router does not keep for the Overview, this plugin adds:

- ``GET /ui/api/overview``: a per-second history of requests and errors (a sampler task
  reads the router's counters once a second) and, per backend, requests/s and the p50/p95
  of recent request durations (``observe_response`` appends one number per request to a
  bounded ring; see ``series``).
- ``POST /ui/api/discover`` ``{"base_url", "api_key"?}``: the models an OpenAI-compatible
  server lists (``GET <base_url>/v1/models``), for the Settings page to offer before a
  backend is registered (``POST /admin/backends``). A server that cannot be reached or
  answers something else is a 400 naming ``base_url`` (or ``api_key``): the router is
  fine, the address given is not.

Built on the public API only (``register_routes``, ``startup``, ``shutdown``,
``observe_response``, ``admin_only``), like a third-party plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from router import (
    BackendView,
    InvalidRequest,
    NotFound,
    Route,
    RouterView,
    admin_only,
    hookimpl,
    jsonlib,
)
from plugins.dashboard.series import WINDOW_S, History, Latencies

STATIC = Path(__file__).with_name("static")
#: The pages (``/ui/<page>``); each is the same document, which shows the page its path names.
PAGES = ("overview", "models", "downloads", "keys", "settings", "playground")
#: The files the dashboard serves (``/ui/static/<name>``), as shipped.
ASSETS = frozenset(p.name for p in STATIC.iterdir() if p.is_file()) if STATIC.is_dir() else frozenset()
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
#: Seconds between samples of the router's counters.
SAMPLE_INTERVAL_S = 1.0
DISCOVER_TIMEOUT_S = 5.0

#: Recent durations per backend (its view: one per backend for its lifetime).
_LATENCIES: dict[BackendView, Latencies] = {}
#: One dashboard per router in this process, by the router's view.
_DASHBOARDS: dict[int, Dashboard] = {}


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=jsonlib.dumps(data), status=status, content_type="application/json")


class Dashboard:
    """One router's dashboard state: its counter history and its sampler task."""

    def __init__(self, router: RouterView) -> None:
        self.router = router
        self.history = History()
        self.known: set[BackendView] = set()
        self.task: asyncio.Task[None] | None = None
        self.assets: dict[str, bytes] = {}

    def start(self) -> None:
        self.tick()
        self.task = asyncio.get_running_loop().create_task(self._sample())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for view in self.known:
            _LATENCIES.pop(view, None)

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            self.tick()

    def tick(self) -> None:
        self.history.sample(self.router.status())
        current = set(self.router.backends.values())
        for gone in self.known - current:  # removed through the admin API
            _LATENCIES.pop(gone, None)
        self.known = current

    def overview(self) -> dict[str, Any]:
        now = time.monotonic()
        backends = {}
        for name, view in self.router.backends.items():
            latencies = _LATENCIES.get(view)
            summary = latencies.summary(now) if latencies else {"samples": 0, "p50_ms": None, "p95_ms": None}
            backends[name] = {**summary, "requests_per_s": self.history.backend_rate(name)}
        return {"window_s": WINDOW_S, "interval_s": SAMPLE_INTERVAL_S,
                "series": self.history.series(), "backends": backends}

    # -- routes ---------------------------------------------------------------------------

    def asset(self, name: str) -> bytes:
        if name not in self.assets:
            if name not in ASSETS:  # only the files shipped in static/, never a path
                raise NotFound(f"no such file in the dashboard: {name!r}")
            self.assets[name] = (STATIC / name).read_bytes()
        return self.assets[name]

    async def page(self, request: web.Request) -> web.Response:
        page = request.match_info.get("page", "overview")
        if page not in PAGES:
            raise NotFound(f"no dashboard page {page!r} (pages: {', '.join(PAGES)})")
        return web.Response(body=self.asset("index.html"), content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self.asset(name)
        return web.Response(body=body, content_type=_TYPES.get(Path(name).suffix, "application/octet-stream"),
                            charset="utf-8", headers={"Cache-Control": "no-cache"})

    async def overview_route(self, request: web.Request) -> web.Response:
        return _json(self.overview())

    async def discover(self, request: web.Request) -> web.Response:
        try:
            body = jsonlib.loads(await request.read())
        except ValueError as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise InvalidRequest('send a JSON object: {"base_url": "http://host:port/v1", "api_key"?: "..."}')
        base_url = body.get("base_url")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InvalidRequest("base_url: required, an http:// or https:// URL such as http://10.0.0.5:8000/v1",
                                 param="base_url")
        api_key = body.get("api_key")
        if api_key is not None and not isinstance(api_key, str):
            raise InvalidRequest("api_key: a string, or leave it out", param="api_key")
        models = await discover_models(base_url, api_key or None)
        return _json({"base_url": base_url, "models": models})

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/ui", self.page, "the dashboard (docs/ui.md)"),
            Route("GET", "/ui/{page}", self.page, "a dashboard page"),
            Route("GET", "/ui/static/{name}", self.static, "the dashboard's files"),
            Route("GET", "/ui/api/overview", admin_only(self.overview_route),
                  "requests and errors per second, per-backend rates and latency percentiles"),
            Route("POST", "/ui/api/discover", admin_only(self.discover),
                  "the models an OpenAI-compatible server lists, before registering it"),
        ]


def _root(base_url: str) -> str:
    url = base_url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


async def discover_models(base_url: str, api_key: str | None) -> list[dict[str, Any]]:
    """``GET <base_url>/v1/models``, as the ``openai_compatible`` provider asks it."""
    url = f"{_root(base_url)}/v1/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = aiohttp.ClientTimeout(total=DISCOVER_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url, headers=headers) as resp:
            raw = await resp.read()
            status = resp.status
    except asyncio.TimeoutError as exc:
        raise InvalidRequest(f"{url} did not answer within {DISCOVER_TIMEOUT_S:g} s; check the URL",
                             param="base_url") from exc
    except (aiohttp.ClientError, ValueError) as exc:
        raise InvalidRequest(f"could not reach {url}: {exc or type(exc).__name__}; check the URL",
                             param="base_url") from exc
    if status in (401, 403):
        raise InvalidRequest(f"{url} refused the API key ({status}): check the key", param="api_key")
    if status != 200:
        raise InvalidRequest(f"{url} answered {status}: is this an OpenAI-compatible server? "
                             "(the URL usually ends in /v1)", param="base_url")
    try:
        data = jsonlib.loads(raw)
        items = data["data"]
        return [{"id": str(item["id"]), "owned_by": item.get("owned_by")} for item in items]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"{url} did not answer with an OpenAI model list "
                             '({"data": [{"id": ...}]})', param="base_url") from exc


@hookimpl
def register_routes(register: Callable[[Route], None], router: RouterView) -> None:
    dashboard = Dashboard(router)
    _DASHBOARDS[id(router)] = dashboard
    for route in dashboard.routes():
        register(route)


@hookimpl
def startup(state: RouterView) -> None:
    dashboard = _DASHBOARDS.get(id(state))
    if dashboard is not None:
        dashboard.start()


@hookimpl
async def shutdown(state: RouterView) -> None:
    dashboard = _DASHBOARDS.pop(id(state), None)
    if dashboard is not None:
        await dashboard.stop()


@hookimpl
def observe_response(backend: BackendView | None, elapsed_s: float) -> None:
    if backend is not None:
        latencies = _LATENCIES.get(backend)
        if latencies is None:
            latencies = _LATENCIES[backend] = Latencies()
        latencies.add(elapsed_s, time.monotonic())
