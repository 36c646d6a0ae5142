"""The lines a worker prints on stderr for its supervisor: where it listens, and why its
model failed to load.

``{name} worker: listening on http://HOST:PORT`` is printed once the socket is bound (a
worker started with port 0 tells its supervisor the port this way; users see it in the
engine's docs). ``{name} worker: load failed: {"code": ..., "message": ...}`` carries the
error's code and message as JSON: the engine classifies a load failure once, and the
supervisor raises ``ModelLoadFailed`` with that code, never guessing it from text.
"""

from __future__ import annotations

import dataclasses
import re

from router.errors import RouterError
from router.jsonlib import dumps, loads

_LISTENING = re.compile(r"^(?P<name>[\w.-]+) worker: listening on http://(?P<host>[^\s:]+|\[[^\]]+\]):(?P<port>\d+)$")
_LOAD_FAILED = re.compile(r"^(?P<name>[\w.-]+) worker: load failed: (?P<json>\{.*\})$")


@dataclasses.dataclass(frozen=True)
class Listening:
    host: str
    port: int


@dataclasses.dataclass(frozen=True)
class LoadFailed:
    code: str
    message: str


def listening_line(name: str, host: str, port: int) -> str:
    return f"{name} worker: listening on http://{host}:{port}"


def serving_line(name: str, model: str, host: str, port: int) -> str:
    """For people reading the log: the model is loaded and requests are served."""
    return f"{name} worker: serving {model!r} on http://{host}:{port}"


def load_failed_line(name: str, error: RouterError) -> str:
    body = dumps({"code": error.code or "model_load_failed", "message": error.message})
    return f"{name} worker: load failed: {body.decode()}"


def parse_line(line: str) -> Listening | LoadFailed | None:
    """What a line of a worker's stderr tells its supervisor (None: an ordinary log line)."""
    match = _LISTENING.match(line)
    if match:
        return Listening(match["host"], int(match["port"]))
    match = _LOAD_FAILED.match(line)
    if match:
        try:
            data = loads(match["json"])
        except ValueError:
            return None
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return LoadFailed(str(data.get("code") or "model_load_failed"), data["message"])
    return None
