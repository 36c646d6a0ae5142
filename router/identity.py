"""``Identity``: what an ``authenticate`` implementation may return to say more than who.

Any object may be an identity; one that subclasses ``Identity`` also gives the router its
name (for logs and metrics), the models it may use (``/v1/models`` lists only those),
headers for every answer to its requests (rate-limit headers, say), and is told the token
usage of each answer (``answered``: what a token limit counts; the router reads it from
the bytes it relays, streams included, so counting needs no response transform). The
router reads these only for requests that have such an identity, so an open router pays
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping


class Identity:
    """Override what you need; the defaults allow everything and add no headers."""

    #: Shown in request logs and metrics (never a secret).
    name: str = ""

    def allows_model(self, model: str) -> bool:
        """Whether this identity may use ``model`` (the name the client sends)."""
        return True

    #: Whether ``answered`` wants the answer's usage (parsing it costs a little).
    wants_usage: bool = False

    def answered(self, status: int, usage: Mapping[str, int] | None) -> None:
        """Called once when a request to an OpenAI endpoint has finished, with its status and
        token usage (``prompt_tokens``, ``completion_tokens``, ``total_tokens``; None when
        the answer reported none, or ``wants_usage`` is false)."""

    def response_headers(self) -> Mapping[str, str] | None:
        """Headers added to every answer to this identity's requests (computed when the
        answer's headers are sent: for a stream, before its first byte)."""
        return None
