"""The API description: /openapi.json read off the route table (plugin routes included),
validated as OpenAPI 3.1, Swagger UI served from local files at /docs and /swagger-ui,
and schemathesis run against the router finds no 5xx."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from aiohttp import web
from openapi_spec_validator import validate

from router import Route, hookimpl
from router.testing import FakeUpstream, router_client
from router.web.routes import ROUTES
from tests.conftest import backend


class ExtraRoute:
    @hookimpl
    def register_routes(self, register):
        async def tags(request: web.Request) -> web.Response:
            return web.json_response({"models": []})

        register(Route("GET", "/api/tags/{name:[a-z]+}", tags, "a plugin's route"))


async def test_openapi_describes_every_route_and_validates():
    up = await FakeUpstream("a").start()
    cfg = {"auth": {"keys": [{"name": "a", "key": "openapi-key-0123456789"}]},
           "backends": [{"name": "a", "provider": "openai_compatible", "base_url": up.url}]}
    try:
        async with router_client(cfg, plugins=[ExtraRoute()]) as client:
            resp = await client.get("/openapi.json")  # no key needed
            assert resp.status == 200
            doc = await resp.json()
            table = client.server.app[ROUTES]
    finally:
        await up.stop()
    validate(doc)  # raises on an invalid OpenAPI document
    described = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    from router.web.openapi import openapi_path

    assert {(r.method, openapi_path(r.path)[0]) for r in table} == described
    tags = doc["paths"]["/api/tags/{name}"]["get"]
    assert tags["summary"] == "a plugin's route" and tags["parameters"][0]["name"] == "name"
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["required"] == ["model", "messages"]
    assert chat["security"] == [{"clientKey": []}, {"apiKeyHeader": []}]
    assert doc["paths"]["/admin/keys"]["post"]["security"] == [{"adminKey": []}]
    assert doc["paths"]["/health"]["get"]["security"] == []


async def test_swagger_ui_from_local_assets_at_docs_and_swagger_ui():
    async with router_client({"backends": []}) as client:
        for path in ("/docs", "/swagger-ui"):
            resp = await client.get(path)
            assert resp.status == 200 and resp.content_type == "text/html"
            page = await resp.text()
            assert 'url: "/openapi.json"' in page and "/docs/assets/swagger-ui-bundle.js" in page
            assert "https://" not in page and "http://" not in page  # nothing from a CDN
        resp = await client.get("/docs/assets/swagger-ui-bundle.js")
        assert resp.status == 200 and "javascript" in resp.content_type
        assert b"SwaggerUIBundle" in await resp.read()
        assert (await client.get("/docs/assets/swagger-ui.css")).status == 200
        resp = await client.get("/docs/assets/nope.js")
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


def test_schemathesis_finds_no_server_errors(start_router, upstreams, tmp_path: Path):
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli, "schemathesis comes with the test extra"
    up = upstreams("a")
    router = start_router({"server": {"admin_key": "admin-secret"}, "backends": [backend("a", up)]})
    with urllib.request.urlopen(router.url + "/openapi.json") as resp:
        (tmp_path / "openapi.json").write_bytes(resp.read())
    result = subprocess.run(
        [cli, "run", str(tmp_path / "openapi.json"), "--url", router.url, "--checks", "not_a_server_error",
         "--max-examples", "15", "--seed", "1", "--generation-deterministic",
         "--exclude-path-regex", "^/admin/backends",  # registering arbitrary backends is not a fuzz target
         "-H", "Authorization: Bearer admin-secret"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # its .schemathesis/ cache goes there
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Fuzzing" in result.stdout and "passed" in result.stdout and "failed" not in result.stdout
