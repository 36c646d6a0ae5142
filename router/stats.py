"""The router's own counters since start: shown in ``/status`` and read by ``/metrics``
at scrape time, so counting costs a request a few integer additions and nothing more."""

from __future__ import annotations

import collections


class Stats:
    __slots__ = ("requests", "retries", "errors", "continuations", "hedges", "responses_by_status")

    def __init__(self) -> None:
        #: Client requests received on the OpenAI endpoints.
        self.requests = 0
        #: Extra attempts made on another backend (failover).
        self.retries = 0
        #: Requests that ended with a status >= 400.
        self.errors = 0
        #: Streams broken mid-answer and continued on another backend.
        self.continuations = 0
        #: Second attempts started because the first had no first token in time.
        self.hedges = 0
        self.responses_by_status: collections.Counter[int] = collections.Counter()

    def finished(self, status: int) -> None:
        self.responses_by_status[status] += 1
        if status >= 400:
            self.errors += 1
