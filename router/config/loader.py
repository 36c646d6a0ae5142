"""config.yaml into typed dataclasses; every error names the file, the key path and the line.

The loader walks PyYAML's node tree (which keeps line numbers) against the dataclasses of
``router.config.schema``, so unknown keys, wrong types and missing ``${VAR}`` environment
variables are reported where they are written. Provider plugins declare their own backend
keys as a dataclass (``Provider.options_class``) and get the same checking.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Union

import yaml

from router.config.env import ENV_KEYS, overrides_from_env, substitute
from router.config.schema import BackendConfig, Config, TLSConfig, accepted_keys
from router.provider import Provider


class ConfigError(Exception):
    """A config problem, located: ``file:line: key.path: what to fix``."""

    def __init__(self, file: str, key: str, line: int | None, message: str) -> None:
        self.file, self.key, self.line, self.message = file, key, line, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


_NOT_YAML = {"options", "base_dir"}
_BACKEND_COMMON = {f.name for f in dataclasses.fields(BackendConfig)} - _NOT_YAML


class _Loader:
    def __init__(
        self, file: str, providers: Mapping[str, type[Provider]], strategies: Collection[str]
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
            # When the node's kind fits one member only (a mapping: a dataclass or a dict;
            # a list: a list), that member's own error is the one worth reporting.
            fitting = [a for a in args if a is not type(None) and _fits(a, node)]
            if len(fitting) == 1:
                return self.build(fitting[0], node, key)
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
        # Groups declared once and written at this level (schema.flatten / overrides_of).
        groups = {n: f for n, f in fields.items() if "flatten" in f.metadata or "overrides_of" in f.metadata}
        plain = {n: f for n, f in fields.items() if n not in groups}
        grouped = {k: n for n, f in groups.items()
                   for k in accepted_keys(f.metadata.get("flatten") or f.metadata["overrides_of"])}
        kwargs: dict[str, Any] = {}
        for name, (k_node, v_node) in mapping.items():
            if skip and name in skip:
                continue
            if name in grouped and name not in plain:
                continue
            if name not in plain:
                known = ", ".join(sorted(n for n in set(plain) | set(grouped) if not (skip and n in skip)))
                raise self.error(_join(key, name), k_node, f"unknown key (known keys: {known})")
            kwargs[name] = self.build(hints[name], v_node, _join(key, name))
            self.check_bounds(fields[name], kwargs[name], v_node, _join(key, name))
        for name, f in groups.items():
            group_cls = f.metadata.get("flatten") or f.metadata["overrides_of"]
            wanted = accepted_keys(group_cls)
            others = set(mapping) - wanted
            if "flatten" in f.metadata:
                kwargs[name] = self.dataclass(group_cls, node, key, skip=others)
            else:
                kwargs[name] = self.overrides(group_cls, mapping, key, wanted)
        for name, f in plain.items():
            if (
                name not in kwargs
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ):
                raise self.error(_join(key, name), node, "required key is missing")
        return cls(**kwargs)

    def overrides(
        self, cls: type, mapping: dict[str, tuple[yaml.Node, yaml.Node]], key: str, wanted: set[str]
    ) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out: dict[str, Any] = {}
        for name in sorted(wanted & set(mapping)):
            v_node = mapping[name][1]
            out[name] = self.build(hints[name], v_node, _join(key, name))
            self.check_bounds(fields[name], out[name], v_node, _join(key, name))
        return out

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
        if meta.get("choices") and isinstance(value, list):
            for item in value:
                if item not in meta["choices"]:
                    raise self.error(key, node, f"each item must be one of {', '.join(meta['choices'])}, got {item!r}")
        elif meta.get("choices") and value not in meta["choices"]:
            raise self.error(key, node, f"must be one of {', '.join(meta['choices'])}, got {value!r}")
        if meta.get("length") is not None and (len(value) != meta["length"] or not all(value)):
            raise self.error(key, node, f"must be a list of exactly {meta['length']} non-empty items, got {value!r}")

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
        return substitute(text, lambda name: self.error(key, node, f"environment variable {name} is not set"))

    # -- the document -------------------------------------------------------------------

    def config(self, root: yaml.Node) -> Config:
        mapping = self.mapping(root, "")
        backends_entry = mapping.get("backends")
        cfg: Config = self.dataclass(Config, root, "", skip={"backends", "path", "base_dir", "from_env"})
        for name in ("path", "base_dir", "from_env"):
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
        if cfg.auth is not None:
            self.check_keys(cfg, mapping["auth"][1])
        return cfg

    def check_keys(self, cfg: Config, auth: yaml.Node) -> None:
        """Client keys: names and keys unique, keys long enough to be secret."""
        assert cfg.auth is not None
        keys_node = self.mapping(auth, "auth").get("keys")
        entries = keys_node[1].value if keys_node is not None and isinstance(keys_node[1], yaml.SequenceNode) else []
        names: dict[str, int] = {}
        secrets: dict[str, int] = {}
        for i, (entry, node) in enumerate(zip(cfg.auth.keys, entries)):
            fields = self.mapping(node, f"auth.keys[{i}]")
            if not re.fullmatch(r"[A-Za-z0-9._-]+", entry.name):
                raise self.error(f"auth.keys[{i}].name", fields["name"][1], "use letters, digits, '.', '_' and '-' only")
            if entry.name in names:
                raise self.error(f"auth.keys[{i}].name", fields["name"][1],
                                 f"duplicate key name {entry.name!r} (also auth.keys[{names[entry.name]}])")
            names[entry.name] = i
            if len(entry.key) < 16:
                raise self.error(f"auth.keys[{i}].key", fields["key"][1],
                                 "too short to be secret: use at least 16 characters (e.g. openssl rand -hex 24)")
            if entry.key in secrets:
                raise self.error(f"auth.keys[{i}].key", fields["key"][1],
                                 f"the same key as auth.keys[{secrets[entry.key]}]: each key must be its own")
            secrets[entry.key] = i

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
            options_fields = accepted_keys(options_cls)
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
    providers: Mapping[str, type[Provider]],
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
    providers: Mapping[str, type[Provider]],
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
    loader = _Loader(file, providers, strategies)
    cfg = loader.config(root)
    cfg.path = file
    cfg.base_dir = base_dir or Path.cwd()
    apply_env(cfg, os.environ, file)
    if cfg.server.tls is not None:
        cfg.server.tls.cert = str(cfg.base_dir / Path(cfg.server.tls.cert).expanduser())
        cfg.server.tls.key = str(cfg.base_dir / Path(cfg.server.tls.key).expanduser())
    if cfg.auth is not None and cfg.auth.store is not None:
        cfg.auth.store = str(cfg.base_dir / Path(cfg.auth.store).expanduser())
    for backend in cfg.backends:
        backend.base_dir = cfg.base_dir
    return cfg


def apply_env(cfg: Config, environ: Mapping[str, str], file: str) -> None:
    """The environment variables of ``router.config.env.ENV_KEYS`` over the file's values,
    checked like the file's (a bad value names the variable)."""
    def bad(var: str, message: str) -> ConfigError:
        return ConfigError(file, "", None, f"environment variable {var}: {message}")

    for path, value in overrides_from_env(environ, bad).items():
        *sections, name = path.split(".")
        section: Any = cfg
        for part in sections:
            section = getattr(section, part)
        if path == "server.tls":
            cfg.server.tls = None if value is None else TLSConfig(**value)  # type: ignore[arg-type]
            cfg.from_env[path] = "SERVER_SSL_ENABLED"
            continue
        var = next(v for v, (k, _) in ENV_KEYS.items() if k == path)
        meta = {f.name: f for f in dataclasses.fields(section)}[name].metadata
        choices = meta.get("choices")
        if choices and value not in choices:
            raise bad(var, f"must be one of {', '.join(choices)} (it sets {path}), got {value!r}")
        if isinstance(value, (int, float)):
            ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
            broken = ((ge is not None and value < ge and f"at least {ge:g}")
                      or (gt is not None and value <= gt and f"greater than {gt:g}")
                      or (le is not None and value > le and f"at most {le:g}"))
            if broken:
                raise bad(var, f"must be {broken} (it sets {path}), got {value!r}")
        setattr(section, name, value)
        cfg.from_env[path] = var


def parse_backend(
    text: str, providers: Mapping[str, type[Provider]], *, file: str = "<request body>"
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


def _fits(tp: Any, node: yaml.Node) -> bool:
    """Whether a node of this kind could be a value of ``tp`` at all."""
    origin = typing.get_origin(tp)
    if isinstance(node, yaml.MappingNode):
        return origin is dict or (isinstance(tp, type) and dataclasses.is_dataclass(tp)) or tp is Any
    if isinstance(node, yaml.SequenceNode):
        return origin is list or tp is Any
    return origin not in (dict, list) and not (isinstance(tp, type) and dataclasses.is_dataclass(tp))


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
