"""router.workers.launch: a settings dataclass as worker flags and back (one declaration
of each knob), and the Launch command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
from pathlib import Path

import pytest

import router
from router.config.schema import flatten, setting
from router.workers import Launch, add_flags, free_port, from_flags, to_flags


@dataclasses.dataclass
class Knobs:
    n_ctx: int = setting(4096, ge=0, help="context length")
    n_threads: int | None = setting(None, help="threads (default: all cores)")
    temperature: float = setting(0.8, help="sampling temperature")
    cache: str | None = setting(None, choices=("ram", "disk"), help="prompt cache")
    verbose: bool = setting(False, help="print the engine's log")
    mmap: bool = setting(True, help="map the file")


@dataclasses.dataclass
class Args:
    model: str = dataclasses.field(metadata={"help": "the model file"})
    port: int = setting(8080, help="port")
    knobs: Knobs = flatten(Knobs)


def parser_for(cls: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worker", exit_on_error=False)
    add_flags(parser, cls)
    return parser


def round_trip(args: Args) -> Args:
    return from_flags(Args, parser_for(Args).parse_args(to_flags(args)))


def test_defaults_round_trip_with_only_the_required_flag() -> None:
    args = Args(model="/m.gguf")
    assert to_flags(args) == ["--model", "/m.gguf"]
    assert round_trip(args) == args


def test_every_kind_of_value_round_trips() -> None:
    args = Args(model="/m.gguf", port=0, knobs=Knobs(n_ctx=0, n_threads=2, temperature=0.25,
                                                     cache="disk", verbose=True, mmap=False))
    flags = to_flags(args)
    assert flags == ["--model", "/m.gguf", "--port", "0", "--n-ctx", "0", "--n-threads", "2",
                     "--temperature", "0.25", "--cache", "disk", "--verbose", "--no-mmap"]
    back = round_trip(args)
    assert back == args and isinstance(back.knobs, Knobs) and back.knobs.temperature == 0.25


def test_help_and_choices_come_from_the_declaration() -> None:
    parser = parser_for(Args)
    text = parser.format_help()
    for expected in ("--n-ctx N_CTX", "context length (default: 4096)", "threads (default: all cores)",
                     "--cache {ram,disk}", "--verbose, --no-verbose", "the model file"):
        assert expected in text, expected
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--model", "m", "--cache", "ssd"])
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--model", "m", "--n-ctx", "lots"])


def test_required_field_is_a_required_flag() -> None:
    parser = argparse.ArgumentParser(prog="worker")
    add_flags(parser, Args)
    with pytest.raises(SystemExit):
        parser.parse_args([])


def test_none_for_a_field_with_another_default_is_refused() -> None:
    with pytest.raises(ValueError, match="n_ctx"):
        to_flags(Args(model="m", knobs=Knobs(n_ctx=None)))  # type: ignore[arg-type]


def test_fields_that_cannot_be_flags_are_refused() -> None:
    @dataclasses.dataclass
    class Bad:
        names: list[str] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="Bad.names"):
        add_flags(argparse.ArgumentParser(), Bad)


def test_command_substitutes_the_port() -> None:
    launch = Launch(argv=["vllm", "serve", "/m", "--port", "{port}", "--url=http://h:{port}"], port=0)
    assert launch.command(9123) == ["vllm", "serve", "/m", "--port", "9123", "--url=http://h:9123"]
    assert not launch.reports_port
    assert Launch(argv=["w", "{port}"]).command(None) == ["w", "{port}"]


def test_router_worker_runs_this_interpreter_with_the_router_importable() -> None:
    launch = Launch.router_worker("eng", ["--model", "m"], startup_timeout_s=3, env={"X": "1"})
    assert launch.argv == [sys.executable, "-m", "router", "worker", "--provider", "eng", "--model", "m"]
    assert launch.reports_port and launch.startup_timeout_s == 3
    env = launch.environment()
    assert env["X"] == "1"
    root = str(Path(router.__file__).resolve().parents[1])
    assert env["PYTHONPATH"].split(os.pathsep)[0] == root


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
