"""Commit a stream to the client only once it carries something: the first token.

Before the client has seen a byte, a backend that sends a role-only chunk and dies, that
answers 200 and then an error event, or that sends no content within
``first_token_timeout_s``, can be failed over like one that refused the connection.
``hold_first_content`` reads the stream's first events and holds them back until one
carries content (text, reasoning or a tool call), a finish reason, or ``[DONE]``, or
until ``commit_after_bytes`` are held; the relay then writes what was held and goes on
byte for byte. Only these first events are parsed: the rest of the stream is not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp

from router import jsonlib
from router.errors import UpstreamError, UpstreamTimeout
from router.http_upstream import describe_failure
from router.routing.deadlines import deadline
from router.streams.sse import SSEEvent, SSESplitter

#: Fields of a delta (chat) or choice (completions) that carry an answer.
_CONTENT_FIELDS = ("content", "reasoning_content", "reasoning", "tool_calls", "function_call", "text")


class StreamFailedEarly(UpstreamError):
    """The stream broke, ended or sent an error before its first token: nothing reached
    the client yet, so another backend can take the request."""

    status = 502
    code = "upstream_stream_failed"
    retryable = True


class MalformedEvent(Exception):
    """An event that is neither JSON nor ``[DONE]``."""


def carries_content(event: SSEEvent) -> bool | None:
    """True if the event carries content, a finish reason or ends the stream; False if
    not (a role chunk, a comment); None for an error event. Raises ``MalformedEvent``."""
    if event.is_done:
        return True
    if not event.data:
        return False
    try:
        payload = jsonlib.loads(event.data)
    except ValueError as exc:
        raise MalformedEvent(str(exc)) from exc
    if not isinstance(payload, dict):
        raise MalformedEvent("not a JSON object")
    if "error" in payload:
        return None
    for choice in payload.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason"):
            return True
        delta = choice.get("delta")
        fields = delta if isinstance(delta, dict) else choice
        if any(fields.get(name) for name in _CONTENT_FIELDS):
            return True
    return False


class HeldStream:
    """What was read before the commit, and the rest of the stream to relay."""

    __slots__ = ("held", "chunks", "malformed")

    def __init__(self, held: list[bytes], chunks: AsyncIterator[bytes], malformed: int) -> None:
        self.held = held
        self.chunks = chunks
        #: Malformed events dropped before the commit.
        self.malformed = malformed


async def hold_first_content(chunks: AsyncIterator[bytes], *, backend: str, limit_bytes: int,
                             timeout_s: float | None) -> HeldStream:
    """Read ``chunks`` until the first event with content; raise ``StreamFailedEarly`` or
    ``UpstreamTimeout`` (both retryable) if the stream fails first."""
    splitter = SSESplitter()
    held: list[bytes] = []  # whole events as they arrived (comments and malformed ones left out)
    size = 0
    malformed = 0
    try:
        async with (deadline(timeout_s) if timeout_s is not None else contextlib.nullcontext()):
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    raise StreamFailedEarly(f"backend {backend!r} ended the stream before its first token") from None
                except (aiohttp.ClientError, asyncio.TimeoutError, UpstreamError) as exc:
                    raise StreamFailedEarly(f"backend {backend!r}: the stream broke before its first token "
                                            f"({describe_failure(exc)})") from exc
                size += len(chunk)
                committed = False
                for event in splitter.feed(chunk):
                    try:
                        verdict = carries_content(event)
                    except MalformedEvent:
                        malformed += 1  # not relayed: strict clients raise on it
                        continue
                    if verdict is None:
                        raise StreamFailedEarly(f"backend {backend!r} sent an error event before its first "
                                                f"token: {event.data[:300].decode('utf-8', 'replace')}")
                    held.append(event.raw)
                    committed = committed or verdict
                if committed or size >= limit_bytes:
                    rest = splitter.take_rest()  # the start of the next event: the relay goes on from there
                    if rest:
                        held.append(rest)
                    return HeldStream(held, chunks, malformed)
    except TimeoutError as exc:
        raise UpstreamTimeout(f"backend {backend!r} sent no token within first_token_timeout_s = "
                              f"{timeout_s:g}s") from exc
