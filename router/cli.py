"""Command line: ``python -m router serve|check|models|worker`` and plugins' commands.

    serve   start the router; prints the URL it listens on once ready
    check   validate a config; exits 1 with file:line: key: message on error
    models  print the models each backend serves
    worker  serve one model with a local engine's standalone worker
            (``python -m router worker --provider gguf --model PATH --port P``)

Plugins add subcommands through ``register_commands`` and standalone workers through
``register_workers``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
import sys
from collections.abc import Sequence

import pluggy

from router.commands import Command
from router.config.env import PASSED_ENV
from router.config.loader import ConfigError, load_config
from router.config.schema import Config
from router.hooks import Hooks
from router.plugins import make_plugin_manager
from router.registry import Registry
from router.telemetry import setup_logging

log = logging.getLogger("router")


def _load(path: str, pm: pluggy.PluginManager) -> tuple[Config, Registry]:
    registry = Registry.collect(pm)
    return load_config(path, registry.providers, registry.strategies), registry


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def _serve(config: Config, pm: pluggy.PluginManager, registry: Registry) -> None:
    from router.serving import serve_app
    from router.web.app import connection_limits, init_app

    app = init_app(config, pm, registry)
    access_log = logging.getLogger("aiohttp.access") if config.server.log_level == "debug" else None

    ssl_context = tls_context(config)
    scheme = "https" if ssl_context is not None else "http"

    def ready(port: int) -> None:
        print(f"Router listening on {scheme}://{config.server.host}:{port}", flush=True)
        if config.auth is None or config.auth.open:
            print(OPEN_NOTICE, flush=True)
            if not _is_loopback(config.server.host):
                log.warning("bound to %s, not a loopback address: %s", config.server.host, OPEN_NOTICE)

    await serve_app(app, config.server.host, config.server.port, on_listening=ready, access_log=access_log,
                    limits=connection_limits(config), ssl_context=ssl_context)


OPEN_NOTICE = ("The router has no client authentication (no auth section, or auth.open: true): anyone who "
               "can reach this port uses the backends (and their API keys) without a client key.")


def check_exposure(config: Config) -> None:
    """An open router listens only on a loopback address unless ``auth: {open: true}``
    says that is meant (docs/operations.md)."""
    if config.auth is None and not _is_loopback(config.server.host):
        raise ConfigError(
            config.path, "auth", None,
            f"the router would listen on {config.server.host}, not a loopback address, with no client keys: "
            "anyone who reaches it would use every backend. Add client keys (auth.keys or auth.store, "
            "see docs/operations.md), or write 'auth: {open: true}' if an open router is what you want",
        )


def tls_context(config: Config) -> ssl.SSLContext | None:
    """``server.tls`` as a server-side SSL context (None: plain HTTP)."""
    tls = config.server.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(config.path, "server.tls", None,
                          f"cannot load the certificate {tls.cert} and key {tls.key}: {exc}") from exc
    return context


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or "" / "0.0.0.0"-like wildcards: assume reachable


def cmd_serve(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    config, registry = _load(args.config, pm)
    if args.host:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
    check_exposure(config)
    setup_logging(config.server.log_level, config.server.log_format)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(config, pm, registry))
    else:
        uvloop.run(_serve(config, pm, registry))
    return 0


def cmd_check(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    config, _ = _load(args.config, pm)
    print(f"{args.config}: OK ({len(config.backends)} backends, strategy {config.routing.strategy})")
    for key, var in config.from_env.items():
        value: object = config
        for part in key.split("."):
            value = getattr(value, part)
        print(f"  {key} = {value!r}  (from the environment: {var})")
    for var in PASSED_ENV:
        if os.environ.get(var):
            print(f"  {var} = {os.environ[var]!r}  (read by Hugging Face downloads)")
    return 0


async def _models(config: Config, pm: pluggy.PluginManager, registry: Registry) -> dict[str, list[str] | str]:
    from router.state import RouterState

    state = RouterState(config, pm, registry)
    await state.backends.start()
    try:
        return {
            name: (sorted(b.models) if b.healthy else f"unavailable: {b.last_error}")
            for name, b in state.backends.backends.items()
        }
    finally:
        await state.backends.close()


def cmd_models(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    config, registry = _load(args.config, pm)
    logging.basicConfig(level=logging.ERROR)
    for name, models in asyncio.run(_models(config, pm, registry)).items():
        if isinstance(models, str):
            print(f"{name}: {models}")
        else:
            print(f"{name}: {', '.join(models) or '(no models)'}")
    for alias, target in config.aliases.items():
        print(f"alias {alias} -> {target}")
    return 0


def cmd_worker(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    workers = Hooks(pm).workers()
    worker = workers.get(args.provider)
    if worker is None:
        known = ", ".join(sorted(workers)) or "none"
        print(f"provider {args.provider!r} has no standalone worker (providers with one: {known})", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"python -m router worker --provider {args.provider}",
                                     description=worker.help)
    worker.add_arguments(parser)
    return worker.run(parser.parse_args(args.rest))


CORE_COMMANDS = ("serve", "check", "models", "worker")


def build_parser(commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
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
    worker = sub.add_parser("worker", help="serve one model with a local engine's standalone worker",
                            add_help=False)
    worker.add_argument("--provider", required=True, help="then the provider's own flags (try --help)")
    worker.set_defaults(func=cmd_worker)
    for command in commands:
        if command.name in CORE_COMMANDS:
            raise ValueError(f"a plugin tried to replace the {command.name!r} command")
        plugin_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(plugin_parser)
        plugin_parser.set_defaults(func=_plugin_command(command))
    return parser


def _plugin_command(command: Command):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
        return command.run(args)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    pm = make_plugin_manager()
    parser = build_parser(list(Hooks(pm).commands().values()))
    # A worker's flags belong to its provider: they are parsed by cmd_worker.
    args, rest = parser.parse_known_args(argv)
    if args.command == "worker":
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return int(args.func(args, pm))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
