"""JSON in one place: orjson when installed (the ``fast`` extra), else the standard library.

Both ``dumps`` return bytes so callers never care which is in use.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson

    loads = orjson.loads

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - exercised only without the extra
    loads = json.loads  # type: ignore[assignment]

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

__all__ = ["dumps", "loads"]
