"""JSON in one place: orjson when installed (the ``fast`` extra), else the standard library.

Both backends behave the same for callers: ``dumps`` returns bytes, and every bad input
raises ``ValueError`` — invalid JSON, NaN/Infinity (not JSON, though the standard library
accepts them), nesting too deep to parse (the standard library would raise
``RecursionError``), and text that cannot be encoded (a lone surrogate such as
``"\\ud800"``). So a hostile body is a 400 on a core install too, never a 500.
"""

from __future__ import annotations

import json
from typing import Any


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


try:
    import orjson

    loads = orjson.loads  # raises orjson.JSONDecodeError, a ValueError, for all of the above

    def dumps(obj: Any) -> bytes:
        try:
            return orjson.dumps(obj)
        except TypeError as exc:  # orjson.JSONEncodeError: e.g. a lone surrogate
            raise ValueError(str(exc)) from exc

except ImportError:  # pragma: no cover - exercised only without the extra
    _decoder = json.JSONDecoder(parse_constant=_no_constants)

    def loads(data: bytes | str) -> Any:  # type: ignore[misc]
        try:
            text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
            return _decoder.decode(text)
        except RecursionError as exc:
            raise ValueError("the JSON is nested too deeply") from exc
        except UnicodeDecodeError as exc:
            raise ValueError(f"the body is not UTF-8: {exc}") from exc

    def dumps(obj: Any) -> bytes:
        try:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        except (UnicodeEncodeError, RecursionError) as exc:
            raise ValueError(str(exc)) from exc

__all__ = ["dumps", "loads"]
