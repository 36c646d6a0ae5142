"""The ``dynamic`` provider's keys, and what a request may say about how its model is loaded.

Backend keys (``DynamicOptions``) are read by the config loader like every provider's
(file, key and line in errors). A request's XandRouting fields (``backend``, ``device``,
``ttl``, ``n_ctx``, ``n_gpu_layers``, ``gpu_memory_utilization``, ``max_model_len``) are
``LOAD_FIELDS``: optional, checked here, removed from the body before it reaches the engine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from router import InvalidRequest, setting


@dataclasses.dataclass
class CmdEngine:
    """An engine run as a command: any OpenAI-compatible server (vLLM, SGLang, llama-server).

    ``cmd`` is split like a shell line; ``{path}``, ``{port}``, ``{name}`` and every load
    option (``defaults`` and the request's fields) are placeholders.
    """

    cmd: str
    health: str = "/health"
    match: list[str] = dataclasses.field(default_factory=list)
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    stop_timeout_s: float = setting(30.0, gt=0)
    env: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DynamicOptions:
    """The ``dynamic`` provider's backend keys (docs/dynamic.md)."""

    models_dir: str = "./models"
    path_prefix: str = "/models"
    max_loaded: int | None = setting(None, ge=1)
    max_memory_gb: float | None = setting(None, gt=0)
    default_ttl_s: float = setting(600.0, ge=0)
    load_timeout_s: float = setting(300.0, gt=0)
    max_wait_s: float = setting(60.0, ge=0)
    #: How long a request waiting for a swap may be held back so that requests for the
    #: loaded model go first (grouping: A A B B, not A B A B). 0: no grouping.
    group_window_s: float = setting(5.0, ge=0)
    engines: dict[str, CmdEngine] = dataclasses.field(default_factory=dict)
    #: Options for the built-in engines (llamacpp: n_ctx, n_gpu_layers, n_threads...;
    #: transformers: device, dtype, max_batch...), as their worker flags take them.
    llamacpp: dict[str, Any] = dataclasses.field(default_factory=dict)
    transformers: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The download jobs' SQLite file (default: models_dir/.downloads/jobs.db).
    downloads_store: str | None = None


#: The engines every dynamic backend has.
BUILTIN_ENGINES = ("llamacpp", "transformers")

#: Request fields about loading (XandRouting's), never sent to the engine.
LOAD_FIELDS = ("backend", "device", "ttl", "n_ctx", "n_gpu_layers", "gpu_memory_utilization", "max_model_len")

_KINDS: dict[str, tuple[type, ...]] = {
    "backend": (str,), "device": (str,), "ttl": (int, float), "n_ctx": (int,), "n_gpu_layers": (int,),
    "gpu_memory_utilization": (int, float), "max_model_len": (int,),
}


@dataclasses.dataclass(frozen=True)
class LoadRequest:
    """What one request says about its model's loading."""

    engine: str | None = None
    #: Load options (device, n_ctx, ...): a different set reloads the model.
    options: tuple[tuple[str, Any], ...] = ()
    ttl_s: float | None = None


def _checked(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, _KINDS[name]):
        kind = " or ".join(t.__name__ for t in _KINDS[name])
        raise InvalidRequest(f"{name!r} must be a {kind}, got {value!r}", param=name)
    return value


def load_request(payload: dict[str, Any]) -> LoadRequest:
    """The load fields of a request body, checked (400 naming the field)."""
    options: dict[str, Any] = {}
    engine: str | None = None
    ttl: float | None = None
    for name in LOAD_FIELDS:
        if name not in payload or payload[name] is None:
            continue
        value = _checked(name, payload[name])
        if name == "backend":
            engine = value
        elif name == "ttl":
            if value < 0:
                raise InvalidRequest(f"'ttl' must be >= 0 seconds (0: never unload), got {value!r}", param="ttl")
            ttl = float(value)
        else:
            if name in ("n_ctx", "max_model_len") and value < 0:
                raise InvalidRequest(f"{name!r} must be >= 0, got {value!r}", param=name)
            if name == "gpu_memory_utilization" and not 0 < value <= 1:
                raise InvalidRequest(f"'gpu_memory_utilization' must be in (0, 1], got {value!r}", param=name)
            options[name] = value
    return LoadRequest(engine, tuple(sorted(options.items())), ttl)
