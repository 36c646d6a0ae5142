"""Streamed chat completions: ``delta.reasoning_content`` as the thinking arrives, then
``delta.content``, whatever the chunks' boundaries.

One splitter per choice (``plugins.reasoning.splitters``) is fed each ``delta.content``;
what it holds back (a tag's first characters) goes out with the next event, or with the
choice's finish event. Once every choice is known to be plain (no tag, no marker), events
are passed on as they came (their own bytes; only a ``reasoning`` field makes one be
parsed, to add ``reasoning_content`` next to it). An event left with nothing to say (its
only text held back) is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from router import ReasoningFormat, ResponseTransform, SSEEvent, jsonlib

from plugins.reasoning.answers import THINKING
from plugins.reasoning.options import ReasoningOptions
from plugins.reasoning.splitters import FINAL, Piece, Splitter, make_splitter

_REASONING_FIELD = b'"reasoning"'


class StreamTransform(ResponseTransform):
    def __init__(self, fmt: ReasoningFormat, options: ReasoningOptions | None) -> None:
        self.fmt = fmt
        self.options = options
        self.splitters: dict[int, Splitter] = {}
        #: Every choice seen is plain and the request asked for nothing: events pass as they are.
        self.settled = False
        #: Upstream events that carried thinking (about one token each on llama.cpp and vLLM).
        self.thinking_events = 0
        self._last: dict[str, Any] = {}
        self._level_sent = False

    def event(self, event: SSEEvent) -> Iterable[SSEEvent]:
        data = event.data
        if not data.startswith(b"{") or (self.settled and _REASONING_FIELD not in data):
            return (event,)
        try:
            chunk = jsonlib.loads(data)
        except ValueError:
            return (event,)
        if not isinstance(chunk, dict):
            return (event,)
        changed = False
        empty = True
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            if self._choice(choice):
                changed = True
            if choice.get("delta") or choice.get("finish_reason") is not None or choice.get("logprobs"):
                empty = False
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            empty = False
            if self._usage(usage):
                changed = True
        if self.options is None and self.fmt.parser != "none" and self.splitters:
            self.settled = all(s.plain for s in self.splitters.values())
            # No thinking and nothing asked: the relay may forward the rest untouched.
            self.passthrough = self.settled and not self.thinking_events
        self._last = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
        if self.options is not None and self.options.effort is not None and not self._level_sent:
            chunk["reasoning_level"] = self.options.effort  # on the first chunk only
            self._level_sent = changed = True
            empty = False
        if not changed:
            return (event,)
        if empty:
            return ()
        return (SSEEvent(jsonlib.dumps(chunk), event=event.event, id=event.id),)

    def _choice(self, choice: dict[str, Any]) -> bool:
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return False
        changed = False
        reasoning = delta.get("reasoning")
        if isinstance(reasoning, str) and "reasoning_content" not in delta:
            delta["reasoning_content"] = reasoning  # vLLM's name; "reasoning" is kept as sent
            changed = True
        index = choice.get("index", 0)
        splitter = self.splitters.get(index) if isinstance(index, int) else None
        if splitter is None and isinstance(index, int) and self.fmt.parser != "none":
            splitter = self.splitters[index] = make_splitter(self.fmt.parser, self.fmt.tags)
        content = delta.get("content")
        pieces: list[Piece] = []
        fed = False
        if splitter is not None and isinstance(content, str) and content:
            pieces = splitter.feed(content)
            fed = pieces != [(FINAL, content)]  # else the content goes on as it came
        if splitter is not None and choice.get("finish_reason") is not None:
            tail = splitter.flush()
            if tail:
                pieces += tail
                fed = True
        if fed or (self.options is not None and (pieces or isinstance(delta.get("reasoning_content"), str))):
            self._apply(delta, pieces, fed or bool(pieces))
            changed = True
        return changed

    def _apply(self, delta: dict[str, Any], pieces: list[Piece], fed: bool) -> None:
        wants = self.options.wants if self.options is not None else (lambda channel: True)
        sent = delta.get("reasoning_content")
        thinking = "".join(text for channel, text in pieces if channel in THINKING and wants(channel))
        if isinstance(sent, str) and sent:
            thinking = (sent if wants("analysis") else "") + thinking
        if any(channel in THINKING for channel, _ in pieces) or (isinstance(sent, str) and sent):
            self.thinking_events += 1
        if fed:
            final = "".join(text for channel, text in pieces if channel == FINAL)
            if final and wants(FINAL):
                delta["content"] = final
            else:
                delta.pop("content", None)
        if thinking:
            delta["reasoning_content"] = thinking
        else:
            delta.pop("reasoning_content", None)
        if self.options is not None and self.options.separate_thinking:
            channels: dict[str, str] = {}
            if isinstance(sent, str) and sent and wants("analysis"):
                channels["analysis"] = sent
            for channel, text in pieces:
                if wants(channel) and text:
                    channels[channel] = channels.get(channel, "") + text
            if channels:
                delta["channels"] = channels  # this event's text by channel

    def _usage(self, usage: dict[str, Any]) -> bool:
        if "thinking_tokens" in usage:
            return False
        details = usage.get("completion_tokens_details")
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
        if isinstance(reasoning, int):
            usage["thinking_tokens"] = reasoning
            return True
        if self.thinking_events:
            usage["thinking_tokens"] = self.thinking_events
            return True
        return False

    def end(self) -> Iterable[SSEEvent]:
        """The stream ended without a finish event: release what is still held."""
        out: list[SSEEvent] = []
        for index, splitter in self.splitters.items():
            pieces = splitter.flush()
            if not pieces:
                continue
            delta: dict[str, Any] = {}
            self._apply(delta, pieces, True)
            if delta:
                chunk = {**self._last, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
                out.append(SSEEvent(jsonlib.dumps(chunk)))
        return out
