"""config.yaml into typed dataclasses; every error names the file, the key path and the line.

The loader walks PyYAML's node tree (which keeps line numbers) against the dataclasses
below, so unknown keys, wrong types and missing ``${VAR}`` environment variables are
reported where they are written. Provider plugins declare their own backend keys as a
dataclass (``Provider.options_class``) and get the same checking.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any, Union

import yaml

from router.provider import Provider

_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config problem, located: ``file:line: key.path: what to fix``."""

    def __init__(self, file: str, key: str, line: int | None, message: str) -> None:
        self.file, self.key, self.line, self.message = file, key, line, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field whose value the loader checks (with file, key and line)."""
    return dataclasses.field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "choices": choices})


@dataclasses.dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = bounded(8400, ge=0, le=65535)
    admin_key: str | None = dataclasses.field(default=None, repr=False)
    max_body_mb: float = bounded(32.0, gt=0)
    log_level: str = bounded("info", choices=("debug", "info", "warning", "error"))


@dataclasses.dataclass
class CircuitBreakerConfig:
    failure_threshold: int = bounded(5, ge=1)
    cooldown_s: float = bounded(30.0, ge=0)
    success_threshold: int = bounded(1, ge=1)


@dataclasses.dataclass
class RoutingConfig:
    strategy: str = "round_robin"
    discovery_interval_s: float = bounded(60.0, gt=0)
    health_check_interval_s: float = bounded(15.0, gt=0)
    retries: int = bounded(2, ge=0)
    timeout_s: float = bounded(600.0, gt=0)
    sticky_key: str = "auto"
    model_strategies: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class BackendConfig:
    name: str
    provider: str
    base_url: str | None = None
    api_key: str | None = dataclasses.field(default=None, repr=False)
    weight: float = bounded(1.0, gt=0)
    max_concurrent: int | None = bounded(None, ge=1)
    max_queue: int = bounded(64, ge=0)
    health_check_path: str = "/v1/models"
    connect_timeout_s: float = bounded(5.0, gt=0)
    first_byte_timeout_s: float = bounded(300.0, gt=0)
    read_timeout_s: float = bounded(120.0, gt=0)
    headers: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    # The provider's own keys (an instance of its options_class), validated like the rest.
    options: Any = None
    # The config file's directory (not a YAML key): relative paths a provider reads
    # (model files, say) are relative to it, wherever the router was started from.
    base_dir: Path | None = dataclasses.field(default=None, repr=False)

    def path(self, value: str) -> Path:
        """A path from this backend's config, relative ones taken from the config's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir or Path.cwd()) / path


@dataclasses.dataclass
class Config:
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    routing: RoutingConfig = dataclasses.field(default_factory=RoutingConfig)
    circuit_breaker: CircuitBreakerConfig = dataclasses.field(default_factory=CircuitBreakerConfig)
    backends: list[BackendConfig] = dataclasses.field(default_factory=list)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    path: str = "<memory>"
    base_dir: Path = dataclasses.field(default_factory=Path.cwd)


_NOT_YAML = {"options", "base_dir"}
_BACKEND_COMMON = {f.name for f in dataclasses.fields(BackendConfig)} - _NOT_YAML


class _Loader:
    def __init__(
        self, file: str, providers: dict[str, type[Provider]], strategies: Collection[str]
    ) -> None:
        self.file = file
        self.providers = providers
        self.strategies = strategies

    def error(self, key: str, node: yaml.Node | None, message: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(self.file, key, line, message)

    # -- generic conversion -------------------------------------------------------------

    def build(self, tp: Any, node: yaml.Node, key: str) -> Any:
        origin = typing.get_origin(tp)
        if tp is Any:
            return self.plain(node, key)
        if origin in (Union, types.UnionType):
            args = typing.get_args(tp)
            if _is_null(node) and type(None) in args:
                return None
            errors = []
            for arg in args:
                if arg is type(None):
                    continue
                try:
                    return self.build(arg, node, key)
                except ConfigError as exc:
                    errors.append(exc)
            raise errors[-1] if len(errors) == 1 else self.error(
                key, node, f"expected {_describe(tp)}, got {_node_kind(node)}"
            )
        if origin is list:
            if not isinstance(node, yaml.SequenceNode):
                raise self.error(key, node, f"expected a list, got {_node_kind(node)}")
            (item,) = typing.get_args(tp)
            return [self.build(item, n, f"{key}[{i}]") for i, n in enumerate(node.value)]
        if origin is dict:
            mapping = self.mapping(node, key)
            _, value_tp = typing.get_args(tp)
            return {k: self.build(value_tp, v, f"{key}.{k}") for k, (_, v) in mapping.items()}
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.dataclass(tp, node, key)
        return self.scalar(tp, node, key)

    def mapping(self, node: yaml.Node, key: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(key, node, f"expected a mapping, got {_node_kind(node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k_node, v_node in node.value:
            if not isinstance(k_node, yaml.ScalarNode):
                raise self.error(key, k_node, "keys must be plain strings")
            name = str(k_node.value)
            if name in out:
                raise self.error(_join(key, name), k_node, "duplicate key")
            out[name] = (k_node, v_node)
        return out

    def dataclass(
        self, cls: type, node: yaml.Node, key: str, skip: set[str] | None = None
    ) -> Any:
        mapping = self.mapping(node, key)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        kwargs: dict[str, Any] = {}
        for name, (k_node, v_node) in mapping.items():
            if skip and name in skip:
                continue
            if name not in fields:
                known = ", ".join(sorted(n for n in fields if not (skip and n in skip)))
                raise self.error(_join(key, name), k_node, f"unknown key (known keys: {known})")
            kwargs[name] = self.build(hints[name], v_node, _join(key, name))
            self.check_bounds(fields[name], kwargs[name], v_node, _join(key, name))
        for name, f in fields.items():
            if (
                name not in kwargs
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ):
                raise self.error(_join(key, name), node, "required key is missing")
        return cls(**kwargs)

    def check_bounds(self, f: dataclasses.Field[Any], value: Any, node: yaml.Node, key: str) -> None:
        meta = f.metadata
        if not meta or value is None:
            return
        if meta.get("ge") is not None and value < meta["ge"]:
            raise self.error(key, node, f"must be at least {meta['ge']:g}, got {value!r}")
        if meta.get("gt") is not None and value <= meta["gt"]:
            raise self.error(key, node, f"must be greater than {meta['gt']:g}, got {value!r}")
        if meta.get("le") is not None and value > meta["le"]:
            raise self.error(key, node, f"must be at most {meta['le']:g}, got {value!r}")
        if meta.get("choices") and value not in meta["choices"]:
            raise self.error(key, node, f"must be one of {', '.join(meta['choices'])}, got {value!r}")

    def scalar(self, tp: Any, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(key, node, f"expected {_describe(tp)}, got {_node_kind(node)}")
        value = self.plain(node, key)
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if tp in (str, int, float, bool) and type(value) is not tp:
            shown = "null" if value is None else repr(value)
            raise self.error(key, node, f"expected {_describe(tp)}, got {shown}")
        return value

    def plain(self, node: yaml.Node, key: str) -> Any:
        """A node as plain Python values, with ${VAR} substituted in strings."""
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(n, f"{key}[{i}]") for i, n in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            return {k: self.plain(v, _join(key, k)) for k, (_, v) in self.mapping(node, key).items()}
        # compose() already resolved each scalar's tag (int, bool, null, str...).
        value = _CONSTRUCTOR.construct_object(node, deep=True)
        if isinstance(value, str):
            return self.substitute(value, node, key)
        return value

    def substitute(self, text: str, node: yaml.Node, key: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise self.error(key, node, f"environment variable {name} is not set")

        return _ENV_VAR.sub(replace, text) if "${" in text else text

    # -- the document -------------------------------------------------------------------

    def config(self, root: yaml.Node) -> Config:
        mapping = self.mapping(root, "")
        backends_entry = mapping.get("backends")
        cfg: Config = self.dataclass(Config, root, "", skip={"backends", "path", "base_dir"})
        for name in ("path", "base_dir"):
            if name in mapping:
                raise self.error(name, mapping[name][0], "unknown key")
        if backends_entry is not None:
            seq = backends_entry[1]
            if _is_null(seq):
                seq = yaml.SequenceNode("tag:yaml.org,2002:seq", [])
            if not isinstance(seq, yaml.SequenceNode):
                raise self.error("backends", seq, f"expected a list, got {_node_kind(seq)}")
            seen: dict[str, int] = {}
            for i, node in enumerate(seq.value):
                backend = self.backend(node, f"backends[{i}]")
                if backend.name in seen:
                    raise self.error(
                        f"backends[{i}].name",
                        self.mapping(node, "")["name"][1],
                        f"duplicate backend name {backend.name!r} (also backends[{seen[backend.name]}])",
                    )
                seen[backend.name] = i
                cfg.backends.append(backend)
        self.check_strategies(mapping.get("routing"))
        return cfg

    def check_strategies(self, routing: tuple[yaml.Node, yaml.Node] | None) -> None:
        if routing is None or not self.strategies:
            return
        known = ", ".join(sorted(self.strategies))
        fields = self.mapping(routing[1], "routing")
        named: list[tuple[str, yaml.Node]] = []
        if "strategy" in fields:
            named.append(("routing.strategy", fields["strategy"][1]))
        if "model_strategies" in fields:
            per_model = self.mapping(fields["model_strategies"][1], "routing.model_strategies")
            named += [(f"routing.model_strategies.{k}", v) for k, (_, v) in per_model.items()]
        for key, node in named:
            if self.plain(node, key) not in self.strategies:
                raise self.error(key, node, f"unknown strategy {node.value!r} (available: {known})")

    def backend(self, node: yaml.Node, key: str) -> BackendConfig:
        mapping = self.mapping(node, key)
        if "provider" not in mapping:
            raise self.error(f"{key}.provider", node, "required key is missing")
        provider_name = self.build(str, mapping["provider"][1], f"{key}.provider")
        provider = self.providers.get(provider_name)
        if provider is None:
            known = ", ".join(sorted(self.providers)) or "none loaded"
            raise self.error(
                f"{key}.provider",
                mapping["provider"][1],
                f"unknown provider {provider_name!r} (available: {known})",
            )
        own = set(mapping) - _BACKEND_COMMON
        options_cls = provider.options_class
        if own and options_cls is None:
            bad = sorted(own)[0]
            raise self.error(
                f"{key}.{bad}", mapping[bad][0], f"unknown key for provider {provider_name!r}"
            )
        for required in provider.required_keys:
            if required not in mapping:
                raise self.error(
                    f"{key}.{required}", node, f"required for provider {provider_name!r}"
                )
        common: BackendConfig = self.dataclass(BackendConfig, node, key, skip=own | _NOT_YAML)
        if options_cls is not None:
            options_fields = {f.name for f in dataclasses.fields(options_cls)}
            common_only = (set(mapping) & _BACKEND_COMMON) - options_fields
            common.options = self.dataclass(options_cls, node, key, skip=common_only)
        if not common.name or not re.fullmatch(r"[A-Za-z0-9._-]+", common.name):
            raise self.error(
                f"{key}.name", mapping["name"][1], "use letters, digits, '.', '_' and '-' only"
            )
        return common


_CONSTRUCTOR = yaml.SafeLoader("")


def load_config(
    path: str | os.PathLike[str],
    providers: dict[str, type[Provider]],
    strategies: Collection[str] = (),
) -> Config:
    """Read and validate a config file. Raises ConfigError."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(file, "", None, f"cannot read config: {exc.strerror or exc}") from exc
    return parse_config(
        text, providers, strategies, file=file, base_dir=Path(path).resolve().parent
    )


def parse_config(
    text: str,
    providers: dict[str, type[Provider]],
    strategies: Collection[str] = (),
    *,
    file: str = "<string>",
    base_dir: Path | None = None,
) -> Config:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(file, "", line, f"invalid YAML: {exc.problem or exc}") from exc
    if root is None:
        raise ConfigError(file, "", None, "the file is empty (expected a mapping with backends:)")
    cfg = _Loader(file, providers, strategies).config(root)
    cfg.path = file
    cfg.base_dir = base_dir or Path.cwd()
    for backend in cfg.backends:
        backend.base_dir = cfg.base_dir
    return cfg


def parse_backend(
    text: str, providers: dict[str, type[Provider]], *, file: str = "<request body>"
) -> BackendConfig:
    """One backend entry (YAML or JSON), validated exactly like one in ``backends:``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise ConfigError(file, "", line, f"invalid JSON/YAML: {exc.problem or exc}") from exc
    if node is None:
        raise ConfigError(file, "", None, "empty; expected a mapping describing the backend")
    return _Loader(file, providers, ()).backend(node, "backend")


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if _is_null(node):
        return "null"
    return repr(node.value)


def _describe(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if tp in names:
        return names[tp]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return " or ".join(_describe(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))
