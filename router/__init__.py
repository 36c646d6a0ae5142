"""An OpenAI-compatible router: one URL in front of every way people run language models.

This module is the public API for plugins: everything a provider, strategy or hook
implementation may use is exported here (``__all__``), and the local-worker toolkit is
``router.workers``. Built-in plugins import nothing else from ``router`` (a test checks),
so a third-party plugin written against this page works the same way.
"""

from router import jsonlib, workers
from router.commands import Command
from router.config.loader import ConfigError
from router.config.schema import (
    BackendConfig,
    Config,
    ReasoningConfig,
    ReasoningFormat,
    RoutingConfig,
    bounded,
    flatten,
    overrides_of,
    setting,
)
from router.errors import (
    AuthenticationFailed,
    Conflict,
    ContextLengthExceeded,
    EngineError,
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    ModelLoadFailed,
    ModelNotAllowed,
    ModelNotFound,
    NoBackendAvailable,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    RouterError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
    UpstreamUnreachable,
    WorkerCrashed,
    parse_retry_after,
    shown,
)
from router.hookspecs import hookimpl
from router.identity import Identity
from router.http_upstream import AiohttpUpstreamResponse, IdleWatchdog, pooled_session
from router.provider import ModelCard, Provider, StaticResponse, UpstreamRequest, UpstreamResponse
from router.request import ProxyRequest, json_object
from router.routing.deadlines import deadline
from router.routing.limits import Admission
from router.routing.strategy import Strategy
from router.streams.sse import SSEEvent, SSESplitter, encode_event
from router.streams.transform import ResponseTransform
from router.version import __version__
from router.routing.backend import BackendView
from router.view import RouterView
from router.web.admin import admin_only
from router.web.openai import proxy_handler
from router.web.routes import EndpointAdapter, Route

__all__ = [
    # plugin machinery
    "hookimpl", "Command", "Route", "admin_only", "EndpointAdapter", "proxy_handler", "__version__",
    # providers
    "Provider", "ModelCard", "UpstreamRequest", "UpstreamResponse", "StaticResponse",
    "AiohttpUpstreamResponse", "IdleWatchdog", "pooled_session", "deadline", "Admission",
    # config
    "Config", "RoutingConfig", "BackendConfig", "ReasoningConfig", "ReasoningFormat", "ConfigError", "setting", "bounded", "flatten", "overrides_of",
    # requests, responses, streams
    "ProxyRequest", "json_object", "ResponseTransform", "SSEEvent", "SSESplitter", "encode_event",
    # read-only views for hooks and strategies
    "Strategy", "BackendView", "RouterView", "Identity",
    # the error tree
    "RouterError", "InvalidRequest", "ContextLengthExceeded", "PayloadTooLarge",
    "MethodNotAllowed", "Conflict", "AuthenticationFailed", "Forbidden", "ModelNotAllowed", "RateLimited",
    "NotFound", "ModelNotFound",
    "Overloaded", "NoBackendAvailable", "EngineError", "UpstreamError", "UpstreamUnreachable",
    "UpstreamTimeout", "UpstreamHTTPError", "ModelLoadFailed", "WorkerCrashed",
    "parse_retry_after", "shown",
    # modules
    "jsonlib", "workers",
]
