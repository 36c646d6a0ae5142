"""Generation defaults, the max_tokens limit and the models clients may use (``generation:``).

A built-in plugin on ``prepare_request``::

    generation:
      defaults: {temperature: 0.7, top_p: 0.9, max_tokens: 512}   # when the client omits them
      max_tokens_limit: 4096        # above it: 400 naming the limit (on_limit: clamp lowers it)
      on_limit: reject
      allowed_models: ["*"]         # globs; other models: 404 model_not_found
      models:                       # per-model-glob overrides (first match wins)
        "gpt-oss-*": {defaults: {temperature: 1.0}}

Defaults and the limit apply to chat and text completions; ``allowed_models`` to every
OpenAI endpoint. A model is allowed when the name the client sent, or the model it is an
alias of, matches a glob. With the section left out (the default) nothing is read or
changed: the request's body goes on as the client's bytes.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from router import InvalidRequest, ModelNotFound, ProxyRequest, RouterView, hookimpl, shown

SAMPLED = ("chat/completions", "completions")


@hookimpl
def prepare_request(request: ProxyRequest, router: RouterView) -> None:
    generation = router.config.generation
    if generation.allowed_models != ["*"]:
        check_allowed(request, router)
    defaults = generation.defaults
    if request.endpoint not in SAMPLED or (
            not generation.models and generation.max_tokens_limit is None and defaults.temperature is None
            and defaults.top_p is None and defaults.max_tokens is None):
        return  # nothing to apply (the common case): a few attribute reads
    model_config = None
    if generation.models:
        names = (request.model, router.resolve(request.model))
        model_config = next((c for glob, c in generation.models.items()
                             if any(fnmatch.fnmatchcase(n, glob) for n in names)), None)
    changes: dict[str, Any] = {}
    payload = request.payload
    for name in ("temperature", "top_p", "max_tokens"):
        value = getattr(model_config.defaults, name) if model_config is not None else None
        if value is None:
            value = getattr(defaults, name)
        if value is not None and payload.get(name) is None and not (
                name == "max_tokens" and payload.get("max_completion_tokens") is not None):
            changes[name] = value
    limit = model_config.max_tokens_limit if model_config is not None else None
    limit_key = "generation.models[...].max_tokens_limit"
    if limit is None:
        limit, limit_key = generation.max_tokens_limit, "generation.max_tokens_limit"
    if limit is not None:
        for name in ("max_tokens", "max_completion_tokens"):
            asked = changes.get(name, payload.get(name))
            if isinstance(asked, int) and not isinstance(asked, bool) and asked > limit:
                if generation.on_limit == "clamp":
                    changes[name] = limit
                else:
                    raise InvalidRequest(
                        f"'{name}' is {asked}, above this router's limit of {limit} "
                        f"({limit_key}); ask for at most {limit}", param=name, code="max_tokens_exceeded")
    if changes:
        request.update_payload(**changes)


def check_allowed(request: ProxyRequest, router: RouterView) -> None:
    globs = router.config.generation.allowed_models
    names = (request.model, router.resolve(request.model))
    if not any(fnmatch.fnmatchcase(name, glob) for name in names for glob in globs):
        raise ModelNotFound(
            f"The model {shown(request.model)} is not available on this router "
            f"(generation.allowed_models: {', '.join(globs)})", param="model")
