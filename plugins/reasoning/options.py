"""Seed 001's request fields for chat completions, read and taken off the body.

``separate_thinking``, ``include_channels``, ``reasoning: "low" | "medium" | "high"`` and
``developer_instructions`` are the router's, not the backend's: they are checked (a bad
value is a 400 naming the field), removed from what is sent on, and turned into what
backends understand (``reasoning_effort``, a ``developer`` message, and for harmony
backends GPT-OSS's ``Reasoning: <level>`` system-prompt line). What the response needs
to know is kept as ``ReasoningOptions`` in ``request.context``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from router import InvalidRequest, ProxyRequest, RouterView

from plugins.reasoning.splitters import CHANNELS

EFFORTS = ("low", "medium", "high")
FIELDS = ("separate_thinking", "include_channels", "developer_instructions", "reasoning")
CONTEXT_KEY = "reasoning"


@dataclasses.dataclass(frozen=True, slots=True)
class ReasoningOptions:
    separate_thinking: bool = False
    #: The channels the client wants (None: all of them).
    include_channels: frozenset[str] | None = None
    #: The reasoning level asked for, echoed as ``reasoning_level``.
    effort: str | None = None

    def wants(self, channel: str) -> bool:
        return self.include_channels is None or channel in self.include_channels


def wanted(payload: dict[str, Any]) -> bool:
    """Whether the body uses any of the fields (a few dict lookups: the common case)."""
    return ("separate_thinking" in payload or "include_channels" in payload
            or "developer_instructions" in payload or isinstance(payload.get("reasoning"), str))


def take_options(request: ProxyRequest, router: RouterView) -> ReasoningOptions | None:
    """Check the fields, rewrite the body for the backend, and return what the response
    needs (None when nothing about it changes)."""
    payload = request.payload
    separate = payload.get("separate_thinking", False)
    if not isinstance(separate, bool):
        raise InvalidRequest("'separate_thinking' must be true or false", param="separate_thinking")
    include = payload.get("include_channels")
    channels: frozenset[str] | None = None
    if include is not None:
        if not isinstance(include, list) or not all(isinstance(c, str) for c in include):
            raise InvalidRequest("'include_channels' must be a list of channel names "
                                 f"({', '.join(CHANNELS)})", param="include_channels")
        unknown = [c for c in include if c not in CHANNELS]
        if unknown:
            raise InvalidRequest(f"'include_channels' has unknown channel {unknown[0]!r}; "
                                 f"use {', '.join(CHANNELS)}", param="include_channels")
        channels = frozenset(include)
    effort = payload.get("reasoning")
    if isinstance(effort, str) and effort not in EFFORTS:
        raise InvalidRequest(f"'reasoning' must be one of {', '.join(EFFORTS)}, got {effort!r}",
                             param="reasoning")
    if not isinstance(effort, str):
        effort = None  # an object (another API's shape) is the backend's to judge
    developer = payload.get("developer_instructions")
    if developer is not None and not isinstance(developer, str):
        raise InvalidRequest("'developer_instructions' must be a string", param="developer_instructions")

    for name in FIELDS:
        if name != "reasoning" or effort is not None:
            payload.pop(name, None)
    changes: dict[str, Any] = {}
    messages = list(payload["messages"])
    if developer:
        at = next((i for i, m in enumerate(messages) if m.get("role") != "system"), len(messages))
        messages.insert(at, {"role": "developer", "content": developer})
    if effort is not None:
        changes.setdefault("reasoning_effort", payload.get("reasoning_effort", effort))
        if _harmony_backends(request, router):
            messages = _with_reasoning_line(messages, effort)
    changes["messages"] = messages
    request.update_payload(**changes)
    if not separate and channels is None and effort is None:
        return None
    return ReasoningOptions(separate, channels, effort)


def _harmony_backends(request: ProxyRequest, router: RouterView) -> bool:
    """Whether every backend serving the model is configured ``parser: harmony`` for it."""
    target = router.resolve(request.model)
    names = next((backends for model, _, backends in router.models() if model == target), [])
    if not names:
        return False
    for name in names:
        config = router.backends[name].config
        served = config.aliases.get(target, target)
        if config.reasoning.for_model(target, served).parser != "harmony":
            return False
    return True


def _with_reasoning_line(messages: list[Any], effort: str) -> list[Any]:
    """GPT-OSS reads its reasoning level from the system prompt: ``Reasoning: high``."""
    line = f"Reasoning: {effort}"
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system" \
            and isinstance(messages[0].get("content"), str):
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n{line}" if first["content"] else line
        return [first, *messages[1:]]
    return [{"role": "system", "content": line}, *messages]
