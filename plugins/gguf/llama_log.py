"""llama.cpp's log, captured in a ring buffer so a failed load can say why.

With ``verbose=False`` llama-cpp-python only says "Failed to load model from file"; the
reason (unknown architecture, bad tensor, out of memory...) is in llama.cpp's log.
"""

from __future__ import annotations

import collections
import ctypes
import os
import threading

import llama_cpp

_LOG: collections.deque[str] = collections.deque(maxlen=400)
_LOG_LOCK = threading.Lock()
_ECHO_LOG = False
_partial: list[str] = []


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    piece = text.decode("utf-8", "replace")
    if _ECHO_LOG:
        os.write(2, text)
    with _LOG_LOCK:
        _partial.append(piece)
        if piece.endswith("\n"):
            _LOG.append("".join(_partial).rstrip())
            _partial.clear()


def install_log_capture(echo: bool) -> None:
    """Route llama.cpp's log here (and to stderr too when ``echo``)."""
    global _ECHO_LOG
    _ECHO_LOG = echo
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def reinstall() -> None:
    """Install the capture again: ``Llama(verbose=...)`` may have replaced the callback."""
    install_log_capture(_ECHO_LOG)


def clear() -> None:
    with _LOG_LOCK:
        _LOG.clear()


def load_reason(lines: list[str] | None = None) -> str:
    """The lines of llama.cpp's log that explain a failure, most specific first."""
    if lines is None:
        with _LOG_LOCK:
            lines = list(_LOG)
    keys = ("error", "failed", "unable", "invalid", "unknown", "not supported", "cannot")
    hits = [ln.strip() for ln in lines if any(k in ln.lower() for k in keys)]
    seen: list[str] = []
    for line in hits:
        if line not in seen:
            seen.append(line)
    return "; ".join(seen[-4:])
