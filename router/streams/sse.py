"""An incremental server-sent-events splitter: bytes in, whole events out.

Upstream chunks split events anywhere (inside ``data:``, between ``\\r`` and ``\\n``, in
the middle of a UTF-8 sequence); ``SSESplitter.feed`` returns only complete events and
keeps the rest for the next chunk. Used only when a response transform needs events: the
plain relay forwards bytes without looking at them.
"""

from __future__ import annotations

import dataclasses
import re

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\n|\r")


@dataclasses.dataclass(slots=True)
class SSEEvent:
    """One event: its ``data`` lines joined by ``\\n`` (bytes), its ``event`` name if any,
    and ``raw``, the exact bytes it arrived as (with its terminating blank line)."""

    data: bytes
    event: str | None = None
    id: str | None = None
    raw: bytes = b""

    @property
    def is_done(self) -> bool:
        return self.data == b"[DONE]"

    def encode(self) -> bytes:
        """The event as it would be sent (``raw`` when it came from upstream unchanged)."""
        if self.raw:
            return self.raw
        return encode_event(self.data, event=self.event, id=self.id)


def encode_event(data: bytes, *, event: str | None = None, id: str | None = None) -> bytes:  # noqa: A002
    out = b""
    if event is not None:
        out += b"event: " + event.encode() + b"\n"
    if id is not None:
        out += b"id: " + id.encode() + b"\n"
    for line in data.split(b"\n"):
        out += b"data: " + line + b"\n"
    return out + b"\n"


def parse_event(raw: bytes) -> SSEEvent | None:
    """One event's bytes (without or with its blank line); None for a comment-only block."""
    data: list[bytes] = []
    event: str | None = None
    event_id: str | None = None
    for line in _LINE.split(raw):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"id":
            event_id = value.decode("utf-8", "replace")
    if not data and event is None:
        return None
    return SSEEvent(b"\n".join(data), event=event, id=event_id, raw=raw)


class SSESplitter:
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by ``chunk`` (possibly none)."""
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SSEEvent] = []
        start = 0
        for match in _BOUNDARY.finditer(buffer):
            end = match.end()
            event = parse_event(buffer[start:end])
            if event is not None:
                events.append(event)
            start = end
        self._buffer = buffer[start:]
        # A lone "\r" at the end may be half of "\r\n\r\n": it stays in the buffer anyway.
        return events

    def flush(self) -> list[SSEEvent]:
        """At the end of the body: an event that lacked its final blank line, if any."""
        rest, self._buffer = self._buffer, b""
        if not rest.strip():
            return []
        event = parse_event(rest)
        if event is None:
            return []
        event.raw = rest + (b"" if rest.endswith((b"\n", b"\r")) else b"\n") + b"\n"
        return [event]

    def take_rest(self) -> bytes:
        """The bytes of an event not complete yet, handed back as they are (and forgotten)."""
        rest, self._buffer = self._buffer, b""
        return rest

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of an event."""
        return len(self._buffer)
