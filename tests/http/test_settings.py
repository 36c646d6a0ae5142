"""Live settings (PUT/GET /admin/settings): validated exactly like the YAML, applied at
once, persisted in auth.store and applied again after a restart, the file winning on
conflict; backends registered through /admin/backends survive a restart too."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from router.config.loader import load_config
from router.config.schema import Config
from router.plugins import make_plugin_manager
from router.registry import Registry
from router.testing import FakeUpstream, router_client

ADMIN = {"Authorization": "Bearer admin-secret"}
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


def config(store: Path, *ups: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {"server": {"admin_key": "admin-secret"}, "auth": {"open": True, "store": str(store)},
            "backends": [{"name": u.name, "provider": "openai_compatible", "base_url": u.url} for u in ups],
            **extra}


def from_file(path: Path, cfg: dict[str, Any]) -> Config:
    """The config as serve reads it: from a file (so 'the file wins' can see the file)."""
    path.write_text(yaml.safe_dump(cfg))
    registry = Registry.collect(make_plugin_manager())
    return load_config(path, registry.providers, registry.strategies)


async def put(client: Any, key: str, value: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.put("/admin/settings", json={"key": key, "value": value}, headers=ADMIN)
    return resp.status, await resp.json()


async def settings(client: Any) -> dict[str, dict[str, Any]]:
    resp = await client.get("/admin/settings", headers=ADMIN)
    assert resp.status == 200
    return (await resp.json())["settings"]


async def test_settings_change_live_and_after_a_restart(tmp_path: Path):
    warnings: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    capture = Capture(logging.WARNING)
    logging.getLogger("router").addHandler(capture)
    a = await FakeUpstream("a").start()
    b = await FakeUpstream("b").start()
    store = tmp_path / "router.db"
    cfg = config(store, a, b)
    try:
        async with router_client(from_file(tmp_path / "c.yaml", cfg)) as client:
            assert (await client.get("/admin/settings")).status == 401
            shown = await settings(client)
            assert shown["routing.strategy"] == {"value": "round_robin", "source": "default"}
            assert shown["auth.store"]["source"] == "file"
            status, body = await put(client, "routing.strategy", "weighted")
            assert status == 200 and body["value"] == "weighted" and body["persistent"] is True
            status, _ = await put(client, "backends.b.weight", 3)
            assert status == 200
            status, _ = await put(client, "circuit_breaker.failure_threshold", 2)
            assert status == 200
            seen = [(await client.post("/v1/chat/completions", json=CHAT)).headers["X-Router-Backend"]
                    for _ in range(8)]
            assert seen.count("b") == 6 and seen.count("a") == 2  # weighted 1:3, smooth
            shown = await settings(client)
            assert shown["routing.strategy"] == {"value": "weighted", "source": "store"}
            assert shown["backends.b.weight"]["value"] == 3 and shown["backends.b.weight"]["source"] == "store"
        async with router_client(from_file(tmp_path / "c.yaml", cfg)) as client:  # a restart: changes are back
            shown = await settings(client)
            assert shown["routing.strategy"] == {"value": "weighted", "source": "store"}
            assert shown["circuit_breaker.failure_threshold"]["value"] == 2
            seen = [(await client.post("/v1/chat/completions", json=CHAT)).headers["X-Router-Backend"]
                    for _ in range(8)]
            assert seen.count("b") == 6
        # The file wins on conflict, with a warning.
        async with router_client(from_file(tmp_path / "c.yaml", {**cfg, "routing": {"strategy": "round_robin"}})) \
                as client:
            shown = await settings(client)
            assert shown["routing.strategy"] == {"value": "round_robin", "source": "file"}
            assert shown["backends.b.weight"]["value"] == 3  # not in the file: the store's
        assert any("setting routing.strategy was changed through the admin API, but the config file sets it" in w
                   for w in warnings)
    finally:
        logging.getLogger("router").removeHandler(capture)
        await a.stop()
        await b.stop()


async def test_bad_keys_and_values_are_400_naming_the_key(tmp_path: Path):
    a = await FakeUpstream("a").start()
    try:
        async with router_client(config(tmp_path / "s.db", a)) as client:
            for key, value, param, words in (
                ("routing.strategy", "fastest", "routing.strategy", "unknown strategy"),
                ("routing.retries", -1, "routing.retries", "at least 0"),
                ("routing.colour", 1, "routing.colour", "unknown key"),
                ("circuit_breaker.cooldown_s", "soon", "circuit_breaker.cooldown_s", "expected a number"),
                ("backends.a.weight", 0, "backends.a.weight", "greater than 0"),
                ("backends.nope.weight", 2, "backends.nope.weight", "no backend named"),
                ("server.port", 1, "key", "not a setting that can change"),
            ):
                status, body = await put(client, key, value)
                assert status == 400, (key, body)
                assert body["error"]["param"] == param and words in body["error"]["message"], body
            resp = await client.put("/admin/settings", json={"value": 1}, headers=ADMIN)
            assert resp.status == 400
            assert (await settings(client))["routing.retries"]["value"] == 2  # nothing changed
    finally:
        await a.stop()


async def test_a_backend_field_rebuilds_the_backend_and_secrets_are_redacted(tmp_path: Path):
    a = await FakeUpstream("a").start()
    a2 = await FakeUpstream("a2").start()
    cfg = config(tmp_path / "s.db", a)
    cfg["backends"][0]["api_key"] = "upstream-secret-123456"
    try:
        async with router_client(cfg) as client:
            assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
            status, _ = await put(client, "backends.a.base_url", a2.url)
            assert status == 200
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert (await resp.json())["x_upstream"] == "a2"
            text = await (await client.get("/admin/settings", headers=ADMIN)).text()
            assert "upstream-secret-123456" not in text and "admin-secret" not in text
            shown = await settings(client)
            assert shown["backends.a.api_key"]["value"] == "<redacted>"
            assert shown["server.admin_key"]["value"] == "<redacted>"
    finally:
        await a.stop()
        await a2.stop()


async def test_backends_registered_through_the_admin_api_survive_a_restart(tmp_path: Path):
    a = await FakeUpstream("a").start()
    b = await FakeUpstream("b", models=["other-model"]).start()
    cfg = config(tmp_path / "s.db", a)
    try:
        async with router_client(cfg) as client:
            resp = await client.post("/admin/backends", headers=ADMIN,
                                     json={"name": "b", "provider": "openai_compatible", "base_url": b.url})
            assert resp.status == 201
        async with router_client(cfg) as client:
            resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "other-model"})
            assert resp.status == 200 and resp.headers["X-Router-Backend"] == "b"
            assert (await client.delete("/admin/backends/b", headers=ADMIN)).status == 200
        async with router_client(cfg) as client:
            resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "other-model"})
            assert resp.status == 404
    finally:
        await a.stop()
        await b.stop()


async def test_without_a_store_changes_apply_until_restart(tmp_path: Path):
    a = await FakeUpstream("a").start()
    cfg = {"server": {"admin_key": "admin-secret"}, "backends": [
        {"name": "a", "provider": "openai_compatible", "base_url": a.url}]}
    try:
        async with router_client(cfg) as client:
            status, body = await put(client, "routing.retries", 0)
            assert status == 200 and body["persistent"] is False
            assert (await settings(client))["routing.retries"]["value"] == 0
        async with router_client(cfg) as client:
            assert (await settings(client))["routing.retries"]["value"] == 2
    finally:
        await a.stop()


async def test_generation_settings_apply_to_the_next_request(tmp_path: Path):
    a = await FakeUpstream("a").start()
    try:
        async with router_client(from_file(tmp_path / "c.yaml", config(tmp_path / "s.db", a))) as client:
            assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
            assert "temperature" not in a.requests[-1]
            status, body = await put(client, "generation.defaults.temperature", 0.3)
            assert status == 200 and body["value"] == 0.3
            assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
            assert a.requests[-1]["temperature"] == 0.3
            status, body = await put(client, "generation.defaults.temperature", 7)
            assert status == 400 and body["error"]["param"] == "generation.defaults.temperature"
    finally:
        await a.stop()
