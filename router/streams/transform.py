"""The response-transform seam: a plugin changes a body, or a stream event by event.

A plugin's ``transform_response`` hook returns a ``ResponseTransform`` for the requests
it wants to change (once per request, when the backend's response headers are in) or
None. When no plugin returns one, the relay forwards the backend's bytes untouched (the
zero-copy path); otherwise bodies go through ``body`` and streams are split into events
(``router.streams.sse``) that go through ``event``, one at a time, in order.

Several transforms chain in hook order: the output of one is the input of the next.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from router.streams.sse import SSEEvent


class ResponseTransform:
    """Override what you need; the defaults pass everything through unchanged."""

    #: Set it once this transform will change nothing more in the stream (and has nothing
    #: for ``end``): when every transform has, the relay stops splitting the stream and
    #: forwards the backend's bytes as they come, as with no transform.
    passthrough: bool = False

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

    def end(self) -> list[SSEEvent]:
        """Each transform's tail, passed through the transforms after it."""
        out: list[SSEEvent] = []
        for i, transform in enumerate(self.transforms):
            tail = list(transform.end())
            for later in self.transforms[i + 1:]:
                tail = [produced for event in tail for produced in later.event(event)]
            out += tail
        return out

