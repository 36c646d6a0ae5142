"""Routing strategies, failover, circuit breaking, health, live backends and limits,
against several real upstreams that are slowed, broken and killed mid-test."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import aiohttp

from tests.conftest import backend

ADMIN = {"Authorization": "Bearer admin-secret"}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def chat(session: aiohttp.ClientSession, router, model: str = "test-model", **extra: Any):
    async with session.post(f"{router.url}/v1/chat/completions", json={"model": model, **CHAT, **extra}) as resp:
        body = await resp.json()
        return resp.status, resp.headers.get("X-Router-Backend"), body, resp.headers


async def spread(router, n: int, concurrency: int = 1, **extra: Any) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:
        async def one() -> None:
            async with sem:
                status, name, body, _ = await chat(session, router, **extra)
                counts[name if status == 200 else f"error {status}"] += 1
        await asyncio.gather(*(one() for _ in range(n)))
    return counts


def three(upstreams, **kw):
    return [upstreams(name, **kw) for name in ("a", "b", "c")]


async def test_round_robin_is_even(upstreams, start_router):
    ups = three(upstreams)
    router = start_router({"backends": [backend(u.name, u) for u in ups]})
    assert await spread(router, 90) == {"a": 30, "b": 30, "c": 30}


async def test_weighted_follows_weights(upstreams, start_router):
    ups = three(upstreams)
    router = start_router({"routing": {"strategy": "weighted"},
                           "backends": [backend(u.name, u, weight=w) for u, w in zip(ups, (1, 2, 5))]})
    assert await spread(router, 80) == {"a": 10, "b": 20, "c": 50}


async def test_random_uses_every_backend(upstreams, start_router):
    ups = three(upstreams)
    router = start_router({"routing": {"strategy": "random"}, "backends": [backend(u.name, u) for u in ups]})
    counts = await spread(router, 150)
    assert set(counts) == {"a", "b", "c"} and min(counts.values()) >= 20


async def sessions_map(router, keys: list[str]) -> dict[str, str]:
    out = {}
    async with aiohttp.ClientSession() as session:
        for key in keys:
            status, name, _, _ = await chat(session, router, user=key)
            assert status == 200
            out[key] = name
    return out


async def test_sticky_sessions_stay_and_move_minimally(upstreams, start_router):
    ups = three(upstreams)
    config = {"server": {"admin_key": "admin-secret"}, "routing": {"strategy": "sticky"},
              "backends": [backend(u.name, u) for u in ups]}
    router = start_router(config)
    keys = [f"user-{i}" for i in range(120)]
    first = await sessions_map(router, keys)
    assert await sessions_map(router, keys) == first  # the same session, the same backend
    assert set(first.values()) == {"a", "b", "c"}

    # A second replica with the same config agrees without sharing any state.
    replica = start_router(config, name="replica.yaml")
    assert await sessions_map(replica, keys) == first

    # The X-Session-ID header is the key when there is no user field.
    async with aiohttp.ClientSession() as session:
        names = set()
        for _ in range(5):
            async with session.post(f"{router.url}/v1/chat/completions", headers={"X-Session-ID": "s-1"},
                                    json={"model": "test-model", **CHAT}) as resp:
                names.add(resp.headers["X-Router-Backend"])
        assert len(names) == 1

    # Adding a backend moves only sessions that now belong to it (about a quarter).
    d = upstreams("d")
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        async with session.post(f"{router.url}/admin/backends",
                                json={"name": "d", "provider": "openai_compatible", "base_url": d.url}) as resp:
            assert resp.status == 201, await resp.text()
    added = await sessions_map(router, keys)
    moved = [k for k in keys if added[k] != first[k]]
    assert all(added[k] == "d" for k in moved)
    assert 0.1 * len(keys) < len(moved) < 0.45 * len(keys)

    # Removing a backend moves only the sessions that were on it.
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        async with session.delete(f"{router.url}/admin/backends/a") as resp:
            assert resp.status == 200
    removed = await sessions_map(router, keys)
    for k in keys:
        if added[k] != "a":
            assert removed[k] == added[k]
        else:
            assert removed[k] != "a"


async def test_least_connections_prefers_idle_backends(upstreams, start_router):
    slow, fast = upstreams("slow"), upstreams("fast")
    slow.behaviour.delay_s = 1.5
    router = start_router({"routing": {"strategy": "least_connections"},
                           "backends": [backend("slow", slow), backend("fast", fast)]})
    async with aiohttp.ClientSession() as session:
        async def later(i: int):
            await asyncio.sleep(0.05 * i)
            return await chat(session, router)
        results = await asyncio.gather(*(later(i) for i in range(20)))
    names = collections.Counter(name for _, name, _, _ in results)
    assert all(status == 200 for status, *_ in results)
    assert names["slow"] <= 2 and names["fast"] >= 18  # round robin would give 10 / 10


async def test_least_latency_prefers_the_fast_backend(upstreams, start_router):
    slow, fast = upstreams("slow"), upstreams("fast")
    slow.behaviour.delay_s = 0.15
    router = start_router({"routing": {"strategy": "least_latency"},
                           "backends": [backend("slow", slow), backend("fast", fast)]})
    counts = await spread(router, 30)
    assert counts["fast"] >= 27


async def test_failover_on_5xx_and_connection_reset_costs_nothing(upstreams, start_router):
    bad, reset, good = upstreams("bad"), upstreams("reset"), upstreams("good")
    bad.behaviour.fail_status = 503
    reset.behaviour.reset = True
    router = start_router({"server": {"admin_key": "admin-secret"},
                           "circuit_breaker": {"failure_threshold": 1000},
                           "backends": [backend(u.name, u) for u in (bad, reset, good)]})
    counts = await spread(router, 30)
    assert counts == {"good": 30}
    assert len(bad.requests) > 0 and len(reset.requests) > 0
    status = await admin_get(router, "/status")
    assert status["retries"] >= 20 and status["errors"] == 0


async def test_client_errors_are_not_retried(upstreams, start_router):
    a, b = upstreams("a"), upstreams("b")
    a.behaviour.fail_status = b.behaviour.fail_status = 400
    router = start_router({"backends": [backend("a", a), backend("b", b)]})
    async with aiohttp.ClientSession() as session:
        status, _, body, _ = await chat(session, router)
    assert status == 400 and body["error"]["code"] == "fake_failure"
    assert len(a.requests) + len(b.requests) == 1


async def test_429_retry_after_cools_the_backend_down(upstreams, start_router):
    limited, other = upstreams("limited"), upstreams("other")
    limited.behaviour.fail_status = 429
    limited.behaviour.retry_after = "30"
    router = start_router({"backends": [backend("limited", limited), backend("other", other)]})
    counts = await spread(router, 10)
    assert counts == {"other": 10}
    assert len(limited.requests) == 1  # cooled down for 30 s after its first 429


async def test_all_failing_returns_last_error_and_503_when_all_open(upstreams, start_router):
    a, b = upstreams("a"), upstreams("b")
    a.behaviour.fail_status = b.behaviour.fail_status = 500
    router = start_router({"circuit_breaker": {"failure_threshold": 2, "cooldown_s": 30},
                           "backends": [backend("a", a), backend("b", b)]})
    async with aiohttp.ClientSession() as session:
        status, _, body, _ = await chat(session, router)
        assert status == 500 and body["error"]["code"] == "fake_failure"
        await chat(session, router)  # second failure on each: both circuits open
        status, _, body, headers = await chat(session, router)
    assert status == 503 and body["error"]["code"] == "no_backend_available"
    assert "circuit open" in body["error"]["message"]
    assert 1 <= int(headers["Retry-After"]) <= 30
    assert len(a.requests) == len(b.requests) == 2


async def test_open_circuit_adds_no_latency_then_half_opens(upstreams, start_router):
    hung, good = upstreams("hung"), upstreams("good")
    hung.behaviour.hang = True
    router = start_router({
        "routing": {"strategy": "round_robin"},
        "circuit_breaker": {"failure_threshold": 2, "cooldown_s": 2},
        "backends": [backend("hung", hung, first_byte_timeout_s=0.5), backend("good", good)],
    })
    async with aiohttp.ClientSession() as session:
        for _ in range(4):  # each lands on hung once, times out, fails over
            status, name, _, _ = await chat(session, router)
            assert (status, name) == (200, "good")
        assert len(hung.requests) == 2  # the circuit opened after two timeouts
        started = time.monotonic()
        for _ in range(10):
            status, name, _, _ = await chat(session, router)
            assert (status, name) == (200, "good")
        elapsed = time.monotonic() - started
        assert len(hung.requests) == 2  # not tried while open
        assert elapsed < 0.5  # ten requests, none waited for the dead backend's timeout
        hung.behaviour.hang = False  # it recovers; after the cooldown one trial closes the circuit
        await asyncio.sleep(2.1)
        counts = collections.Counter()
        for _ in range(6):
            status, name, _, _ = await chat(session, router)
            counts[name] += 1
        assert counts["hung"] >= 2


async def test_backend_killed_under_load_costs_zero_failures(bg, upstreams, start_router):
    ups = three(upstreams)
    for u in ups:
        u.behaviour.delay_s = 0.02
    router = start_router({"server": {"admin_key": "admin-secret"},
                           "routing": {"strategy": "least_connections"},
                           "backends": [backend(u.name, u) for u in ups]})
    statuses: collections.Counter[int] = collections.Counter()
    sem = asyncio.Semaphore(64)
    total = 600
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        async def one(i: int) -> None:
            async with sem:
                status, _, _, _ = await chat(session, router)
                statuses[status] += 1
                if i == total // 3:
                    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(ups[0].kill(), bg.loop))
        await asyncio.gather(*(one(i) for i in range(total)))
    status = await admin_get(router, "/status")
    print(f"\nchaos: sent={total} failed={total - statuses[200]} retried={status['retries']}")
    assert statuses == {200: total}
    states = {b["name"]: b["circuit"] for b in status["backends"]}
    assert states["a"] == "open" or not next(b for b in status["backends"] if b["name"] == "a")["healthy"]


async def test_register_and_unregister_under_load_lose_nothing(upstreams, start_router):
    a, b = upstreams("a"), upstreams("b")
    for u in (a, b):
        u.behaviour.delay_s = 0.05
    router = start_router({"server": {"admin_key": "admin-secret"},
                           "backends": [backend("a", a)]})
    statuses: collections.Counter[int] = collections.Counter()
    names: collections.Counter[str] = collections.Counter()
    sem = asyncio.Semaphore(20)
    async with aiohttp.ClientSession() as session, aiohttp.ClientSession(headers=ADMIN) as admin:
        async def one(i: int) -> None:
            async with sem:
                status, name, _, _ = await chat(session, router)
                statuses[status] += 1
                names[name] += 1
        async def churn() -> None:
            await asyncio.sleep(0.3)
            async with admin.post(f"{router.url}/admin/backends",
                                  json={"name": "b", "provider": "openai_compatible", "base_url": b.url}) as resp:
                assert resp.status == 201
            await asyncio.sleep(0.3)
            async with admin.delete(f"{router.url}/admin/backends/a") as resp:
                assert resp.status == 200  # returns once a's in-flight requests have finished
            async with admin.get(f"{router.url}/admin/backends") as resp:
                assert [x["name"] for x in (await resp.json())["backends"]] == ["b"]
        await asyncio.gather(churn(), *(one(i) for i in range(400)))
    assert statuses == {200: 400}
    assert names["a"] > 0 and names["b"] > 0


async def admin_get(router, path: str, headers: dict[str, str] | None = ADMIN) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{router.url}{path}", headers=headers or {}) as resp:
            body = await resp.json()
            return body if resp.status == 200 else (resp.status, body)


async def test_admin_api_needs_the_key(upstreams, start_router):
    up = upstreams()
    router = start_router({"server": {"admin_key": "admin-secret"}, "backends": [backend("a", up)]})
    for path in ("/status", "/admin/backends", "/admin/queue"):
        status, body = await admin_get(router, path, headers=None)
        assert status == 401 and body["error"]["type"] == "authentication_error"
        status, _ = await admin_get(router, path, headers={"Authorization": "Bearer wrong"})
        assert status == 401
    status = await admin_get(router, "/status")
    (b,) = status["backends"]
    assert b["name"] == "a" and b["healthy"] is True and b["circuit"] == "closed"
    assert b["models"] == ["test-model"] and "latency_ewma_ms" in b and b["in_flight"] == 0
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        async with session.post(f"{router.url}/admin/backends", json={"name": "x", "provider": "nope"}) as resp:
            body = await resp.json()
            assert resp.status == 400 and "unknown provider 'nope'" in body["error"]["message"]
        async with session.post(f"{router.url}/admin/backends",
                                json={"name": "a", "provider": "openai_compatible", "base_url": up.url}) as resp:
            assert resp.status == 409
        async with session.delete(f"{router.url}/admin/backends/zzz") as resp:
            assert resp.status == 404


async def test_queue_limit_gives_429_and_depth_is_visible(upstreams, start_router):
    up = upstreams()
    up.behaviour.delay_s = 1.0
    router = start_router({"server": {"admin_key": "admin-secret"},
                           "backends": [backend("a", up, max_concurrent=1, max_queue=2)]})
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(chat(session, router)) for _ in range(5)]
        await asyncio.sleep(0.4)
        queue = await admin_get(router, "/admin/queue")
        assert queue["backends"]["a"] == {"in_flight": 1, "queued": 2, "max_concurrent": 1, "max_queue": 2}
        results = await asyncio.gather(*tasks)
    statuses = collections.Counter(status for status, *_ in results)
    assert statuses == {200: 3, 429: 2}
    rejected = next(r for r in results if r[0] == 429)
    assert rejected[2]["error"]["type"] == "rate_limit_error" and int(rejected[3]["Retry-After"]) >= 1
    assert up.max_in_flight == 1


async def test_request_deadline(upstreams, start_router):
    up = upstreams()
    up.behaviour.hang = True
    router = start_router({"routing": {"timeout_s": 0.5, "retries": 0}, "backends": [backend("a", up)]})
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        status, _, body, _ = await chat(session, router)
    assert status == 504 and "routing.timeout_s" in body["error"]["message"]
    assert time.monotonic() - started < 5


async def test_health_checks_are_cheap_and_track_state(bg, upstreams, start_router):
    up, other = upstreams("a"), upstreams("b")
    router = start_router({"server": {"admin_key": "admin-secret"},
                           "routing": {"health_check_interval_s": 0.2},
                           "backends": [backend("a", up, health_check_path="/health"), backend("b", other)]})
    await asyncio.sleep(0.7)
    assert up.health_checks >= 3 and up.requests == []  # probes, never a billed completion
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(up.kill(), bg.loop))
    await asyncio.sleep(0.5)
    status = await admin_get(router, "/status")
    a = next(b for b in status["backends"] if b["name"] == "a")
    assert a["healthy"] is False and "unreachable" in a["last_error"]
    assert await spread(router, 5) == {"b": 5}  # the dead backend is not tried


async def test_discovery_picks_up_new_models_without_restart(upstreams, start_router):
    up = upstreams("a", models=["m1"])
    router = start_router({"routing": {"discovery_interval_s": 0.3}, "backends": [backend("a", up)]})
    async with aiohttp.ClientSession() as session:
        status, _, _, _ = await chat(session, router, model="m2")
        assert status == 404
        up.models.append("m2")
        await asyncio.sleep(0.8)
        status, name, _, _ = await chat(session, router, model="m2")
        assert (status, name) == (200, "a")
        async with session.get(f"{router.url}/v1/models") as resp:
            assert {m["id"] for m in (await resp.json())["data"]} == {"m1", "m2"}


async def test_unknown_model_triggers_one_early_discovery(upstreams, start_router):
    up = upstreams("a", models=["m1"])
    router = start_router({"routing": {"discovery_interval_s": 3600}, "backends": [backend("a", up)]})
    async with aiohttp.ClientSession() as session:
        up.models.append("m2")
        checks = up.health_checks
        status, name, _, _ = await chat(session, router, model="m2")  # no restart, no waiting
        assert (status, name) == (200, "a")
        assert up.health_checks == checks + 1
        results = await asyncio.gather(*(chat(session, router, model=f"bogus-{i}") for i in range(50)))
        assert {r[0] for r in results} == {404}
        assert up.health_checks == checks + 1  # a flood of bogus names rediscovers nothing


async def test_per_model_strategy_override(upstreams, start_router):
    a, b = upstreams("a", models=["x", "y"]), upstreams("b", models=["x", "y"])
    router = start_router({"routing": {"strategy": "round_robin", "model_strategies": {"y*": "sticky"}},
                           "backends": [backend("a", a), backend("b", b)]})
    assert await spread(router, 10, model="x") == {"a": 5, "b": 5}
    counts = await spread(router, 10, model="y", user="same-user")
    assert len(counts) == 1 and sum(counts.values()) == 10


async def test_prometheus_metrics(upstreams, start_router):
    good, bad = upstreams("good"), upstreams("bad")
    bad.behaviour.fail_status = 503
    router = start_router({"circuit_breaker": {"failure_threshold": 100},
                           "backends": [backend("good", good), backend("bad", bad)]})
    assert await spread(router, 6) == {"good": 6}
    async with aiohttp.ClientSession() as session:
        await chat(session, router, model="nope")
        async with session.get(f"{router.url}/metrics") as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples["router_requests_total"] == 7
    assert samples['router_responses_total{code="200"}'] == 6
    assert samples['router_responses_total{code="404"}'] == 1
    # Each request that landed on "bad" first failed there and was retried on "good".
    assert samples["router_retries_total"] == len(bad.requests) > 0
    assert samples['router_backend_failures_total{backend="bad"}'] == len(bad.requests)
    assert samples['router_backend_requests_total{backend="good"}'] == 6
    assert samples['router_backend_healthy{backend="good"}'] == 1
    assert samples['router_backend_in_flight{backend="good"}'] == 0
    assert 0 < samples['router_backend_latency_ewma_seconds{backend="good"}'] < 1
