"""What the local-engine tests share: plain HTTP reads of the router and its workers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from router.testing import RouterProcess

#: The admin key the engine tests' routers are configured with.
ADMIN = "test-admin"


def get_json(url: str, admin: bool = False) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"} if admin else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def worker_status(router: RouterProcess, model: str) -> dict[str, Any]:
    """The model's entry in ``/status`` (its worker's state, url, queue)."""
    _, status = get_json(f"{router.url}/status", admin=True)
    return status["backends"][0]["provider_status"]["models"][model]


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> float:
    """Seconds until ``predicate()`` held; AssertionError past ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError("condition not met in time")
