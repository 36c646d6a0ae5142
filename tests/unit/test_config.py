"""Config errors name the file, the key path and the line; the router does not start."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from router.config.loader import ConfigError, load_config, parse_config
from router.plugins import make_plugin_manager
from router.registry import Registry

REGISTRY = Registry.collect(make_plugin_manager())
PROVIDERS = dict(REGISTRY.providers)
STRATEGIES = set(REGISTRY.strategies)

GOOD = """\
server:
  host: 127.0.0.1
  port: 8400
routing:
  strategy: round_robin
  discovery_interval_s: 60
backends:
  - name: gpu-box-1
    provider: openai_compatible
    base_url: http://127.0.0.1:8001/v1/
    api_key: ${GPU_BOX_KEY}
    models: ["llama-*", "qwen2.5-7b"]
aliases:
  gpt-oss: gpt-oss-20b
"""


def parse(text: str) -> object:
    return parse_config(textwrap.dedent(text), PROVIDERS, STRATEGIES, file="cfg.yaml")


def test_the_contract_schema_loads(monkeypatch):
    monkeypatch.setenv("GPU_BOX_KEY", "sk-1")
    cfg = parse(GOOD)
    (b,) = cfg.backends
    assert (b.name, b.provider, b.api_key) == ("gpu-box-1", "openai_compatible", "sk-1")
    assert b.options.models == ["llama-*", "qwen2.5-7b"]
    assert cfg.aliases == {"gpt-oss": "gpt-oss-20b"} and cfg.routing.discovery_interval_s == 60.0
    assert "sk-1" not in repr(cfg)  # secrets never show in a repr (or a log line built from it)


@pytest.mark.parametrize(
    ("text", "key", "line", "fragment"),
    [
        (GOOD.replace("  port: 8400", "  port: eighty"), "server.port", 3, "expected an integer"),
        (GOOD.replace("  strategy: round_robin", "  strategy: fastest"), "routing.strategy", 5,
         "unknown strategy 'fastest'"),
        (GOOD.replace("    models:", "    modles:"), "backends[0].modles", 12, "unknown key"),
        (GOOD.replace("provider: openai_compatible", "provider: nope"), "backends[0].provider", 9,
         "unknown provider 'nope' (available: "),
        (GOOD.replace("aliases:", "  - name: gpu-box-1\n    provider: openai_compatible\n    base_url: http://x\naliases:"),
         "backends[1].name", 13, "duplicate backend name"),
        (GOOD.replace("${GPU_BOX_KEY}", "${NOT_SET_ANYWHERE}"), "backends[0].api_key", 11,
         "environment variable NOT_SET_ANYWHERE is not set"),
        (GOOD.replace("    base_url: http://127.0.0.1:8001/v1/\n", ""), "backends[0].base_url", 8, "required"),
        (GOOD.replace("aliases:", "alises:"), "alises", 13, "unknown key"),
        (GOOD.replace('["llama-*", "qwen2.5-7b"]', "42"), "backends[0].models", 12, "expected a list"),
        (GOOD.replace("  port: 8400", "  port: 8400\n  port: 8401"), "server.port", 4, "duplicate key"),
        (GOOD.replace("  port: 8400", "  port: 99999"), "server.port", 3, "must be at most 65535"),
        (GOOD.replace("  discovery_interval_s: 60", "  discovery_interval_s: 0"),
         "routing.discovery_interval_s", 6, "must be greater than 0"),
        (GOOD.replace("    models:", "    weight: -1\n    models:"), "backends[0].weight", 12,
         "must be greater than 0"),
    ],
)
def test_errors_name_file_key_and_line(monkeypatch, text, key, line, fragment):
    monkeypatch.setenv("GPU_BOX_KEY", "k")
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert (err.value.file, err.value.key, err.value.line) == ("cfg.yaml", key, line)
    assert fragment in err.value.message
    assert str(err.value).startswith(f"cfg.yaml:{line}: {key}: ")


def test_broken_yaml_names_the_line():
    with pytest.raises(ConfigError) as err:
        parse("backends:\n  - name: [unclosed\n")
    assert err.value.line is not None and "invalid YAML" in str(err.value)


def test_env_default_and_empty_file(tmp_path):
    cfg = parse("backends:\n  - {name: a, provider: openai_compatible, base_url: 'http://h', api_key: '${NOPE_X:-fallback}'}\n")
    assert cfg.backends[0].api_key == "fallback"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(empty, PROVIDERS)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml", PROVIDERS)


def test_an_error_inside_a_union_member_is_reported_where_it_is():
    # gguf's models: entries are "a path or a mapping"; a mapping's own error must show,
    # not "expected a string or a mapping".
    text = """\
backends:
  - name: local
    provider: gguf
    models:
      - /models/a.gguf
      - name: b
        path: /models/b.gguf
        n_ctx: -5
"""
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert (err.value.key, err.value.line) == ("backends[0].models[1].n_ctx", 8)
    assert "must be at least 0" in err.value.message
