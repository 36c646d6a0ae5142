"""Anthropic Messages request → OpenAI chat completions request (docs/apis.md has the
table of every field: passed, translated, or rejected)."""

from __future__ import annotations

from typing import Any

from router import InvalidRequest, jsonlib

#: Top-level fields the translation reads; anything else is dropped (documented).
KNOWN = frozenset({"model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k",
                   "stream", "tools", "tool_choice", "thinking", "metadata", "x_router", "service_tier"})
#: Fields that change the answer in ways a chat backend cannot honour: refused.
REFUSED = {"mcp_servers": "MCP connectors are not supported by the router",
           "container": "code-execution containers are not supported by the router"}


def _number(payload: dict[str, Any], name: str, whole: bool = False) -> Any:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
        raise InvalidRequest(f"{name}: must be {'an integer' if whole else 'a number'}", param=name)
    return value


def _text_of(blocks: Any, where: str) -> str:
    """A string, or a list of text blocks, as one string."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise InvalidRequest(f"{where}: must be a string or a list of text blocks", param=where)
    parts = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest(f"{where}.{i}: only text blocks are accepted here", param=f"{where}.{i}")
        parts.append(block["text"])
    return "\n".join(parts)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"{where}.source: required (an object)", param=f"{where}.source")
    if source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise InvalidRequest(f"{where}.source: a base64 image needs media_type and data (strings)",
                                 param=f"{where}.source")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise InvalidRequest(f"{where}.source.type: must be 'base64' or 'url'", param=f"{where}.source.type")


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: required (a non-empty list)", param="messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where}: must be an object", param=where)
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"{where}.role: must be 'user' or 'assistant'", param=f"{where}.role")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise InvalidRequest(f"{where}.content: must be a string or a list of blocks", param=f"{where}.content")
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            at = f"{where}.content.{j}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                parts.append({"type": "text", "text": block["text"]})
            elif kind == "image" and role == "user":
                parts.append(_image(block, at))
            elif kind == "tool_use" and role == "assistant":
                if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                    raise InvalidRequest(f"{at}: a tool_use block needs id and name", param=at)
                calls.append({"id": block["id"], "type": "function",
                              "function": {"name": block["name"],
                                           "arguments": jsonlib.dumps(block.get("input") or {}).decode()}})
            elif kind == "tool_result" and role == "user":
                if not isinstance(block.get("tool_use_id"), str):
                    raise InvalidRequest(f"{at}.tool_use_id: required (a string)", param=f"{at}.tool_use_id")
                result = block.get("content")
                text = "" if result is None else _text_of(result, f"{at}.content")
                if block.get("is_error"):
                    text = f"Error: {text}"
                out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
            elif kind in ("thinking", "redacted_thinking") and role == "assistant":
                continue  # earlier thinking is not sent back to a chat backend
            else:
                raise InvalidRequest(f"{at}.type: {kind!r} is not accepted in a {role} message (text, "
                                     f"{'image, tool_result' if role == 'user' else 'tool_use, thinking'})",
                                     param=f"{at}.type")
        if not parts and not calls:
            continue  # only tool results (already added) or only thinking
        entry: dict[str, Any] = {"role": role}
        if any(p["type"] != "text" for p in parts):
            entry["content"] = parts
        else:
            entry["content"] = "\n".join(p["text"] for p in parts) if parts else None
        if calls:
            entry["tool_calls"] = calls
        out.append(entry)
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list", param="tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"{where}.name: required (a string)", param=f"{where}.name")
        if tool.get("type") not in (None, "custom"):
            raise InvalidRequest(f"{where}.type: server tools ({tool.get('type')!r}) are not supported; "
                                 "declare client tools with name and input_schema", param=f"{where}.type")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{where}.input_schema: required (a JSON schema object)",
                                 param=f"{where}.input_schema")
        function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise InvalidRequest("tool_choice: must be {'type': 'auto' | 'any' | 'none'} or "
                             "{'type': 'tool', 'name': ...}", param="tool_choice")
    if choice.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False


def effort(budget: int) -> str:
    """A thinking budget as a reasoning effort: < 4096 low, < 16384 medium, else high."""
    return "low" if budget < 4096 else "medium" if budget < 16384 else "high"


def to_chat(payload: dict[str, Any]) -> dict[str, Any]:
    for name, why in REFUSED.items():
        if name in payload:
            raise InvalidRequest(f"{name}: {why}", param=name)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: required (a string)", param="model")
    max_tokens = _number(payload, "max_tokens", whole=True)
    if max_tokens is None or max_tokens < 1:
        raise InvalidRequest("max_tokens: required (an integer of at least 1)", param="max_tokens")
    chat: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    messages = _messages(payload.get("messages"))
    if payload.get("system") is not None:
        system = _text_of(payload["system"], "system")
        if system:
            messages.insert(0, {"role": "system", "content": system})
    chat["messages"] = messages
    for name in ("temperature", "top_p"):
        value = _number(payload, name)
        if value is not None:
            chat[name] = value
    top_k = _number(payload, "top_k", whole=True)
    if top_k is not None:
        chat["top_k"] = top_k
    stops = payload.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest("stop_sequences: must be a list of strings", param="stop_sequences")
        if stops:
            chat["stop"] = stops
    if payload.get("tools") is not None:
        tools = _tools(payload["tools"])
        if tools:
            chat["tools"] = tools
    if payload.get("tool_choice") is not None:
        _tool_choice(payload["tool_choice"], chat)
    thinking = payload.get("thinking")
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
                raise InvalidRequest("thinking.budget_tokens: required with type 'enabled' (a positive integer)",
                                     param="thinking.budget_tokens")
            chat["reasoning_effort"] = effort(budget)
        elif kind not in ("disabled", "adaptive"):
            raise InvalidRequest("thinking.type: must be 'enabled', 'adaptive' or 'disabled'", param="thinking.type")
    metadata = payload.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    if isinstance(payload.get("x_router"), dict):
        chat["x_router"] = payload["x_router"]
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream: must be true or false", param="stream")
    chat["stream"] = bool(stream)
    if stream:
        chat["stream_options"] = {"include_usage": True}
    return chat


def estimate_tokens(payload: dict[str, Any]) -> int:
    """A rough count for ``count_tokens`` (no tokenizer): about 4 characters a token, over
    the text the request would send, plus a few tokens a message."""
    chat = to_chat({**payload, "max_tokens": 1, "stream": False})
    chars = 0
    for message in chat["messages"]:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text", "")) for p in content) + 1000 * sum(p["type"] != "text" for p in content)
        for call in message.get("tool_calls") or ():
            chars += len(call["function"]["name"]) + len(call["function"]["arguments"])
    if "tools" in chat:
        chars += len(jsonlib.dumps(chat["tools"]))
    return max(1, -(-chars // 4) + 4 * len(chat["messages"]))
