"""Request ids, JSON responses, and the error middleware: every answer carries
``X-Request-ID``, and every error, from the router or from aiohttp's routing, leaves in
OpenAI's envelope."""

from __future__ import annotations

import itertools
import logging
import os

from aiohttp import web

from router import jsonlib
from router.identity import Identity
from router.errors import Forbidden, MethodNotAllowed, NotFound, PayloadTooLarge, RouterError
from router.state import RouterState
from router.web.routes import Handler

log = logging.getLogger("router")

STATE: web.AppKey[RouterState] = web.AppKey("state", RouterState)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
#: What the ``authenticate`` hook returned for this request (None: anonymous).
IDENTITY: web.RequestKey[object] = web.RequestKey("identity", object)
JSON = "application/json"

# Request ids: a random per-process prefix and a counter. Unique across replicas and
# restarts without a system call per request (os.urandom was 2% of the router's CPU).
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def request_id_of(request: web.Request) -> str:
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = request.headers.get("X-Request-ID") or new_request_id()
        request[REQUEST_ID] = rid
    return rid


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=jsonlib.dumps(data), status=status, content_type=JSON, headers=headers)


def error_response(error: RouterError, request_id: str) -> web.Response:
    headers = error.headers()
    headers["X-Request-ID"] = request_id
    response = web.Response(body=error.body(), status=error.status, content_type=JSON, headers=headers)
    if error.close_connection:
        response.force_close()
    return response


def body_too_large(request: web.Request, exc: web.HTTPRequestEntityTooLarge) -> PayloadTooLarge:
    limit = request.app[STATE].config.server.max_body_mb
    return PayloadTooLarge(
        f"the request body is too large ({(exc.text or '').strip()}); the limit is "
        f"server.max_body_mb = {limit:g} MB"
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except RouterError as exc:
        return error_response(exc, request_id_of(request))
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(body_too_large(request, exc), request_id_of(request))
    except web.HTTPNotFound:
        error: RouterError = NotFound(f"no such endpoint: {request.method} {request.path}")
        return error_response(error, request_id_of(request))
    except web.HTTPMethodNotAllowed as exc:
        error = MethodNotAllowed(
            f"method {request.method} is not allowed on {request.path} "
            f"(use {', '.join(sorted(exc.allowed_methods))})"
        )
        return error_response(error, request_id_of(request))
    except web.HTTPForbidden as exc:  # e.g. a CORS preflight from an origin not allowed
        error = Forbidden((exc.text or "forbidden").strip())
        return error_response(error, request_id_of(request))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        error = RouterError("internal router error; see the router's log")
        return error_response(error, request_id_of(request))
    # Every answer carries its request id (streams set it before they start).
    if not response.prepared and "X-Request-ID" not in response.headers:
        response.headers["X-Request-ID"] = request_id_of(request)
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The ``authenticate`` hook, before the handler (installed only when implemented).
    CORS preflights carry no credentials and pass. The OpenAI endpoints authenticate
    inside their own handler, so a refused request is observed like any other."""
    if request.method != "OPTIONS" and not getattr(request.match_info.handler, "authenticates", False):
        state = request.app[STATE]
        request[IDENTITY] = await state.hooks.authenticate(request, state.view)
    return await handler(request)


async def identity_headers(request: web.Request, response: web.StreamResponse) -> None:
    """An ``Identity``'s headers on every answer to its requests (``on_response_prepare``,
    installed only when a plugin authenticates): rate-limit headers, for one."""
    identity = request.get(IDENTITY)
    if isinstance(identity, Identity):
        headers = identity.response_headers()
        if headers:
            response.headers.update(headers)
