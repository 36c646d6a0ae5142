"""Whole (non-streamed) chat completions: thinking out of ``content``, into
``reasoning_content`` (and, when asked, ``thinking`` and ``channels``), usage counts.

A body that mentions neither a tag, a harmony marker nor a ``reasoning`` field, for a
request that asked for none of seed 001's fields, is returned as it came (no parsing).
"""

from __future__ import annotations

from typing import Any

from router import ReasoningFormat, ResponseTransform, jsonlib

from plugins.reasoning.options import ReasoningOptions
from plugins.reasoning.splitters import (
    ANALYSIS,
    CHANNELS,
    COMMENTARY,
    FINAL,
    HARMONY_LEADS,
    Piece,
    make_splitter,
)

THINKING = (ANALYSIS, COMMENTARY)


#: The field vLLM sends, and '<' as Go's JSON writes it (Ollama): always looked for.
ALWAYS = (b'"reasoning"', b"\\u003c")


def needles(fmt: ReasoningFormat) -> tuple[bytes, ...]:
    """The tags and markers without which a body has nothing to split."""
    found = []
    if fmt.parser in ("auto", "think"):
        found.append(jsonlib.dumps(fmt.tags[0])[1:-1])
    if fmt.parser in ("auto", "harmony"):
        found += [lead.encode() for lead in HARMONY_LEADS]
    return tuple(found)


def mentions(body: bytes, tags: tuple[bytes, ...]) -> bool:
    """Whether a body may need rewriting: a quick test for '<' first (a memchr), then the
    tags themselves, then the fields."""
    if tags and (b"<" in body if all(t.startswith(b"<") for t in tags) else True) \
            and any(tag in body for tag in tags):
        return True
    return any(needle in body for needle in ALWAYS)


class AnswerTransform(ResponseTransform):
    def __init__(self, fmt: ReasoningFormat, options: ReasoningOptions | None) -> None:
        self.fmt = fmt
        self.options = options
        self.needles = needles(fmt)

    def body(self, body: bytes, content_type: str) -> bytes:
        if "json" not in content_type:
            return body
        if self.options is None and not mentions(body, self.needles):
            return body
        try:
            data = jsonlib.loads(body)
        except ValueError:
            return body
        if not isinstance(data, dict) or not rewrite_completion(data, self.fmt, self.options):
            return body
        return jsonlib.dumps(data)


def split_content(fmt: ReasoningFormat, content: str) -> list[Piece] | None:
    """The content's pieces in order, or None when it has no thinking to split."""
    if fmt.parser == "none":
        return None
    splitter = make_splitter(fmt.parser, fmt.tags)
    pieces = splitter.feed(content) + splitter.flush()
    if splitter.plain:
        return None
    return pieces


def rewrite_completion(data: dict[str, Any], fmt: ReasoningFormat, options: ReasoningOptions | None) -> bool:
    """Rewrite a chat completion in place; whether anything changed."""
    changed = False
    counted: dict[str, str] = {}
    for choice in data.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            channels = _rewrite_message(message, fmt, options)
            if channels is not None:
                changed = True
                if not counted:
                    counted = channels
    if options is not None and options.effort is not None:
        data["reasoning_level"] = options.effort
        changed = True
    usage = data.get("usage")
    if isinstance(usage, dict) and _thinking_usage(usage, counted):
        changed = True
    return changed


def _rewrite_message(message: dict[str, Any], fmt: ReasoningFormat,
                     options: ReasoningOptions | None) -> dict[str, str] | None:
    """The message's text by channel after rewriting it, or None if it was left alone."""
    content = message.get("content")
    sent = message.get("reasoning_content")
    if not isinstance(sent, str):
        sent = message.get("reasoning") if isinstance(message.get("reasoning"), str) else None
    pieces = split_content(fmt, content) if isinstance(content, str) else None
    if pieces is None and sent is None and options is None:
        return None
    if pieces is None:
        pieces = [(FINAL, content)] if isinstance(content, str) else []
    if sent:
        pieces = [(ANALYSIS, sent), *pieces]
    wants = options.wants if options is not None else (lambda channel: True)
    by_channel = {channel: "" for channel in CHANNELS}
    for channel, text in pieces:
        by_channel[channel] += text
    thinking = "".join(text for channel, text in pieces if channel in THINKING and wants(channel))
    if isinstance(content, str):  # None (tool calls only) stays None
        message["content"] = by_channel[FINAL] if wants(FINAL) else ""
    if thinking:
        message["reasoning_content"] = thinking
    elif "reasoning_content" in message and not wants(ANALYSIS):
        del message["reasoning_content"]
    if options is not None and options.separate_thinking:
        message["thinking"] = {
            **{channel: by_channel[channel] for channel in THINKING if wants(channel)},
            "raw": "\n".join(f"[{channel.capitalize()}]\n{by_channel[channel]}"
                             for channel in THINKING if wants(channel) and by_channel[channel]),
        }
        message["channels"] = {channel: by_channel[channel] for channel in CHANNELS if wants(channel)}
    return by_channel


def _thinking_usage(usage: dict[str, Any], channels: dict[str, str]) -> bool:
    """``usage.thinking_tokens`` (and ``channel_tokens`` when the split is exact) from the
    backend's ``completion_tokens_details.reasoning_tokens``."""
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    if not isinstance(reasoning, int) or "thinking_tokens" in usage:
        return False
    usage["thinking_tokens"] = reasoning
    completion = usage.get("completion_tokens")
    thinking_channels = [c for c in THINKING if channels.get(c)]
    if isinstance(completion, int) and len(thinking_channels) <= 1:
        split = {c: 0 for c in CHANNELS}
        if thinking_channels:
            split[thinking_channels[0]] = reasoning
        split[FINAL] = max(0, completion - reasoning)
        usage["channel_tokens"] = split
    return True
