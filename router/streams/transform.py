"""The response-transform seam: a plugin changes a body, or a stream event by event.

A plugin's ``transform_response`` hook returns a ``ResponseTransform`` for the requests
it wants to change (once per request, when the backend's response headers are in) or
None. When no plugin returns one, the relay forwards the backend's bytes untouched (the
zero-copy path); otherwise bodies go through ``body`` and streams are split into events
(``router.streams.sse``) that go through ``event``, one at a time, in order.

Several transforms chain in hook order: the output of one is the input of the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from router.streams.sse import SSEEvent


class ResponseTransform:
    """Override what you need; the defaults pass everything through unchanged."""

    #: Set it once this transform will change nothing more in the stream (and has nothing
    #: for ``end``): when every transform has, the relay stops splitting the stream and
    #: forwards the backend's bytes as they come, as with no transform.
    passthrough: bool = False
    #: Set it when the transform renders the stream in another API (Anthropic's events,
    #: the Responses API's): it writes the stream's end and its failure itself (``end``,
    #: ``failed``), and the relay adds neither OpenAI's error event nor ``[DONE]``.
    renders_end: bool = False

    def body(self, body: bytes, content_type: str) -> bytes:
        """A whole (non-streamed) response body, as bytes; return the body to send."""
        return body

    def event(self, event: SSEEvent) -> Iterable[SSEEvent]:
        """One stream event (``[DONE]`` included); return the events to send in its place
        (none, it, or several)."""
        return (event,)

    def end(self) -> Iterable[SSEEvent]:
        """The upstream stream ended: events to send last (e.g. text held back)."""
        return ()

    def failed(self, message: str) -> Iterable[SSEEvent]:
        """The stream failed after it started (``renders_end`` transforms): the events
        that say so in its API. ``end`` is called after it."""
        return ()


class TransformChain:
    """Several transforms applied in order."""

    __slots__ = ("transforms",)

    def __init__(self, transforms: Sequence[ResponseTransform]) -> None:
        self.transforms = list(transforms)

    @property
    def passthrough(self) -> bool:
        return all(t.passthrough for t in self.transforms)

    def body(self, body: bytes, content_type: str) -> bytes:
        for transform in self.transforms:
            body = transform.body(body, content_type)
        return body

    def events(self, events: Iterable[SSEEvent]) -> list[SSEEvent]:
        out = list(events)
        for transform in self.transforms:
            out = [produced for event in out for produced in transform.event(event)]
        return out

    @property
    def renders_end(self) -> bool:
        return any(t.renders_end for t in self.transforms)

    def failed(self, message: str) -> list[SSEEvent]:
        """Each transform's failure events, passed through the transforms after it."""
        return self._tails(lambda t: t.failed(message))

    def end(self) -> list[SSEEvent]:
        """Each transform's tail, passed through the transforms after it."""
        return self._tails(lambda t: t.end())

    def _tails(self, of: Callable[[ResponseTransform], Iterable[SSEEvent]]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for i, transform in enumerate(self.transforms):
            tail = list(of(transform))
            for later in self.transforms[i + 1:]:
                tail = [produced for event in tail for produced in later.event(event)]
            out += tail
        return out

