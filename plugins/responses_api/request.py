"""OpenAI Responses request → chat completions request (docs/apis.md has the table of
every field: passed, translated, or rejected)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from router import InvalidRequest, NotFound

from plugins.responses_api.store import ResponseStore

#: Fields refused: they need state or tools the router does not have.
REFUSED = {"background": "background responses are not supported by the router",
           "conversation": "conversations are not supported by the router; use previous_response_id",
           "prompt": "stored prompt templates are not supported by the router"}
#: Fields echoed back in the response object as the client sent them.
ECHOED = ("instructions", "max_output_tokens", "metadata", "parallel_tool_calls", "previous_response_id",
          "temperature", "tool_choice", "tools", "top_p", "user", "text", "reasoning")


@dataclasses.dataclass
class Pending:
    """What the answer's translation needs of the request."""

    response_id: str
    created_at: int
    store: bool
    echo: dict[str, Any]
    #: The conversation without ``instructions``: previous turns and this input.
    history: list[dict[str, Any]]


def _number(payload: dict[str, Any], name: str, whole: bool = False) -> Any:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
        raise InvalidRequest(f"'{name}' must be {'an integer' if whole else 'a number'}", param=name)
    return value


def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}' must be a string or a list of content parts", param=where)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidRequest(f"'{where}[{i}].type': {kind!r} is not accepted (input_text, output_text, "
                                 "input_image with an image_url; file ids and files are not supported)",
                                 param=f"{where}[{i}].type")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _input(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise InvalidRequest("'input' is required: a string or a non-empty list of items", param="input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(f"'{where}.role' must be user, assistant, system or developer",
                                     param=f"{where}.role")
            out.append({"role": "system" if role == "developer" else role,
                        "content": _parts(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
                raise InvalidRequest(f"'{where}': a function_call item needs call_id and name", param=where)
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": str(item.get("arguments") or "")}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and isinstance(last.get("content"), str):
                last["tool_calls"] = [call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise InvalidRequest(f"'{where}.call_id' is required", param=f"{where}.call_id")
            output = item.get("output")
            text = output if isinstance(output, str) else _parts(output, f"{where}.output")
            if not isinstance(text, str):
                raise InvalidRequest(f"'{where}.output' must be text", param=f"{where}.output")
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind == "reasoning":
            continue  # earlier reasoning is not sent back to a chat backend
        else:
            raise InvalidRequest(f"'{where}.type': {kind!r} is not supported (message, function_call, "
                                 "function_call_output, reasoning)", param=f"{where}.type")
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list", param="tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise InvalidRequest(f"'{where}.type': only function tools are supported, not {kind!r}",
                                 param=f"{where}.type")
        if not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"'{where}.name' is required", param=f"{where}.name")
        function: dict[str, Any] = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object"}}
        for key in ("description", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest("'tool_choice' must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}",
                         param="tool_choice")


def _format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict):
        raise InvalidRequest("'text' must be an object", param="text")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict) and isinstance(fmt.get("name"), str):
        schema: dict[str, Any] = {"name": fmt["name"], "schema": fmt["schema"]}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest("'text.format' must be {'type': 'text'}, {'type': 'json_object'} or "
                         "{'type': 'json_schema', 'name': ..., 'schema': {...}}", param="text.format")


def to_chat(payload: dict[str, Any], store: ResponseStore) -> tuple[dict[str, Any], Pending]:
    for name, why in REFUSED.items():
        if payload.get(name):
            raise InvalidRequest(f"'{name}': {why}", param=name)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required (a string)", param="model")
    history: list[dict[str, Any]] = []
    previous = payload.get("previous_response_id")
    if previous is not None:
        entry = store.get(previous) if isinstance(previous, str) else None
        if entry is None:
            raise NotFound(f"Previous response with id {previous!r} not found (never stored, deleted or "
                           "expired: responses.ttl_s)", param="previous_response_id")
        history = [dict(m) for m in entry.messages]
    history += _input(payload.get("input"))
    messages = list(history)
    instructions = payload.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequest("'instructions' must be a string", param="instructions")
        messages.insert(0, {"role": "system", "content": instructions})
    chat: dict[str, Any] = {"model": model, "messages": messages}
    max_tokens = _number(payload, "max_output_tokens", whole=True)
    if max_tokens is not None:
        chat["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        value = _number(payload, name)
        if value is not None:
            chat[name] = value
    if payload.get("tools"):
        chat["tools"] = _tools(payload["tools"])
    if payload.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(payload["tool_choice"])
    if isinstance(payload.get("parallel_tool_calls"), bool):
        chat["parallel_tool_calls"] = payload["parallel_tool_calls"]
    if payload.get("text") is not None:
        response_format = _format(payload["text"])
        if response_format is not None:
            chat["response_format"] = response_format
    reasoning = payload.get("reasoning")
    if reasoning is not None:
        effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
        if effort is not None and effort not in ("none", "minimal", "low", "medium", "high", "xhigh"):
            raise InvalidRequest("'reasoning.effort' must be none, minimal, low, medium, high or xhigh",
                                 param="reasoning.effort")
        if effort is not None:
            chat["reasoning_effort"] = effort
    for name in ("user", "safety_identifier"):
        if isinstance(payload.get(name), str):
            chat["user"] = payload[name]
    if isinstance(payload.get("x_router"), dict):
        chat["x_router"] = payload["x_router"]
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false", param="stream")
    chat["stream"] = bool(stream)
    if stream:
        chat["stream_options"] = {"include_usage": True}
    keep = payload.get("store", True)
    if not isinstance(keep, bool):
        raise InvalidRequest("'store' must be true or false", param="store")
    echo = {name: payload.get(name) for name in ECHOED}
    echo["model"] = model
    pending = Pending(f"resp_{uuid.uuid4().hex}", int(time.time()), keep, echo, history)
    return chat, pending
