"""How a worker process is started, and a settings dataclass as CLI flags and back.

A ``Launch`` is everything a supervisor (``router.workers.process``) needs to start one
worker and know when it is ready; it holds no state. A worker either binds port 0 and
reports the port it got on stderr (``router.workers.protocol``: no race between picking
a port and binding it), or, for a command that cannot report (``vllm serve {path} --port
{port}``), gets a port written into its argv as ``{port}`` and is polled on it.

The flag helpers read a dataclass's fields: the name gives the flag (``n_ctx`` ->
``--n-ctx``), the annotation its type, ``router.config.schema.setting(..., help=...,
choices=...)`` its help and choices. So one declaration of a knob is its config key, its
worker flag and its help text, and ``to_flags``/``from_flags`` cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: The folder holding the ``router`` package: a ``python -m router worker`` child needs
#: it importable even when the router runs from a checkout (not installed).
_ROUTER_ROOT = str(Path(__file__).resolve().parents[2])

PORT_PLACEHOLDER = "{port}"


@dataclasses.dataclass(frozen=True)
class Launch:
    """One worker's command line and how to tell that it is ready.

    ``port``: None means the worker binds a port itself (``--port 0``) and prints it
    (``protocol.listening_line``); readiness is that line, then ``health_path``
    answering 200. 0 means a free port is chosen here; a number means that port. With a
    port, every ``{port}`` in ``argv`` is replaced by it and readiness is ``health_path``
    answering 200 on it.
    """

    argv: Sequence[str]
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cwd: str | None = None
    port: int | None = None
    host: str = "127.0.0.1"
    health_path: str = "/health"
    startup_timeout_s: float = 120.0
    stop_timeout_s: float = 5.0

    @property
    def reports_port(self) -> bool:
        return self.port is None

    def command(self, port: int | None) -> list[str]:
        """``argv`` with ``{port}`` replaced (unchanged when the worker reports its port)."""
        if port is None:
            return list(self.argv)
        return [arg.replace(PORT_PLACEHOLDER, str(port)) for arg in self.argv]

    def environment(self) -> dict[str, str]:
        """The router's environment plus ``env``."""
        return {**os.environ, **self.env}

    @classmethod
    def router_worker(cls, provider: str, flags: Sequence[str], **kwargs: Any) -> Launch:
        """``python -m router worker --provider NAME <flags>``: a worker registered through
        ``register_workers``, run with this interpreter. ``flags`` must make it bind port 0
        and report the port (as ``router.workers.server.run_worker`` does)."""
        path = os.pathsep.join(p for p in (_ROUTER_ROOT, os.environ.get("PYTHONPATH", "")) if p)
        env = {"PYTHONPATH": path, **kwargs.pop("env", {})}
        argv = [sys.executable, "-m", "router", "worker", "--provider", provider, *flags]
        return cls(argv=argv, env=env, port=None, **kwargs)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (for commands that cannot bind port 0 and report it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- a settings dataclass as flags -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Flag:
    field: dataclasses.Field[Any]
    kind: type          # str, int, float or bool
    optional: bool      # the annotation allows None

    @property
    def option(self) -> str:
        return "--" + self.field.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.field.default is dataclasses.MISSING and self.field.default_factory is dataclasses.MISSING

    @property
    def default(self) -> Any:
        if self.field.default is not dataclasses.MISSING:
            return self.field.default
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return None


def _flags(cls: type) -> list[_Flag]:
    """The flag of each field, a ``flatten``-ed group's fields in its place."""
    hints = typing.get_type_hints(cls)
    out: list[_Flag] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        nested = f.metadata.get("flatten")
        if nested is not None:
            out += _flags(nested)
            continue
        kind, optional = _scalar(hints[f.name], f"{cls.__name__}.{f.name}")
        out.append(_Flag(f, kind, optional))
    return out


def _scalar(tp: Any, where: str) -> tuple[type, bool]:
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            raise TypeError(f"{where}: a flag holds one type, not {tp}")
        tp = args[0]
    if tp not in (str, int, float, bool):
        raise TypeError(f"{where}: {tp} cannot be a flag (str, int, float or bool)")
    return tp, optional


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the dataclass ``cls`` (help and choices from its metadata)."""
    for flag in _flags(cls):
        meta = flag.field.metadata
        text = meta.get("help") or ""
        default = flag.default
        if default not in (None, "") and flag.kind is not bool and "default" not in text:
            text = f"{text} (default: {default})" if text else f"default: {default}"
        kwargs: dict[str, Any] = {"help": text or None, "dest": flag.field.name}
        if flag.kind is bool:
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        else:
            kwargs.update(type=flag.kind, choices=meta.get("choices"))
            if flag.required:
                kwargs["required"] = True
            else:
                kwargs["default"] = default
        parser.add_argument(flag.option, **kwargs)


def from_flags(cls: type[T], args: argparse.Namespace) -> T:
    """The dataclass ``cls`` built from what ``add_flags`` parsed."""
    values = vars(args)
    return typing.cast(T, _build(cls, values))


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        nested = f.metadata.get("flatten")
        if nested is not None:
            kwargs[f.name] = _build(nested, values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def to_flags(settings: object) -> list[str]:
    """The flags that reproduce ``settings`` through ``add_flags``/``from_flags``; fields
    at their default are left out, required ones never."""
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        raise TypeError("to_flags takes a dataclass instance")
    values = _values(settings)
    argv: list[str] = []
    for flag in _flags(type(settings)):
        value = values[flag.field.name]
        if not flag.required and value == flag.default:
            continue
        if value is None:
            raise ValueError(f"{flag.field.name}: None is not a flag value (its default is {flag.default!r})")
        if flag.kind is bool:
            argv.append(flag.option if value else "--no-" + flag.option[2:])
        else:
            argv += [flag.option, str(value)]
    return argv


def _values(settings: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, f.name)
        if "flatten" in f.metadata:
            out.update(_values(value))
        else:
            out[f.name] = value
    return out
