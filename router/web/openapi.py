"""``GET /openapi.json``, read off the app's route table (``ROUTES``: the core's routes
and every plugin's, the same list the server was built from), and Swagger UI at ``/docs``
and ``/swagger-ui`` from the ``swagger-ui-bundle`` package's own files (no CDN: the
router may have no internet). Swagger UI is the ``openapi`` extra; the document needs
nothing.
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from router.errors import NotFound
from router.version import __version__
from router.web.middlewares import STATE, json_response
from router.web.routes import ROUTES, Route

#: Paths that never need a client key (plugins.keys keeps the same list).
PUBLIC = ("/health", "/metrics", "/openapi.json", "/docs", "/swagger-ui")
ADMIN = ("/admin/", "/status")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")

_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
_MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
    "content": {"type": ["string", "array", "null"]}}}
_COMMON = {"model": {"type": "string", "minLength": 1}, "stream": {"type": "boolean"},
           "max_tokens": {"type": "integer", "minimum": 1}, "temperature": {"type": "number", "minimum": 0, "maximum": 2},
           "user": {"type": "string"}}
_TEXT = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
#: The request bodies of the OpenAI endpoints (the fields the router itself checks;
#: everything else passes through to the backend).
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"type": "object", "required": ["model", "messages"], "properties": {
        **_COMMON, "messages": {"type": "array", "items": _MESSAGE, "minItems": 1}}},
    "/v1/completions": {"type": "object", "required": ["model", "prompt"], "properties": {**_COMMON, "prompt": _TEXT}},
    "/v1/embeddings": {"type": "object", "required": ["model", "input"], "properties": {
        "model": _COMMON["model"], "input": _TEXT}},
}


def openapi_path(path: str) -> tuple[str, list[str]]:
    """An aiohttp path as OpenAPI writes it (``{model:.+}`` -> ``{model}``), and its parameters."""
    names = _PLACEHOLDER.findall(path)
    return _PLACEHOLDER.sub(lambda m: "{" + m.group(1) + "}", path), names


def document(routes: list[Route], *, keys: bool, title: str = "router") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.method in ("OPTIONS", "HEAD", "*"):
            continue
        path, params = openapi_path(route.path)
        operation: dict[str, Any] = {
            "summary": route.summary or route.path,
            "operationId": f"{route.method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_')}",
            "responses": {"200": {"description": "OK"},
                          "default": {"description": "an error, in OpenAI's envelope",
                                      "content": {"application/json": {"schema": _ERROR}}}},
        }
        if params:
            operation["parameters"] = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                                       for n in params]
        if route.path in BODIES:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": BODIES[route.path]}}}
        elif route.method in ("POST", "PUT", "PATCH"):
            operation["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
        if route.path.startswith(ADMIN):
            operation["security"] = [{"adminKey": []}]
        elif route.path.startswith(PUBLIC) or not keys:
            operation["security"] = []
        else:
            operation["security"] = [{"clientKey": []}, {"apiKeyHeader": []}]
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__,
                 "description": "An OpenAI-compatible router: one URL in front of many model backends."},
        "paths": paths,
        "components": {"securitySchemes": {
            "clientKey": {"type": "http", "scheme": "bearer", "description": "a client key (auth:)"},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            "adminKey": {"type": "http", "scheme": "bearer", "description": "server.admin_key"},
        }},
    }


async def openapi_json(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response(document(request.app[ROUTES], keys=state.config.auth is not None,
                                  title=state.config.server.service_name))


def _assets() -> Path:
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]
    except ImportError as exc:
        raise NotFound("Swagger UI needs the swagger-ui-bundle package: pip install '.[openapi]' "
                       "(the document itself is at /openapi.json)") from exc
    return Path(swagger_ui_path)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}: API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui"}});</script>
</body></html>
"""


async def swagger_page(request: web.Request) -> web.Response:
    _assets()
    title = request.app[STATE].config.server.service_name
    return web.Response(text=PAGE.format(title=title), content_type="text/html")


async def swagger_asset(request: web.Request) -> web.Response:
    root = _assets()
    name = request.match_info["name"]
    path = root / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise NotFound(f"no such Swagger UI file: {name}")
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return web.Response(body=path.read_bytes(), content_type=content_type,
                        headers={"Cache-Control": "public, max-age=86400"})


def routes() -> list[Route]:
    return [
        Route("GET", "/openapi.json", openapi_json, "this document: every route the router serves"),
        Route("GET", "/docs", swagger_page, "Swagger UI"),
        Route("GET", "/swagger-ui", swagger_page, "Swagger UI (seed 002's path)"),
        Route("GET", "/docs/assets/{name}", swagger_asset, "Swagger UI's files"),
    ]
