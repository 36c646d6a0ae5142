"""The dashboard plugin's HTTP side (plugins/dashboard): its files, its admin-only API,
discovery's errors. The pages themselves are tested in a browser (tests/ui)."""

from __future__ import annotations

from router.testing import FakeUpstream, router_client

ADMIN = {"Authorization": "Bearer admin"}


def config(upstream: FakeUpstream, **extra: object) -> dict[str, object]:
    return {"server": {"admin_key": "admin"},
            "backends": [{"name": "a", "provider": "openai_compatible", "base_url": upstream.url}], **extra}


async def test_pages_and_files_are_served_and_nothing_else() -> None:
    upstream = await FakeUpstream("a").start()
    try:
        async with router_client(config(upstream, auth={"keys": []})) as client:
            for path in ("/ui", "/ui/overview", "/ui/settings", "/ui/playground"):
                resp = await client.get(path)  # public, even with client keys on
                assert resp.status == 200 and resp.content_type == "text/html"
                assert '<script src="/ui/static/app.js"' in await resp.text()
            js = await client.get("/ui/static/app.js")
            assert js.status == 200 and js.content_type == "text/javascript"
            for path in ("/ui/nope", "/ui/static/..%2F__init__.py", "/ui/static/series.py"):
                resp = await client.get(path)
                assert resp.status == 404, path
                assert "error" in await resp.json()  # OpenAI's envelope
    finally:
        await upstream.stop()


async def test_the_api_needs_the_admin_key_and_counts_requests() -> None:
    upstream = await FakeUpstream("a").start()
    try:
        async with router_client(config(upstream)) as client:
            assert (await client.get("/ui/api/overview")).status == 401
            for _ in range(5):
                resp = await client.post("/v1/chat/completions",
                                         json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
                assert resp.status == 200
            body = await (await client.get("/ui/api/overview", headers=ADMIN)).json()
            assert body["window_s"] == 300
            assert body["backends"]["a"]["samples"] == 5
            assert body["backends"]["a"]["p50_ms"] > 0
            assert body["backends"]["a"]["p95_ms"] >= body["backends"]["a"]["p50_ms"]
    finally:
        await upstream.stop()


async def test_discover_lists_a_servers_models_and_says_what_is_wrong() -> None:
    upstream = await FakeUpstream("a", models=["m1", "m2"]).start()
    try:
        async with router_client(config(upstream)) as client:
            resp = await client.post("/ui/api/discover", json={"base_url": upstream.url + "/v1/"}, headers=ADMIN)
            assert resp.status == 200
            assert [m["id"] for m in (await resp.json())["models"]] == ["m1", "m2"]
            cases = [({"base_url": "ftp://x"}, "base_url", "http:// or https://"),
                     ({"base_url": "http://127.0.0.1:9/v1"}, "base_url", "could not reach http://127.0.0.1:9/v1/models"),
                     ({"base_url": upstream.url, "api_key": 5}, "api_key", "api_key"),
                     ({"base_url": upstream.url + "/nothing-here"}, "base_url", "is this an OpenAI-compatible server")]
            for body, param, words in cases:
                resp = await client.post("/ui/api/discover", json=body, headers=ADMIN)
                error = (await resp.json())["error"]
                assert resp.status == 400 and error["param"] == param and words in error["message"], body
            resp = await client.post("/ui/api/discover", data=b"not json", headers=ADMIN)
            assert resp.status == 400
            assert (await client.post("/ui/api/discover", json={"base_url": upstream.url})).status == 401
    finally:
        await upstream.stop()
