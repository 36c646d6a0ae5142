"""Live settings: ``PUT /admin/settings {"key": "routing.strategy", "value": ...}`` and
``GET /admin/settings`` (the effective settings, secrets redacted, each with where it came
from: ``file``, ``env``, ``store`` or ``default``).

A change is validated exactly like the YAML: the key and value become a small config
document that the config loader reads (``parse_config``), so a bad key or value is a 400
naming the key path, with the loader's own message. Settable live: ``routing.*``,
``circuit_breaker.*``, ``generation.*`` and a backend's fields
(``backends.<name>.<field>``: the backend is rebuilt from its entry with the change,
validated like one in ``backends:``, and replaced after its requests drain). Changes are
kept in the store (``auth.store``) and applied again at start-up, except where the file
sets the same key: the file wins, with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import yaml
from aiohttp import web

from router import jsonlib
from router.config.loader import ConfigError, parse_backend, parse_config
from router.config.schema import BackendConfig, Config
from router.errors import Conflict, InvalidRequest, NotFound
from router.state import RouterState
from router.web.middlewares import STATE, json_response
from router.web.routes import Route

log = logging.getLogger("router")

LIVE_SECTIONS = ("routing", "circuit_breaker", "generation")
SECRET_FIELDS = {"api_key", "admin_key", "key", "headers"}
_NOT_YAML = {"options", "base_dir", "name", "provider"}
DRAIN_TIMEOUT_S = 60.0


def _nested(path: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return dict(out)


def _get(obj: Any, path: list[str]) -> Any:
    for part in path:
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def _set(obj: Any, path: list[str], value: Any) -> None:
    parent = _get(obj, path[:-1])
    if isinstance(parent, dict):
        parent[path[-1]] = value
    else:
        setattr(parent, path[-1], value)


def backend_entry(cfg: BackendConfig) -> dict[str, Any]:
    """A backend's config as the YAML entry it came from (its provider's keys included)."""
    entry: dict[str, Any] = {"name": cfg.name, "provider": cfg.provider}
    for f in dataclasses.fields(cfg):
        if f.name not in _NOT_YAML:
            entry[f.name] = getattr(cfg, f.name)
    if cfg.options is not None and dataclasses.is_dataclass(cfg.options) and not isinstance(cfg.options, type):
        for name, value in dataclasses.asdict(cfg.options).items():
            entry.setdefault(name, value)
    return {k: v for k, v in entry.items() if v is not None}


def check_setting(state: RouterState, key: str, value: Any) -> tuple[list[str], Any]:
    """Validate ``key = value`` with the config loader; the path and the checked value."""
    path = key.split(".")
    registry = state.registry
    env = getattr(state.config, "from_env", {}).get(key)
    if env is not None:
        raise Conflict(f"{key} is set by the environment variable {env}, which wins; unset it to change "
                       "the setting here", param="key")
    if path[0] in LIVE_SECTIONS and len(path) >= 2:
        doc = _nested(path, value)
        try:
            checked = parse_config(yaml.safe_dump(doc), registry.providers, registry.strategies,
                                   file="<request body>", base_dir=state.config.base_dir)
        except ConfigError as exc:
            raise InvalidRequest(f"{exc.key or key}: {exc.message}", param=exc.key or key) from exc
        return path, _get(checked, path)
    if path[0] == "backends" and len(path) == 3:
        name, field = path[1], path[2]
        backend = state.backends.backends.get(name)
        if backend is None:
            raise InvalidRequest(f"{key}: no backend named {name!r} (GET /admin/backends lists them)", param=key)
        if field in ("name", "provider"):
            raise InvalidRequest(f"{key}: a backend's {field} cannot change; remove it and add another", param=key)
        entry = {**backend_entry(backend.config), field: value}
        try:
            cfg = parse_backend(jsonlib.dumps(entry).decode(), registry.providers, file="<request body>")
        except ConfigError as exc:
            where = exc.key.replace("backend.", f"backends.{name}.", 1) if exc.key else key
            raise InvalidRequest(f"{where}: {exc.message}", param=where) from exc
        return path, cfg
    raise InvalidRequest(
        f"{key}: not a setting that can change while the router runs (live: routing.*, circuit_breaker.*, "
        "generation.*, backends.<name>.<field>); change it in the config file and restart", param="key")


async def apply_setting(state: RouterState, path: list[str], checked: Any) -> None:
    if path[0] == "backends":
        name = path[1]
        assert isinstance(checked, BackendConfig)
        checked.base_dir = state.config.base_dir
        backend = state.backends.backends[name]
        if path[2] == "weight":  # read live by the strategies: no rebuild needed
            backend.config.weight = backend.weight = checked.weight
            return
        await state.backends.remove(name, DRAIN_TIMEOUT_S)
        await state.backends.add(checked)
        return
    _set(state.config, path, checked)
    if path[0] == "routing" and path[1] in ("strategy", "model_strategies", "sticky_key"):
        state.index.set_strategies(state.config, state.registry.strategies)


def file_keys(config: Config) -> set[str]:
    """The dotted keys the config file sets itself (for 'the file wins')."""
    try:
        with open(config.path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return set()
    keys: set[str] = set()

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        keys.add(prefix)

    for section, node in doc.items() if isinstance(doc, dict) else ():
        if section == "backends" and isinstance(node, list):
            for entry in node:
                if isinstance(entry, dict) and "name" in entry:
                    for field in entry:
                        keys.add(f"backends.{entry['name']}.{field}")
        else:
            walk(str(section), node)
    return keys


async def restore(state: RouterState) -> None:
    """At start-up: the stored settings and backends, unless the file says otherwise."""
    store = state.store
    if not store.persistent:
        return
    from_file = file_keys(state.config)
    for key, value in (await store.settings()).items():
        if key in from_file:
            log.warning("setting %s was changed through the admin API, but the config file sets it: "
                        "the file wins", key)
            continue
        try:
            path, checked = check_setting(state, key, value)
            if path[0] != "backends":
                await apply_setting(state, path, checked)
                state.stored[key] = value
        except InvalidRequest as exc:
            log.warning("stored setting %s no longer applies: %s", key, exc.message)


async def restore_backends(state: RouterState) -> None:
    """After the file's backends: those registered through the admin API, then stored
    backend field changes."""
    store = state.store
    if not store.persistent:
        return
    for name, spec in (await store.backends()).items():
        if state.backends.exists(name):
            log.warning("backend %s was registered through the admin API, but the config file has one of "
                        "that name: the file wins", name)
            continue
        try:
            cfg = parse_backend(spec, state.registry.providers, file="<store>")
        except ConfigError as exc:
            log.warning("stored backend %s no longer applies: %s", name, exc)
            continue
        cfg.base_dir = state.config.base_dir
        await state.backends.add(cfg)
    from_file = file_keys(state.config)
    for key, value in (await store.settings()).items():
        if not key.startswith("backends."):
            continue
        if key in from_file:
            log.warning("setting %s was changed through the admin API, but the config file sets it: "
                        "the file wins", key)
            continue
        try:
            path, checked = check_setting(state, key, value)
            await apply_setting(state, path, checked)
            state.stored[key] = value
        except InvalidRequest as exc:
            log.warning("stored setting %s no longer applies: %s", key, exc.message)


def effective(state: RouterState) -> dict[str, dict[str, Any]]:
    """Every setting: its value (secrets redacted) and where it came from."""
    config = state.config
    from_file = file_keys(config)
    from_env = getattr(config, "from_env", {})
    out: dict[str, dict[str, Any]] = {}

    def source(key: str) -> str:
        if key in state.stored:
            return "store"
        if key in from_env:
            return "env"
        return "file" if key in from_file else "default"

    def add(key: str, value: Any, secret: bool = False) -> None:
        if secret and value:
            value = "<redacted>"
        out[key] = {"value": value, "source": source(key)}

    def walk(prefix: str, obj: Any) -> None:
        for f in dataclasses.fields(obj):
            if f.name in ("path", "base_dir", "from_env", "backends", "options"):
                continue
            value = getattr(obj, f.name)
            key = f"{prefix}.{f.name}" if prefix else f.name
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(key, value)
            elif key == "auth.keys":
                add(key, [{"name": k.name, "key": "<redacted>", "models": k.models, "rpm": k.rpm, "tpm": k.tpm}
                          for k in value])
            else:
                add(key, _plain(value), secret=f.name in SECRET_FIELDS)

    walk("", config)
    for name, backend in state.backends.backends.items():
        for field, value in backend_entry(backend.config).items():
            if field in ("name",):
                continue
            add(f"backends.{name}.{field}", _plain(value), secret=field in SECRET_FIELDS)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


async def get_settings(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response({"settings": effective(state), "persistent": state.store.persistent})


async def put_setting(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = jsonlib.loads(await request.read())
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("key"), str) or "value" not in body:
        raise InvalidRequest('send {"key": "routing.strategy", "value": ...}', param="key")
    unknown = sorted(set(body) - {"key", "value"})
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: unknown field (send key and value)", param=unknown[0])
    key, value = body["key"], body["value"]
    path, checked = check_setting(state, key, value)
    if path[0] == "backends" and path[1] not in state.backends.backends:
        raise NotFound(f"no backend named {path[1]!r}")
    await apply_setting(state, path, checked)
    await state.store.put_setting(key, value)  # before the answer: a restart right after keeps it
    state.stored[key] = value
    log.info("setting %s changed through the admin API", key)
    shown = effective(state).get(key, {"value": _plain(checked) if path[0] != "backends" else value})
    return json_response({"key": key, "value": shown["value"], "source": "store",
                          "persistent": state.store.persistent})


def routes() -> list[Route]:
    from router.web.admin import guarded

    return [
        Route("GET", "/admin/settings", guarded(get_settings), "the effective settings and where each came from"),
        Route("PUT", "/admin/settings", guarded(put_setting), "change a setting live (validated like the YAML)"),
    ]
