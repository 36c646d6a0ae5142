"""Text around the model, in plain Python (no torch): chat prompts, stop strings, and
turning token ids into text one token at a time.

A tokenizer without a chat template gets the fallback seed 000's MiniLLM server used::

    System: {system message}
    User: {user message}
    Assistant: {assistant message}
    Assistant:

with ``"\\nUser:"`` and ``"\\nSystem:"`` as extra stop strings, so a base model does not
write the next turn of the conversation itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from router import InvalidRequest

FALLBACK_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool",
                  "developer": "System"}
FALLBACK_STOPS = ("\nUser:", "\nSystem:")


def message_text(content: Any) -> str:
    """A message's ``content``: a string, null, or a list of parts (their text joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict):
                raise InvalidRequest(f"message parts of type {part.get('type')!r} are not supported "
                                     "by this model (text only)", param="messages")
        return "".join(parts)
    raise InvalidRequest("a message's 'content' must be a string or a list of parts", param="messages")


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """The messages with text content, checked."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list", param="messages")
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequest("each message needs a 'role'", param="messages")
        out.append({**m, "content": message_text(m.get("content"))})
    return out


def fallback_prompt(messages: Sequence[dict[str, Any]]) -> str:
    """Seed 000's ``System:/User:/Assistant:`` format, ending with ``Assistant:``."""
    lines = [f"{FALLBACK_ROLES.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages]
    lines.append("Assistant:")
    return "\n".join(lines)


def stop_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v for v in value if v]
    raise InvalidRequest("'stop' must be a string or a list of strings", param="stop")


class StopMatcher:
    """Finds stop strings in text that arrives piece by piece. ``feed`` returns the text
    that may be shown now and whether a stop string was met (the text before it is
    shown, the stop string and what follows are not). Text that could be the start of a
    stop string is held back until the next piece tells."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        if not self.stops:
            return piece, False
        text = self.held + piece
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.held = ""
            return text[:min(found)], True
        keep = 0
        for n in range(1, min(self.longest, len(text)) + 1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                keep = n
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """What was held back, at the end (no stop string came)."""
        held, self.held = self.held, ""
        return held


class Detokenizer:
    """Token ids to text, one token at a time: a token's text is given once it is whole
    (a byte-level token can end mid-character; its text waits for the next token)."""

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self.decode(self.ids[self.prefix:self.read])
        text = self.decode(self.ids[self.prefix:])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(before):]
        return ""

    def flush(self) -> str:
        before = self.decode(self.ids[self.prefix:self.read])
        text = self.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(before):]
