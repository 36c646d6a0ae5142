"""Shared fixtures: fake OpenAI-compatible upstreams on 127.0.0.1 (in a background loop, so
synchronous clients can block while they answer), the router in-process on a real port
(``start_router``) or as a subprocess (``start_router_process``, for the CLI, signals and
plugins installed with pip).

The session loads only the built-in plugins (as simonw/llm's tests do), so a plugin
installed in the environment cannot change what the tests see; a test that wants one
names it in ``ROUTER_LOAD_PLUGINS``.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.plugins import DEFAULT_PLUGINS
from router.testing import BackgroundLoop, FakeUpstream, RouterProcess, RouterServer


def pytest_configure(config: pytest.Config) -> None:
    # Inherited by the routers the tests start as subprocesses, too.
    os.environ["ROUTER_LOAD_PLUGINS"] = ",".join(DEFAULT_PLUGINS)


@pytest.fixture(scope="session")
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture
def upstreams(bg: BackgroundLoop) -> Iterator[Callable[..., FakeUpstream]]:
    """Start fake upstreams: ``upstreams("a", models=["m"])``; all stop after the test."""
    started: list[FakeUpstream] = []

    def start(name: str = "upstream", models: list[str] | None = None) -> FakeUpstream:
        upstream = bg.start_upstream(name, models)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        bg.run(upstream.stop())


def write_config(path: Path, config: dict[str, Any] | str) -> Path:
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def start_router(tmp_path: Path, bg: BackgroundLoop) -> Iterator[Callable[..., RouterServer]]:
    """Start the router in-process (``init_app`` on a real port in the background loop),
    from a config dict or YAML text written to a file, as ``serve`` would read it."""
    servers: list[RouterServer] = []

    def start(config: dict[str, Any] | str, name: str = "config.yaml", **kwargs: Any) -> RouterServer:
        path = write_config(tmp_path / name, config)
        server = RouterServer(path, bg, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def start_router_process(tmp_path: Path) -> Iterator[Callable[..., RouterProcess]]:
    """Start the router as a user does (``python -m router serve``), from a config dict
    or YAML text."""
    procs: list[RouterProcess] = []

    def start(config: dict[str, Any] | str, name: str = "config.yaml", **kwargs: Any) -> RouterProcess:
        path = write_config(tmp_path / name, config)
        proc = RouterProcess(path, **kwargs).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def backend(name: str, upstream: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": "openai_compatible", "base_url": upstream.url, **extra}
