"""OpenAI chat completion answers and streams → Anthropic Messages answers and events,
and errors in Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from router import ResponseTransform, SSEEvent, jsonlib

#: An HTTP status → Anthropic's error type.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 408: "timeout_error", 413: "request_too_large", 429: "rate_limit_error",
               503: "overloaded_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def _message_of(body: bytes) -> str:
    try:
        data = jsonlib.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:500] or "the backend failed"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return "the backend failed"


STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}


def stop_reason(finish: Any, matched: Any, stops: list[str], tools_used: bool) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) for a chat finish reason; ``matched`` is the stop
    string the backend reports (vLLM's ``stop_reason``), if any."""
    if tools_used and finish in ("stop", "tool_calls", None):
        return "tool_use", None
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    if finish is None:
        return None, None
    return STOP_REASONS.get(str(finish), "end_turn"), None


def usage(raw: Any) -> dict[str, Any]:
    raw = raw if isinstance(raw, dict) else {}
    out: dict[str, Any] = {"input_tokens": int(raw.get("prompt_tokens") or 0),
                           "output_tokens": int(raw.get("completion_tokens") or 0)}
    details = raw.get("prompt_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens"):
        out["cache_read_input_tokens"] = int(details["cached_tokens"])
    return out


def tool_input(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = jsonlib.loads(arguments)
    except ValueError:
        return {"_unparsed_arguments": arguments}
    return value if isinstance(value, dict) else {"_value": value}


def message_id(chat_id: Any) -> str:
    return f"msg_{chat_id}" if isinstance(chat_id, str) and chat_id else "msg_router"


class ErrorBody(ResponseTransform):
    """A backend's error answer, reshaped."""

    def __init__(self, status: int) -> None:
        self.status = status

    def body(self, body: bytes, content_type: str) -> bytes:
        return jsonlib.dumps(error_body(self.status, _message_of(body)))


class MessageBody(ResponseTransform):
    def __init__(self, stops: list[str]) -> None:
        self.stops = stops

    def body(self, body: bytes, content_type: str) -> bytes:
        try:
            data = jsonlib.loads(body)
        except ValueError:
            return jsonlib.dumps(error_body(502, "the backend's answer is not JSON"))
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return jsonlib.dumps(error_body(502, "the backend's answer has no choices"))
        choice = choices[0]
        message: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
        content: list[dict[str, Any]] = []
        if message.get("reasoning_content"):
            content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        calls = message.get("tool_calls") or []
        for call in calls:
            function: dict[str, Any] = call.get("function") or {}
            content.append({"type": "tool_use", "id": call.get("id") or "toolu_router", "name": function.get("name"),
                            "input": tool_input(function.get("arguments"))})
        reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), self.stops, bool(calls))
        return jsonlib.dumps({"id": message_id(data.get("id")), "type": "message", "role": "assistant",
                              "model": data.get("model"), "content": content,
                              "stop_reason": reason or "end_turn", "stop_sequence": sequence,
                              "usage": usage(data.get("usage"))})


def _event(kind: str, data: dict[str, Any]) -> SSEEvent:
    return SSEEvent(jsonlib.dumps({"type": kind, **data}), event=kind)


class MessageStream(ResponseTransform):
    """Chat chunks → ``message_start``, ``content_block_*`` (text, thinking, tool_use with
    ``input_json_delta``), ``message_delta``, ``message_stop``; an error → ``error``."""

    renders_end = True

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.started = False
        self.closed = False
        self.block = -1          # the open block's index (-1: none)
        self.kind = ""           # its type
        self.tools: dict[int, int] = {}  # a tool call's index → its block
        self.finish: Any = None
        self.matched: Any = None
        self.usage: Any = None

    def _start(self, chunk: dict[str, Any]) -> list[SSEEvent]:
        self.started = True
        message: dict[str, Any] = {"id": message_id(chunk.get("id")), "type": "message", "role": "assistant",
                   "model": chunk.get("model"), "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        return [_event("message_start", {"message": message}), _event("ping", {})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[SSEEvent]:
        out = self._stop_block()
        self.block += 1
        self.kind = kind
        out.append(_event("content_block_start", {"index": self.block, "content_block": block}))
        return out

    def _stop_block(self) -> list[SSEEvent]:
        if self.kind == "":
            return []
        self.kind = ""
        return [_event("content_block_stop", {"index": self.block})]

    def event(self, event: SSEEvent) -> Iterable[SSEEvent]:
        if self.closed:
            return ()
        if event.is_done:
            return self._close()
        try:
            chunk = jsonlib.loads(event.data)
        except ValueError:
            return ()  # the relay drops malformed events before the commit; later ones are noise
        if not isinstance(chunk, dict):
            return ()
        if "error" in chunk:
            return self._fail(_message_of(event.data))
        out = [] if self.started else self._start(chunk)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta: dict[str, Any] = choice["delta"] if isinstance(choice.get("delta"), dict) else {}
            thinking = delta.get("reasoning_content")
            if thinking:
                if self.kind != "thinking":
                    out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out.append(_event("content_block_delta", {"index": self.block,
                                                          "delta": {"type": "thinking_delta", "thinking": thinking}}))
            text = delta.get("content")
            if text:
                if self.kind != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out.append(_event("content_block_delta", {"index": self.block,
                                                          "delta": {"type": "text_delta", "text": text}}))
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                index = call.get("index", 0)
                function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
                if index not in self.tools:
                    out += self._open("tool_use", {"type": "tool_use", "id": call.get("id") or f"toolu_{index}",
                                                   "name": function.get("name") or "", "input": {}})
                    self.tools[index] = self.block
                arguments = function.get("arguments")
                if arguments:
                    out.append(_event("content_block_delta", {
                        "index": self.tools[index], "delta": {"type": "input_json_delta", "partial_json": arguments}}))
            if choice.get("finish_reason") is not None:
                self.finish = choice["finish_reason"]
                self.matched = choice.get("stop_reason")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        return out

    def _close(self) -> list[SSEEvent]:
        if self.finish is None:
            return self._fail("the backend ended the stream before it was complete")
        out = [] if self.started else self._start({})
        out += self._stop_block()
        self.closed = True
        reason, sequence = stop_reason(self.finish, self.matched, self.stops, bool(self.tools))
        out.append(_event("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": sequence},
                                            "usage": usage(self.usage)}))
        out.append(_event("message_stop", {}))
        return out

    def _fail(self, message: str) -> list[SSEEvent]:
        self.closed = True
        return [_event("error", error_body(500, message))]

    def failed(self, message: str) -> Iterable[SSEEvent]:
        return () if self.closed else self._fail(message)

    def end(self) -> Iterable[SSEEvent]:
        if self.closed:
            return ()
        if self.finish is not None:  # a proper finish without [DONE]
            return self._close()
        return self._fail("the backend's stream broke before the answer was complete")
