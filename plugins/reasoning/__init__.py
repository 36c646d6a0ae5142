"""Thinking / answer separation for chat completions (seed 001), a built-in plugin.

Per backend, and per model glob (``reasoning: {parser, tags, models}`` in the backend's
config, ``router.ReasoningConfig``), answers are split into their thinking and their
answer: ``<think>`` tags, GPT-OSS harmony channels, and the ``reasoning`` /
``reasoning_content`` fields backends already send, all end up as ``reasoning_content``
next to a clean ``content``, streamed or not. Seed 001's request fields
(``separate_thinking``, ``include_channels``, ``reasoning``, ``developer_instructions``)
are read here too. docs/reasoning.md has the details and examples.

Cost: ``parser: none`` with none of the request fields returns no transform (the relay
stays zero-copy); ``auto`` (the default) scans a whole body for a few byte strings and
parses it only if one is there, and parses a stream's events until its first words show
it has no thinking, then passes events on untouched.

- ``splitters``: text in, ``(channel, text)`` pieces out, incrementally.
- ``options``: the request fields.
- ``answers``: whole chat completions.
- ``stream``: streamed ones.
"""

from __future__ import annotations

from router import BackendView, ProxyRequest, ReasoningFormat, ResponseTransform, RouterView, hookimpl

from plugins.reasoning.answers import AnswerTransform
from plugins.reasoning.options import CONTEXT_KEY, ReasoningOptions, take_options, wanted
from plugins.reasoning.stream import StreamTransform

DEFAULT_FORMAT = ReasoningFormat()


@hookimpl
def prepare_request(request: ProxyRequest, router: RouterView) -> None:
    if request.endpoint == "chat/completions" and wanted(request.payload):
        options = take_options(request, router)
        if options is not None:
            request.context[CONTEXT_KEY] = options


@hookimpl
def transform_response(request: ProxyRequest, backend: BackendView | None, status: int,
                       content_type: str, router: RouterView) -> ResponseTransform | None:
    if request.endpoint != "chat/completions" or status != 200:
        return None
    options: ReasoningOptions | None = request.context.get(CONTEXT_KEY)
    if backend is None and request.response_headers:  # an early answer that names its backend (a cache hit)
        name = request.response_headers.get("X-Router-Backend")
        backend = router.backends.get(name) if name else None
    fmt = format_for(backend, request.target_model)
    if fmt.parser == "none" and options is None:
        return None  # the zero-copy path
    if content_type == "text/event-stream":
        return StreamTransform(fmt, options)
    return AnswerTransform(fmt, options)


def format_for(backend: BackendView | None, model: str) -> ReasoningFormat:
    """The ``reasoning`` settings for a model on a backend (defaults for early answers)."""
    if backend is None:
        return DEFAULT_FORMAT
    config = backend.config
    return config.reasoning.for_model(model, config.aliases.get(model, model))
