"""Command line: ``python -m router serve|check|models|worker``.

    serve   start the router; prints the URL it listens on once ready
    check   validate a config; exits 1 with file:line: key: message on error
    models  print the models each backend serves
    worker  serve one model with a provider's standalone worker
            (``python -m router worker --provider gguf --model PATH --port P``)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import pluggy

from router.config import Config, ConfigError, load_config
from router.plugins import make_plugin_manager, providers, strategies

log = logging.getLogger("router")


def _load(path: str) -> tuple[Config, pluggy.PluginManager]:
    pm = make_plugin_manager()
    config = load_config(path, providers(pm), strategies(pm))
    return config, pm


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def _serve(config: Config, pm: pluggy.PluginManager) -> None:
    from aiohttp import web

    from router.app import init_app

    app = init_app(config, pm)
    access_log = logging.getLogger("aiohttp.access") if config.server.log_level == "debug" else None
    runner = web.AppRunner(app, handler_cancellation=True, access_log=access_log)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, backlog=1024)
    await site.start()
    port = config.server.port
    sockets = getattr(site._server, "sockets", None)  # the only way to learn port 0's choice
    if sockets:
        port = sockets[0].getsockname()[1]
    # Signal handlers go in before the ready line, so a stop sent right after it is graceful.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"Router listening on http://{config.server.host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def cmd_serve(args: argparse.Namespace) -> int:
    config, pm = _load(args.config)
    if args.host:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
    _setup_logging(config.server.log_level)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(config, pm))
    else:
        uvloop.run(_serve(config, pm))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config, _ = _load(args.config)
    print(f"{args.config}: OK ({len(config.backends)} backends, strategy {config.routing.strategy})")
    return 0


async def _models(config: Config, pm: pluggy.PluginManager) -> dict[str, list[str] | str]:
    from router.state import RouterState

    state = RouterState(config, pm)
    await asyncio.gather(*(state.add_backend(cfg, rebuild=False) for cfg in config.backends))
    try:
        return {
            name: (sorted(b.models) if b.healthy else f"unavailable: {b.last_error}")
            for name, b in state.backends.items()
        }
    finally:
        await asyncio.gather(*(b.provider.aclose() for b in state.backends.values()))


def cmd_models(args: argparse.Namespace) -> int:
    config, pm = _load(args.config)
    logging.basicConfig(level=logging.ERROR)
    for name, models in asyncio.run(_models(config, pm)).items():
        if isinstance(models, str):
            print(f"{name}: {models}")
        else:
            print(f"{name}: {', '.join(models) or '(no models)'}")
    for alias, target in config.aliases.items():
        print(f"alias {alias} -> {target}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    registry = providers(make_plugin_manager())
    cls = registry.get(args.provider)
    if cls is None:
        print(f"unknown provider {args.provider!r} (available: {', '.join(sorted(registry))})", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"python -m router worker --provider {args.provider}")
    try:
        cls.add_worker_arguments(parser)
    except NotImplementedError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return cls.run_worker(parser.parse_args(args.rest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m router", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the router")
    serve.add_argument("--config", default="config.yaml")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("--config", default="config.yaml")
    check.set_defaults(func=cmd_check)
    models = sub.add_parser("models", help="print the models each backend serves")
    models.add_argument("--config", default="config.yaml")
    models.set_defaults(func=cmd_models)
    worker = sub.add_parser("worker", help="serve one model with a provider's standalone worker",
                            add_help=False)
    worker.add_argument("--provider", required=True, help="then the provider's own flags (try --help)")
    worker.set_defaults(func=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # A worker's flags belong to its provider: they are parsed by cmd_worker.
    args, rest = parser.parse_known_args(argv)
    if args.command == "worker":
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
