"""XandRouting's management API, over the router's dynamic backends.

Paths and shapes are XandRouting's (``../shared/xandrouting-api.md``); errors are in
OpenAI's envelope with a ``detail`` string too, which XandRouting clients read. With
several dynamic backends, ``loaded`` and ``stats`` cover them all and the others act on
the one named by ``router_backend`` (query or body), else the first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from plugins.dynamic.provider import DynamicProvider
from router import InvalidRequest, NotFound, RouterError, RouterView, Route, json_object, jsonlib, shown

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=jsonlib.dumps(data), status=status, content_type="application/json")


def _detailed(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RouterError as exc:
            exc.with_detail = True
            raise

    return wrapped


class ManagementAPI:
    def __init__(self, router: RouterView) -> None:
        self.router = router

    def providers(self) -> list[tuple[str, DynamicProvider]]:
        out = []
        for name, view in self.router.backends.items():
            provider = view.provider_of(DynamicProvider)
            if provider is not None:
                out.append((name, provider))
        return out

    def one(self, name: str | None) -> DynamicProvider:
        providers = self.providers()
        if not providers:
            raise NotFound("no dynamic backend is configured (provider: dynamic)", code="no_dynamic_backend")
        if name is None:
            return providers[0][1]
        for backend, provider in providers:
            if backend == name:
                return provider
        raise NotFound(f"no dynamic backend named {shown(name)}; there are: "
                       f"{', '.join(n for n, _ in providers)}", param="router_backend")

    async def body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        return json_object(raw) if raw else {}

    def target(self, request: web.Request, payload: dict[str, Any]) -> DynamicProvider:
        name = payload.get("router_backend", request.query.get("router_backend"))
        return self.one(name if isinstance(name, str) else None)

    # -- models ----------------------------------------------------------------------------

    async def loaded(self, request: web.Request) -> web.Response:
        models = [{**entry, "router_backend": name} for name, p in self.providers() for entry in p.loaded()]
        return _json({"loaded_models": models, "total_count": len(models)})

    async def stats(self, request: web.Request) -> web.Response:
        per = {name: p.stats() for name, p in self.providers()}
        total: dict[str, Any] = {}
        for stats in per.values():
            for key, value in stats.items():
                if isinstance(value, (int, float)) and key != "hit_rate":
                    total[key] = total.get(key, 0) + value
                else:
                    total.setdefault(key, value)
        lookups = total.get("cache_hits", 0) + total.get("cache_misses", 0)
        total["hit_rate"] = round(100.0 * total.get("cache_hits", 0) / lookups, 1) if lookups else 0.0
        return _json({**total, "backends": per})

    async def inventory(self, request: web.Request) -> web.Response:
        return _json(self.target(request, {}).inventory())

    async def unload(self, request: web.Request) -> web.Response:
        payload = await self.body(request)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' (the loaded model's path) is required", param="model")
        engine = payload.get("backend")
        if engine is not None and not isinstance(engine, str):
            raise InvalidRequest("'backend' must be an engine name", param="backend")
        return _json(await self.target(request, payload).unload(model, engine))

    async def unload_all(self, request: web.Request) -> web.Response:
        payload = await self.body(request)
        name = payload.get("router_backend", request.query.get("router_backend"))
        providers = [self.one(name)] if isinstance(name, str) else [p for _, p in self.providers()]
        count = 0
        for provider in providers:
            count += await provider.unload_all()
        return _json({"status": "unloaded_all", "count": count})

    async def load(self, request: web.Request) -> web.Response:
        payload = await self.body(request)
        return _json(await self.target(request, payload).load(payload))

    # -- downloads -------------------------------------------------------------------------

    def downloads(self, request: web.Request, payload: dict[str, Any]) -> Any:
        provider = self.target(request, payload)
        if provider.downloads is None:
            raise NotFound(f"downloads are not available on backend {provider.name!r}: "
                           f"{provider.downloads_problem}", code="downloads_unavailable")
        return provider.downloads

    @staticmethod
    def _filters(payload: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("include", "exclude"):
            value = payload.get(key)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise InvalidRequest(f"{key!r} must be a list of glob strings", param=key)
            out[key] = value
        quantization = payload.get("quantization")
        if quantization is not None and not isinstance(quantization, str):
            raise InvalidRequest("'quantization' must be a string such as Q4_K_M", param="quantization")
        out["quantization"] = quantization
        return out

    @staticmethod
    def _url(payload: dict[str, Any]) -> str:
        url = payload.get("url") or payload.get("repo_id")
        if not isinstance(url, str) or not url:
            raise InvalidRequest("'url' (a Hugging Face URL, org/repo or org/repo:file.gguf) is required",
                                 param="url")
        return url

    async def download(self, request: web.Request) -> web.Response:
        payload = await self.body(request)
        destination = payload.get("destination")
        if destination is not None and not isinstance(destination, str):
            raise InvalidRequest("'destination' must be a folder name inside models_dir", param="destination")
        job = await self.downloads(request, payload).submit(self._url(payload), destination=destination,
                                                            **self._filters(payload))
        return _json(job)

    async def download_list(self, request: web.Request) -> web.Response:
        jobs = self.downloads(request, {}).list()
        return _json({"downloads": jobs, "total": len(jobs)})

    async def download_get(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = self.downloads(request, {}).get(job_id)
        if job is None:
            raise NotFound(f"Download job not found: {job_id}", code="job_not_found")
        return _json(job)

    async def download_cancel(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = await self.downloads(request, {}).cancel(job_id)
        if job is None:
            raise NotFound(f"Download job not found: {job_id}", code="job_not_found")
        return _json({**job, "message": f"Download job {job['status']}"})

    async def verify_repo(self, request: web.Request) -> web.Response:
        payload = await self.body(request)
        return _json(await self.downloads(request, payload).verify(self._url(payload), **self._filters(payload)))

    def routes(self) -> list[Route]:
        table = [
            ("GET", "/v1/models/loaded", self.loaded, "models loaded now (dynamic backends)"),
            ("GET", "/v1/models/inventory", self.inventory, "what models_dir holds"),
            ("GET", "/v1/models/stats", self.stats, "load, hit and eviction counters"),
            ("POST", "/v1/models/unload", self.unload, "unload a model (after its requests)"),
            ("POST", "/v1/models/unload-all", self.unload_all, "unload every model"),
            ("POST", "/v1/models/load", self.load, "load a model now"),
            ("POST", "/v1/models/download", self.download, "start a Hugging Face download"),
            ("GET", "/v1/models/download", self.download_list, "download jobs"),
            ("GET", "/v1/models/download/{job_id}", self.download_get, "one download job"),
            ("DELETE", "/v1/models/download/{job_id}", self.download_cancel, "cancel a download"),
            ("POST", "/v1/models/verify-repo", self.verify_repo, "what a download would fetch"),
        ]
        return [Route(method, path, _detailed(handler), summary) for method, path, handler, summary in table]
