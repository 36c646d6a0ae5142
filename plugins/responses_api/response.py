"""OpenAI chat completion answers and streams → Responses objects and events, stored
when the request said ``store: true``."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from router import ResponseTransform, SSEEvent, jsonlib

from plugins.responses_api.request import Pending
from plugins.responses_api.store import ResponseStore


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage(raw: Any) -> dict[str, Any]:
    raw = raw if isinstance(raw, dict) else {}
    prompt, completion = int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0)
    cached = raw.get("prompt_tokens_details")
    reasoning = raw.get("completion_tokens_details")
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": int(cached.get("cached_tokens") or 0)
                                     if isinstance(cached, dict) else 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": int(reasoning.get("reasoning_tokens") or 0)
                                      if isinstance(reasoning, dict) else 0},
            "total_tokens": int(raw.get("total_tokens") or prompt + completion)}


def envelope(pending: Pending, status: str, output: list[dict[str, Any]], model: Any = None,
             use: dict[str, Any] | None = None, incomplete: str | None = None,
             error: dict[str, Any] | None = None) -> dict[str, Any]:
    echo = pending.echo
    text = echo["text"] if isinstance(echo["text"], dict) else {"format": {"type": "text"}}
    reasoning = echo["reasoning"] if isinstance(echo["reasoning"], dict) else {}
    return {
        "id": pending.response_id, "object": "response", "created_at": pending.created_at, "status": status,
        "model": model or echo["model"], "output": output,
        "error": error, "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": echo["instructions"], "max_output_tokens": echo["max_output_tokens"],
        "metadata": echo["metadata"] or {}, "parallel_tool_calls": echo["parallel_tool_calls"] is not False,
        "previous_response_id": echo["previous_response_id"],
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": pending.store, "temperature": echo["temperature"], "text": text,
        "tool_choice": echo["tool_choice"] or "auto", "tools": echo["tools"] or [], "top_p": echo["top_p"],
        "truncation": "disabled", "usage": use, "user": echo["user"],
    }


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}] if text else [], "status": "completed"}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def assistant_turn(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat message a stored response's output is, for ``previous_response_id``."""
    text = "".join(c["text"] for item in output if item["type"] == "message" for c in item["content"])
    calls = [{"id": item["call_id"], "type": "function",
              "function": {"name": item["name"], "arguments": item["arguments"]}}
             for item in output if item["type"] == "function_call"]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def keep(store: ResponseStore, pending: Pending, response: dict[str, Any]) -> None:
    if pending.store:
        store.put(pending.response_id, response, [*pending.history, assistant_turn(response["output"])])


def error_of(body: bytes) -> str:
    try:
        data = jsonlib.loads(body)
    except ValueError:
        return "the backend failed"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return "the backend failed"


class ResponseBody(ResponseTransform):
    def __init__(self, pending: Pending, store: ResponseStore) -> None:
        self.pending = pending
        self.store = store

    def body(self, body: bytes, content_type: str) -> bytes:
        try:
            data = jsonlib.loads(body)
        except ValueError:
            return body
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return body
        choice = choices[0]
        message: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
        output: list[dict[str, Any]] = []
        if message.get("reasoning_content"):
            output.append(reasoning_item(_id("rs"), str(message["reasoning_content"])))
        if message.get("content"):
            output.append(message_item(_id("msg"), str(message["content"])))
        for call in message.get("tool_calls") or ():
            function: dict[str, Any] = call.get("function") or {}
            output.append(call_item(_id("fc"), str(call.get("id") or _id("call")), str(function.get("name") or ""),
                                    str(function.get("arguments") or "")))
        length = choice.get("finish_reason") == "length"
        response = envelope(self.pending, "incomplete" if length else "completed", output, data.get("model"),
                            usage(data.get("usage")), "max_output_tokens" if length else None)
        keep(self.store, self.pending, response)
        return jsonlib.dumps(response)


class ResponseStream(ResponseTransform):
    """Chat chunks → ``response.created``, ``response.in_progress``, per item
    ``response.output_item.added`` / ``.done`` with their content events, then
    ``response.completed`` (``response.incomplete`` at the token limit); a break →
    ``response.failed``."""

    renders_end = True

    def __init__(self, pending: Pending, store: ResponseStore) -> None:
        self.pending = pending
        self.store = store
        self.sequence = 0
        self.started = False
        self.closed = False
        self.model: Any = None
        self.output: list[dict[str, Any]] = []   # finished items
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.calls: dict[int, dict[str, Any]] = {}  # a tool call's index → its item
        self.finish: Any = None
        self.usage: Any = None

    def _event(self, kind: str, data: dict[str, Any]) -> SSEEvent:
        event = SSEEvent(jsonlib.dumps({"type": kind, "sequence_number": self.sequence, **data}), event=kind)
        self.sequence += 1
        return event

    def _begin(self) -> list[SSEEvent]:
        self.started = True
        response = envelope(self.pending, "in_progress", [], self.model)
        return [self._event("response.created", {"response": response}),
                self._event("response.in_progress", {"response": response})]

    def _index(self) -> int:
        return len(self.output)

    def _open(self, item: dict[str, Any]) -> list[SSEEvent]:
        out = self._close_item()
        self.open = item
        index = self._index()
        kind = item["type"]
        if kind == "message":
            added = {**item, "status": "in_progress", "content": []}
        elif kind == "reasoning":
            added = {**item, "content": [], "status": "in_progress"}
        else:
            added = {**item, "arguments": "", "status": "in_progress"}
        out.append(self._event("response.output_item.added", {"output_index": index, "item": added}))
        if kind == "message":
            out.append(self._event("response.content_part.added", {
                "item_id": item["id"], "output_index": index, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}))
        return out

    def _close_item(self) -> list[SSEEvent]:
        item = self.open
        if item is None:
            return []
        self.open = None
        index = self._index()
        out = []
        if item["type"] == "message":
            text = item["content"][0]["text"]
            out.append(self._event("response.output_text.done", {
                "item_id": item["id"], "output_index": index, "content_index": 0, "text": text, "logprobs": []}))
            out.append(self._event("response.content_part.done", {
                "item_id": item["id"], "output_index": index, "content_index": 0, "part": item["content"][0]}))
        elif item["type"] == "reasoning":
            text = item["content"][0]["text"] if item["content"] else ""
            out.append(self._event("response.reasoning_text.done", {
                "item_id": item["id"], "output_index": index, "content_index": 0, "text": text}))
        else:
            out.append(self._event("response.function_call_arguments.done", {
                "item_id": item["id"], "output_index": index, "name": item["name"], "arguments": item["arguments"]}))
        out.append(self._event("response.output_item.done", {"output_index": index, "item": item}))
        self.output.append(item)
        return out

    def event(self, event: SSEEvent) -> Iterable[SSEEvent]:
        if self.closed:
            return ()
        if event.is_done:
            return self._complete()
        try:
            chunk = jsonlib.loads(event.data)
        except ValueError:
            return ()
        if not isinstance(chunk, dict):
            return ()
        if self.model is None and isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if "error" in chunk:
            return self._fail(error_of(event.data))
        out = [] if self.started else self._begin()
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta: dict[str, Any] = choice["delta"] if isinstance(choice.get("delta"), dict) else {}
            thinking = delta.get("reasoning_content")
            if thinking:
                if self.open is None or self.open["type"] != "reasoning":
                    out += self._open(reasoning_item(_id("rs"), ""))
                assert self.open is not None
                if not self.open["content"]:
                    self.open["content"] = [{"type": "reasoning_text", "text": ""}]
                self.open["content"][0]["text"] += thinking
                out.append(self._event("response.reasoning_text.delta", {
                    "item_id": self.open["id"], "output_index": self._index(), "content_index": 0,
                    "delta": thinking}))
            text = delta.get("content")
            if text:
                if self.open is None or self.open["type"] != "message":
                    out += self._open(message_item(_id("msg"), ""))
                assert self.open is not None
                self.open["content"][0]["text"] += text
                out.append(self._event("response.output_text.delta", {
                    "item_id": self.open["id"], "output_index": self._index(), "content_index": 0, "delta": text,
                    "logprobs": []}))
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                index = call.get("index", 0)
                function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
                if index not in self.calls:
                    item = call_item(_id("fc"), str(call.get("id") or _id("call")),
                                     str(function.get("name") or ""), "")
                    out += self._open(item)
                    self.calls[index] = item
                item = self.calls[index]
                arguments = function.get("arguments")
                if arguments and item is self.open:
                    item["arguments"] += arguments
                    out.append(self._event("response.function_call_arguments.delta", {
                        "item_id": item["id"], "output_index": self._index(), "delta": arguments}))
                elif arguments:  # a late fragment for a call already closed: kept in the final output
                    item["arguments"] += arguments
            if choice.get("finish_reason") is not None:
                self.finish = choice["finish_reason"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        return out

    def _complete(self) -> list[SSEEvent]:
        if self.finish is None:
            return self._fail("the backend ended the stream before it was complete")
        out = [] if self.started else self._begin()
        out += self._close_item()
        self.closed = True
        length = self.finish == "length"
        response = envelope(self.pending, "incomplete" if length else "completed", self.output, self.model,
                            usage(self.usage), "max_output_tokens" if length else None)
        keep(self.store, self.pending, response)
        out.append(self._event("response.incomplete" if length else "response.completed", {"response": response}))
        return out

    def _fail(self, message: str) -> list[SSEEvent]:
        out = [] if self.started else self._begin()
        self.closed = True
        output = [*self.output, *([self.open] if self.open is not None else [])]
        response = envelope(self.pending, "failed", output, self.model,
                            error={"code": "server_error", "message": message})
        out.append(self._event("response.failed", {"response": response}))
        return out

    def failed(self, message: str) -> Iterable[SSEEvent]:
        return () if self.closed else self._fail(message)

    def end(self) -> Iterable[SSEEvent]:
        if self.closed:
            return ()
        if self.finish is not None:
            return self._complete()
        return self._fail("the backend's stream broke before the answer was complete")
