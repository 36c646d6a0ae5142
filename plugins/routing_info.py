"""``_routing: {"backend", "model_type"}`` in non-streamed answers, opt-in
(``routing.expose_routing_info: true``), a built-in plugin.

``model_type`` is the backend's provider (``openai_compatible``, ``gguf``, ...). The
``X-Router-Backend`` header names the backend on every answer whatever this says (a
cached answer: the backend that gave it). Streams are left as they are.
"""

from __future__ import annotations

from router import BackendView, ProxyRequest, ResponseTransform, RouterView, hookimpl, jsonlib


@hookimpl
def transform_response(request: ProxyRequest, backend: BackendView | None, status: int, content_type: str,
                       router: RouterView) -> ResponseTransform | None:
    if not router.config.routing.expose_routing_info or status != 200 or content_type != "application/json":
        return None
    name = backend.name if backend is not None else (request.response_headers or {}).get("X-Router-Backend")
    if name is None:
        return None
    if backend is None:
        backend = router.backends.get(name)
    return RoutingInfo(name, backend.provider if backend is not None else None)


class RoutingInfo(ResponseTransform):
    def __init__(self, backend: str, model_type: str | None) -> None:
        self.info = {"backend": backend, "model_type": model_type}

    def body(self, body: bytes, content_type: str) -> bytes:
        try:
            data = jsonlib.loads(body)
        except ValueError:
            return body
        if not isinstance(data, dict) or "error" in data:
            return body
        data["_routing"] = self.info
        return jsonlib.dumps(data)
