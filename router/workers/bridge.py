"""One request crossing from the worker's event loop to the engine's thread and back.

The engine runs on its own thread (``router.workers.scheduling``); the HTTP handler waits
on the loop. A ``Job`` carries the request there and its outcome back: a whole result,
or stream chunks one by one (each handed over as it is made, so tokens are never
batched), or an error. ``stop`` is how the loop tells the engine the client went away:
an engine checks it after every token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

#: What an engine operation returns: a whole response, or the chunks of a stream.
Result = dict[str, Any] | Iterator[dict[str, Any]]
#: An engine operation: the request's JSON body and the stop flag in, a result out.
Operation = Callable[[dict[str, Any], threading.Event], Result]

STREAMING = object()  # what ``Job.outcome`` returns for a stream
_END = object()


class Job:
    """A request for the engine: ``kind`` (an OpenAI endpoint such as
    ``chat/completions``, or an extension's name), its ``payload``, the ``operation`` that
    serves it, and the ``stop`` flag. Thread side: ``result``/``chunk``/``fail``/``end``
    (or ``run``, which drives ``operation`` through them). Loop side: ``outcome``, then
    ``chunks`` for a stream."""

    __slots__ = ("kind", "payload", "operation", "stop", "emitted", "_loop", "_queue", "_streaming")

    def __init__(self, kind: str, payload: dict[str, Any], operation: Operation) -> None:
        self.kind = kind
        self.payload = payload
        self.operation = operation
        self.stop = threading.Event()
        #: Stream chunks handed over so far.
        self.emitted = 0
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._streaming = False

    # -- the engine's thread -------------------------------------------------------------------

    def _put(self, item: object) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def result(self, body: dict[str, Any]) -> None:
        """The whole response."""
        self._put(body)

    def chunk(self, chunk: dict[str, Any]) -> None:
        """One stream chunk (the first one starts the stream)."""
        if not self._streaming:
            self._streaming = True
            self._put(STREAMING)
        self.emitted += 1
        self._put(chunk)

    def fail(self, error: BaseException) -> None:
        """The request failed: before the stream started, the client gets the error's
        status; after, an error event ends the stream."""
        self._put(error)

    def end(self) -> None:
        """The stream is over (an empty stream is still a stream)."""
        if not self._streaming:
            self._streaming = True
            self._put(STREAMING)
        self._put(_END)

    def run(self) -> None:
        """Run ``operation`` and hand over what it returns: its result, or each chunk of
        its iterator until the iterator ends or ``stop`` is set (then it is closed)."""
        try:
            out = self.operation(self.payload, self.stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop
            self.fail(exc)
            return
        if isinstance(out, dict):
            self.result(out)
            return
        try:
            for chunk in out:
                self.chunk(chunk)
                if self.stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001
            self.fail(exc)
        finally:
            close: Callable[[], object] | None = getattr(out, "close", None)
            if close is not None:
                close()  # a generator closed early leaves its engine usable
            self.end()

    # -- the loop --------------------------------------------------------------------------------

    async def outcome(self) -> dict[str, Any] | object:
        """The whole result, or ``STREAMING``; raises the error if the request failed."""
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """A stream's chunks, after ``outcome`` returned ``STREAMING``; raises a
        mid-stream error."""
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, dict)
            yield item
