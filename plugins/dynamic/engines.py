"""How a model is started: which engine takes it, and the worker command for it.

Built in: ``llamacpp`` (a ``.gguf`` file, the gguf provider's worker) and
``transformers`` (a Hugging Face folder, the gptq provider's worker), both run as
``python -m router worker --provider ...`` with their flags. Configured ``cmd`` engines
run any OpenAI-compatible server as llama-swap does. The engine is the request's
``backend`` field, else the first ``cmd`` engine whose ``match`` globs take the path,
else by kind (``.gguf`` -> llamacpp, a folder -> transformers).
"""

from __future__ import annotations

import fnmatch
import shlex
import string
from collections.abc import Mapping
from typing import Any

from plugins.dynamic.inventory import ModelFile
from plugins.dynamic.settings import BUILTIN_ENGINES, CmdEngine, DynamicOptions
from router import InvalidRequest, shown
from router.workers import Launch

_WORKERS = {"llamacpp": "gguf", "transformers": "gptq"}
_KINDS = {"llamacpp": "gguf", "transformers": "transformers"}
_DESCRIBED = {"gguf": "a .gguf file", "transformers": "a Hugging Face model folder"}


def engine_names(options: DynamicOptions) -> list[str]:
    return [*BUILTIN_ENGINES, *options.engines]


def choose_engine(options: DynamicOptions, model: ModelFile, asked: str | None) -> str:
    """The engine for ``model`` (``asked``: the request's ``backend`` field)."""
    if asked is not None:
        if asked not in BUILTIN_ENGINES and asked not in options.engines:
            raise InvalidRequest(f"unknown engine {shown(asked)} in 'backend'; this router has: "
                                 f"{', '.join(engine_names(options))}", param="backend")
        kind = _KINDS.get(asked)
        if kind is not None and kind != model.kind:
            raise InvalidRequest(f"engine {asked!r} serves {_DESCRIBED[kind]}, and {shown(model.name)} is "
                                 f"{_DESCRIBED[model.kind]}", param="backend")
        return asked
    for name, engine in options.engines.items():
        if any(fnmatch.fnmatchcase(model.name, glob) for glob in engine.match):
            return name
    return "llamacpp" if model.kind == "gguf" else "transformers"


def _flag(name: str, value: Any) -> list[str]:
    option = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [option if value else "--no-" + name.replace("_", "-")]
    return [option, str(value)]


def _builtin_flags(engine: str, model: ModelFile, served_id: str, base: Mapping[str, Any],
                   options: Mapping[str, Any]) -> list[str]:
    knobs = dict(base)
    if engine == "llamacpp":
        for key in ("n_ctx", "n_gpu_layers"):
            if key in options:
                knobs[key] = options[key]
        # XandRouting's device field means CPU or GPU for llama.cpp too: cpu is no GPU
        # layers unless the request says otherwise (n_gpu_layers: 0 is honoured as CPU).
        if options.get("device") == "cpu" and "n_gpu_layers" not in options:
            knobs["n_gpu_layers"] = 0
    else:
        if "device" in options:
            knobs["device"] = options["device"]
        if "max_model_len" in options:
            knobs["context_length"] = options["max_model_len"]
    flags = ["--model", str(model.path), "--model-id", served_id, "--port", "0"]
    for key, value in knobs.items():
        if value is not None:
            flags += _flag(key, value)
    return flags


def _cmd_argv(name: str, engine: CmdEngine, model: ModelFile, served_id: str,
              options: Mapping[str, Any]) -> list[str]:
    values: dict[str, Any] = {**engine.defaults, **options, "path": str(model.path), "name": served_id,
                              "port": "{port}"}  # the port is filled in by Launch once chosen
    argv = []
    for arg in shlex.split(engine.cmd):
        needed = [field for _, field, _, _ in string.Formatter().parse(arg) if field]
        missing = [f for f in needed if f not in values]
        if missing:
            raise InvalidRequest(
                f"engine {name!r} needs {{{missing[0]}}} for its command and it has no value: give "
                f"{missing[0]!r} in the request or in engines.{name}.defaults", param=missing[0])
        argv.append(arg.format(**values))
    return argv


def launch_for(options: DynamicOptions, engine: str, model: ModelFile, served_id: str,
               load_options: Mapping[str, Any]) -> Launch:
    """The command that serves ``model`` with ``engine`` under the name ``served_id``."""
    timeout = options.load_timeout_s
    if engine in _WORKERS:
        base = options.llamacpp if engine == "llamacpp" else options.transformers
        flags = _builtin_flags(engine, model, served_id, base, load_options)
        return Launch.router_worker(_WORKERS[engine], flags, startup_timeout_s=timeout)
    cmd = options.engines[engine]
    return Launch(argv=_cmd_argv(engine, cmd, model, served_id, load_options), env=dict(cmd.env), port=0,
                  health_path=cmd.health, startup_timeout_s=timeout, stop_timeout_s=cmd.stop_timeout_s)


def memory_gb(model: ModelFile) -> float:
    """Roughly what the model takes loaded: its files."""
    try:
        return model.size_bytes() / 2**30
    except OSError:
        return 0.0
