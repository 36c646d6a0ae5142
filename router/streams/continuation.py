"""Mid-stream continuation: what the client has been sent, and the rest from another backend.

When a chat stream breaks after content reached the client, the router can ask another
backend that accepts an assistant prefill to go on from the text delivered so far
(``router.routing.dispatch``'s continuer), and relay only the new tokens into the same
client stream. Here: ``Delivered`` reads what was sent (parsed only when a break happens;
until then the relay keeps references to the bytes it wrote), and ``Rejoin`` rewrites the
continuation's events so the client sees one stream: the same ``id``, ``model`` and
``created``, no second role, usage summed.
"""

from __future__ import annotations

from typing import Any

from router import jsonlib
from router.streams.sse import SSEEvent, SSESplitter, encode_event


class Delivered:
    """What the client has been sent of a chat stream."""

    __slots__ = ("text", "events", "tool_call", "finished", "id", "model", "created")

    def __init__(self, chunks: list[bytes]) -> None:
        self.text = ""
        self.events = 0  # content events: roughly the tokens generated
        self.tool_call = False
        self.finished = False
        self.id: Any = None
        self.model: Any = None
        self.created: Any = None
        pieces: list[str] = []
        splitter = SSESplitter()
        for chunk in chunks:
            for event in splitter.feed(chunk):
                self._read(event, pieces)
        self.text = "".join(pieces)

    def _read(self, event: SSEEvent, pieces: list[str]) -> None:
        if event.is_done or not event.data:
            return
        try:
            payload = jsonlib.loads(event.data)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        for name in ("id", "model", "created"):
            if getattr(self, name) is None and name in payload:
                setattr(self, name, payload[name])
        for choice in payload.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                continue
            if delta.get("tool_calls") or delta.get("function_call"):
                self.tool_call = True
            content = delta.get("content")
            if isinstance(content, str) and content:
                pieces.append(content)
                self.events += 1
            if choice.get("finish_reason"):
                self.finished = True

    @property
    def continuable(self) -> bool:
        """Text only, not finished: a break inside a tool call's arguments cannot be resumed."""
        return bool(self.text) and not self.tool_call and not self.finished


def continuation_payload(payload: dict[str, Any], delivered: Delivered) -> dict[str, Any]:
    """The request that goes on from ``delivered``: the same messages and sampling (and
    seed), the text so far as a final assistant message to continue (vLLM's
    ``continue_final_message``; llama.cpp and SGLang continue a trailing assistant message
    anyway), ``max_tokens`` reduced by what was generated."""
    out = {k: v for k, v in payload.items() if k != "x_router"}
    messages = list(payload.get("messages") or [])
    out["messages"] = [*messages, {"role": "assistant", "content": delivered.text}]
    out["continue_final_message"] = True
    out["add_generation_prompt"] = False
    out["stream"] = True
    for key in ("max_tokens", "max_completion_tokens"):
        limit = payload.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            out[key] = max(1, limit - delivered.events)
    return out


class Rejoin:
    """Rewrites a continuation's events into the client's stream."""

    def __init__(self, delivered: Delivered) -> None:
        self.delivered = delivered
        self.splitter = SSESplitter()

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._event(e) for e in self.splitter.feed(chunk))

    def flush(self) -> bytes:
        return b"".join(self._event(e) for e in self.splitter.flush())

    def _event(self, event: SSEEvent) -> bytes:
        if event.is_done or not event.data:
            return event.raw
        try:
            payload = jsonlib.loads(event.data)
        except ValueError:
            return b""  # malformed: never relayed
        if not isinstance(payload, dict):
            return b""
        d = self.delivered
        for name in ("id", "model", "created"):
            if getattr(d, name) is not None and name in payload:
                payload[name] = getattr(d, name)
        keep = False
        for choice in payload.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                delta.pop("role", None)
                if delta.get("content") == "" and len(delta) == 1:
                    delta.pop("content")
                if delta or choice.get("finish_reason"):
                    keep = True
        usage = payload.get("usage")
        if isinstance(usage, dict):
            keep = True
            if isinstance(usage.get("completion_tokens"), int):
                usage["completion_tokens"] += d.events
            if isinstance(usage.get("total_tokens"), int):
                usage["total_tokens"] += d.events
        if "error" in payload:
            keep = True
        if not keep:
            return b""  # a role-only chunk: the client has had its role
        return encode_event(jsonlib.dumps(payload))
