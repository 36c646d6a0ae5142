"""The dashboard at ``/ui`` in a real browser: Debian's chromium, headless, driven by
Playwright, against the router in-process on 127.0.0.1 with fake upstreams (and the cmd
engine of the dynamic tests, and the fake Hugging Face hub for downloads).

Each test saves a screenshot of the page it drives in pytest's temporary folder
(``ui-screenshots0`` under ``--basetemp``, pytest's default otherwise);
``UI_SCREENSHOTS=docs/ui`` writes them there instead (the ones the README shows). Waits are Playwright's bounded ``expect`` polls, never sleeps.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from router.testing import BackgroundLoop, FakeUpstream, RouterServer

from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright  # the test extra

pytestmark = pytest.mark.ui

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ADMIN = "admin-key-for-the-ui-tests"
ENGINE = Path(__file__).parent.parent / "dynamic" / "cmd_engine.py"
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 860}


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = os.environ.get("UI_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path_factory.mktemp("ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Module-scoped, not session-scoped: between its calls the sync API marks its own loop as
# running in this thread, which asyncio tests after this module could not run beside.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(15_000)
    expect.set_options(timeout=15_000)
    yield page
    context.close()


def ui_config(*backends: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"server": {"admin_key": ADMIN},
            "routing": {"health_check_interval_s": 0.3, "discovery_interval_s": 0.5},
            "backends": list(backends), **extra}


def remote(name: str, upstream: FakeUpstream) -> dict[str, Any]:
    return {"name": name, "provider": "openai_compatible", "base_url": upstream.url}


def sign_in(page: Page, router: RouterServer, path: str = "/ui", client_key: str = "") -> None:
    page.goto(router.url + path)
    page.get_by_label("Admin key").fill(ADMIN)
    if client_key:
        page.get_by_label("Client key").fill(client_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#app")).to_be_visible()


def post(router: RouterServer, path: str, body: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(router.url + path, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(router: RouterServer, path: str, key: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(router.url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def chat(router: RouterServer, model: str, key: str | None = None, content: str = "hi") -> tuple[int, Any]:
    return post(router, "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": content}]},
                key)


def fits_width(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_sign_in_with_the_admin_key(page: Page, start_router: Callable[..., RouterServer],
                                    upstreams: Callable[..., FakeUpstream], shots: Path) -> None:
    router = start_router(ui_config(remote("alpha", upstreams("alpha"))))
    page.goto(router.url + "/ui")
    page.screenshot(path=str(shots / "signin.png"))
    page.get_by_label("Admin key").fill("not-the-key")
    page.get_by_role("button", name="Sign in").click()
    error = page.locator("#signin-error")
    expect(error).to_contain_text("missing or wrong admin key")
    assert "{" not in error.inner_text()  # the message, not the JSON envelope
    expect(page.locator("#app")).to_be_hidden()

    page.get_by_label("Admin key").fill(ADMIN)
    page.keyboard.press("Enter")  # the form works from the keyboard
    expect(page.locator("#app")).to_be_visible()
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_focused()
    expect(page.locator('tr[data-backend="alpha"] [data-field="health"]')).to_have_text("healthy")
    # Each page is reachable by its own address, once signed in (the key is kept in the tab).
    page.goto(router.url + "/ui/keys")
    expect(page.get_by_role("heading", name="Client keys", level=1)).to_be_visible()
    expect(page.get_by_role("link", name="Keys")).to_have_attribute("aria-current", "page")
    # Every page fits a phone's width (wide tables scroll inside their own box).
    page.set_viewport_size(PHONE)
    for name in ("overview", "models", "downloads", "keys", "settings", "playground"):
        page.get_by_role("link", name=name.capitalize()).click()
        expect(page.get_by_role("link", name=name.capitalize())).to_have_attribute("aria-current", "page")
        expect(page.locator(f'section[data-view="{name}"] h1')).to_be_focused()  # focus follows the page
        assert fits_width(page), name
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin key")).to_be_focused()


def test_overview_shows_a_backend_going_unhealthy(page: Page, bg: BackgroundLoop,
                                                  start_router: Callable[..., RouterServer],
                                                  upstreams: Callable[..., FakeUpstream], shots: Path) -> None:
    alpha, beta = upstreams("alpha", models=["shared", "alpha-only"]), upstreams("beta", models=["shared"])
    router = start_router(ui_config(remote("alpha", alpha), remote("beta", beta)))
    for _ in range(20):
        assert chat(router, "shared")[0] == 200
    sign_in(page, router)
    alpha_row, beta_row = page.locator('tr[data-backend="alpha"]'), page.locator('tr[data-backend="beta"]')
    expect(alpha_row.locator('[data-field="health"]')).to_have_text("healthy")
    expect(beta_row.locator('[data-field="health"]')).to_have_text("healthy")
    # Latencies the plugin recorded, and the rates from the sampled counters.
    expect(alpha_row.locator('[data-field="p50"]')).to_contain_text("ms")
    expect(alpha_row.locator('[data-field="p95"]')).to_contain_text("ms")
    expect(alpha_row.locator('[data-field="ewma"]')).to_contain_text("ms")
    expect(page.locator("#totals")).to_contain_text("20")
    expect(page.locator("#chart")).to_have_attribute("aria-label", re.compile(r"requests/s and .* errors/s now"))
    # The chart's series: the 20 requests, spread over the sampled seconds.
    _, extra = get(router, "/ui/api/overview", ADMIN)
    series = extra["series"]
    times = [extra["series"]["t"][0] - 1.0, *series["t"]]
    counted = sum(rate * (times[i + 1] - times[i]) for i, rate in enumerate(series["requests"]))
    assert abs(counted - 20) < 0.5 and max(series["requests"]) > 0

    bg.run(alpha.kill())
    expect(alpha_row.locator('[data-field="health"]')).to_have_text("unhealthy")
    expect(beta_row.locator('[data-field="health"]')).to_have_text("healthy")
    expect(alpha_row.locator('[data-field="last_error"]')).not_to_be_empty()
    for _ in range(3):  # only alpha served it: errors now, counted in the totals
        assert chat(router, "alpha-only")[0] >= 500
    expect(page.locator("#totals dd").nth(1)).to_have_text("3")
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    page.set_viewport_size(PHONE)
    expect(alpha_row.locator('[data-field="health"]')).to_have_text("unhealthy")
    assert fits_width(page)  # the wide table scrolls inside its box, the page does not
    page.screenshot(path=str(shots / "overview-phone.png"), full_page=True)


def test_settings_registers_a_backend_with_its_discovered_models(
        page: Page, start_router: Callable[..., RouterServer], upstreams: Callable[..., FakeUpstream],
        shots: Path) -> None:
    router = start_router(ui_config(remote("alpha", upstreams("alpha"))))
    gpu = upstreams("gpu", models=["llama-70b", "qwen-32b", "embed-small"])
    sign_in(page, router, "/ui/settings")
    expect(page.get_by_role("heading", name="Settings", level=1)).to_be_visible()
    view = page.locator('section[data-view="settings"]')

    # A server that is not there: a readable message.
    page.get_by_label("Base URL").fill("http://127.0.0.1:9/v1")
    page.get_by_role("button", name="Discover models").click()
    expect(page.locator("#error")).to_contain_text("could not reach http://127.0.0.1:9/v1/models")

    page.get_by_label("Base URL").fill(gpu.url + "/v1")
    page.get_by_label("API key").fill("sk-upstream-secret")
    view.get_by_label("Name", exact=True).fill("gpu-box")
    page.get_by_role("button", name="Discover models").click()
    for model in ("llama-70b", "qwen-32b", "embed-small"):
        expect(page.get_by_label(model)).to_be_checked()
    expect(page.locator("#error")).to_be_hidden()
    page.get_by_label("embed-small").uncheck()
    page.screenshot(path=str(shots / "settings.png"), full_page=True)
    page.get_by_role("button", name="Save backend").click()

    provider = page.locator('[data-provider="gpu-box"]')
    expect(provider).to_contain_text("llama-70b")
    expect(provider).to_contain_text("healthy")
    expect(provider).not_to_contain_text("embed-small")
    status, models = get(router, "/v1/models")
    served = {m["id"]: m["backends"] for m in models["data"]}
    assert status == 200 and served["llama-70b"] == ["gpu-box"] and "embed-small" not in served
    assert chat(router, "qwen-32b")[0] == 200
    assert gpu.headers_seen[-1].get("Authorization") == "Bearer sk-upstream-secret"  # the key was saved

    # A name in use: the API's 409, as a sentence.
    page.get_by_label("Base URL").fill(gpu.url)
    view.get_by_label("Name", exact=True).fill("gpu-box")
    page.get_by_role("button", name="Discover models").click()
    expect(page.get_by_label("qwen-32b")).to_be_checked()
    page.get_by_role("button", name="Save backend").click()
    expect(page.locator("#error")).to_have_text("a backend named 'gpu-box' exists already")

    # Routing settings through the live settings API.
    strategy = page.get_by_label("Strategy")
    expect(strategy).to_have_value("round_robin")
    strategy.select_option("least_latency")
    page.get_by_label("Retries on another backend").fill("4")
    page.get_by_role("button", name="Save routing settings").click()
    expect(page.locator("#notice")).to_contain_text("routing.strategy = least_latency")
    _, status_body = get(router, "/status", ADMIN)
    assert status_body["strategy"] == "least_latency"
    _, settings = get(router, "/admin/settings", ADMIN)
    assert settings["settings"]["routing.retries"]["value"] == 4

    page.get_by_role("button", name="Remove backend gpu-box").click()
    expect(provider).to_have_count(0)
    assert "gpu-box" not in {b["name"] for b in get(router, "/status", ADMIN)[1]["backends"]}


def dynamic_backend(tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "models"
    root.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (root / name).write_bytes(b"GGUF" + b"\0" * 64)
    record = tmp_path / "starts.jsonl"
    engine = {"cmd": f"{sys.executable} {ENGINE} --port {{port}} --name {{name}} --record {record}",
              "match": ["*.gguf"], "stop_timeout_s": 5}
    return {"name": "dyn", "provider": "dynamic", "models_dir": str(root), "default_ttl_s": 600,
            "max_wait_s": 20, "engines": {"fake": engine}}


def test_models_shows_loaded_models_and_unloads_one(page: Page, tmp_path: Path,
                                                    start_router: Callable[..., RouterServer],
                                                    upstreams: Callable[..., FakeUpstream], shots: Path) -> None:
    router = start_router(ui_config(remote("alpha", upstreams("alpha", models=["remote-1"])), dynamic_backend(tmp_path),
                                    aliases={"fast": "remote-1"}))
    assert chat(router, "a.gguf")[0] == 200  # loads a.gguf
    sign_in(page, router, "/ui/models")
    a_row, b_row = page.locator('tr[data-model="a.gguf"]'), page.locator('tr[data-model="b.gguf"]')
    expect(a_row.locator('[data-field="loaded"]')).to_have_text("ready")
    expect(a_row.locator('[data-field="ttl"]')).to_contain_text("min")  # 600 s TTL, counting down
    expect(b_row.locator('[data-field="loaded"]')).to_have_text("not loaded")
    remote_row = page.locator('tr[data-model="remote-1"]')
    expect(remote_row).to_contain_text("alpha")
    expect(remote_row).to_contain_text("fast")  # its alias
    page.screenshot(path=str(shots / "models.png"), full_page=True)

    a_row.get_by_role("button", name="Unload a.gguf").click()
    expect(a_row.locator('[data-field="loaded"]')).to_have_text("not loaded")
    assert get(router, "/v1/models/loaded")[1]["total_count"] == 0

    b_row.get_by_role("button", name="Load b.gguf").click()
    expect(b_row.locator('[data-field="loaded"]')).to_have_text("ready")
    assert [m["model"] for m in get(router, "/v1/models/loaded")[1]["loaded_models"]] == ["b.gguf"]


def test_models_loads_and_unloads_a_local_gguf_worker(page: Page, tmp_path: Path,
                                                      start_router: Callable[..., RouterServer]) -> None:
    from plugins.gguf.demo import write_demo_model

    model = write_demo_model(tmp_path / "tiny.gguf")
    local = {"name": "local", "provider": "gguf", "n_threads": 1, "models": [{"name": "tiny", "path": str(model)}]}
    router = start_router(ui_config(local))
    sign_in(page, router, "/ui/models")
    row = page.locator('tr[data-model="tiny"]')
    expect(row.locator('[data-field="loaded"]')).to_have_text("not loaded")
    row.get_by_role("button", name="Load tiny").click()
    expect(row.locator('[data-field="loaded"]')).to_have_text("loaded", timeout=30_000)
    status = get(router, "/status", ADMIN)[1]
    assert status["backends"][0]["provider_status"]["models"]["tiny"]["state"] == "ready"
    row.get_by_role("button", name="Unload tiny").click()
    expect(row.locator('[data-field="loaded"]')).to_have_text("not loaded")
    status = get(router, "/status", ADMIN)[1]
    assert status["backends"][0]["provider_status"]["models"]["tiny"]["state"] == "stopped"


def test_downloads_start_show_progress_and_cancel(page: Page, tmp_path: Path, bg: BackgroundLoop,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  start_router: Callable[..., RouterServer], shots: Path) -> None:
    from huggingface_hub import constants

    from tests.fakehub import FakeHub

    hub: FakeHub = bg.run(FakeHub().start())
    try:
        hub.add_repo("org/tiny-GGUF", {"tiny-Q4_K_M.gguf": b"GGUF" + os.urandom(8 << 20),
                                       "tiny-Q8_0.gguf": b"GGUF" + b"\0" * 1024, "README.md": b"# tiny"})
        hub.add_repo("org/small-GGUF", {"small-Q4_K_M.gguf": b"GGUF" + b"\1" * 4096})
        hub.throttle_bps = 1 << 20  # 8 MiB at 1 MiB/s: the first job is still running when cancelled
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        router = start_router(ui_config(dynamic_backend(tmp_path)))
        sign_in(page, router, "/ui/downloads")
        expect(page.get_by_label("Into the models folder of")).to_have_value("dyn")

        page.get_by_label("Repository").fill("org/no-such-repo")
        page.get_by_role("button", name="Start download").click()
        expect(page.locator("#error")).to_contain_text("org/no-such-repo")
        assert "{" not in page.locator("#error").inner_text()

        page.get_by_label("Repository").fill("org/tiny-GGUF")
        page.get_by_label("Quantization").fill("Q4_K_M")
        page.get_by_role("button", name="Start download").click()
        job = page.locator("li.job").first
        expect(job.locator('[data-field="status"]')).to_have_text("downloading")
        expect(job.locator("progress")).not_to_have_attribute("value", "0")  # bytes arrived
        page.screenshot(path=str(shots / "downloads.png"), full_page=True)
        job.get_by_role("button", name="Cancel download of org/tiny-GGUF").click()
        expect(job.locator('[data-field="status"]')).to_have_text("cancelled")
        expect(job.get_by_role("button")).to_have_count(0)
        assert not (tmp_path / "models" / "tiny-GGUF").exists()

        hub.throttle_bps = None
        page.get_by_label("Repository").fill("org/small-GGUF")
        page.get_by_label("Quantization").fill("")
        page.get_by_role("button", name="Start download").click()
        done = page.locator('li.job[data-status="completed"]')
        expect(done).to_contain_text("org/small-GGUF")
        expect(done.locator("progress")).to_have_attribute("value", "100")
    finally:
        bg.run(hub.stop())


def test_keys_create_shown_once_and_revoke(page: Page, start_router: Callable[..., RouterServer],
                                           upstreams: Callable[..., FakeUpstream], shots: Path) -> None:
    router = start_router(ui_config(remote("alpha", upstreams("alpha")), auth={"keys": []}))
    assert chat(router, "test-model")[0] == 401  # client keys are on
    sign_in(page, router, "/ui/keys")
    view = page.locator('section[data-view="keys"]')
    view.get_by_label("Name").fill("ci")
    view.get_by_label("Models").fill("test-*")
    page.get_by_label("Requests per minute").fill("30")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-value")
    expect(secret).to_contain_text("sk-prx-")
    key = secret.inner_text()
    row = page.locator('tr[data-key="ci"]')
    expect(row).to_contain_text(key[:11])
    expect(row).not_to_contain_text(key)  # the list never shows the key itself
    expect(row).to_contain_text("30")
    page.screenshot(path=str(shots / "keys.png"), full_page=True)
    assert chat(router, "test-model", key)[0] == 200

    # A bad field: the API's message, not its JSON.
    view.get_by_label("Name").fill("ci")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#error")).to_have_text("a key named 'ci' exists already")

    page.reload()  # shown once: gone from the page after a reload
    expect(row).to_be_visible()
    expect(page.locator("#new-key")).to_be_hidden()
    row.get_by_role("button", name="Revoke key ci").click()
    expect(row).to_have_count(0)
    assert chat(router, "test-model", key)[0] == 401


def test_playground_streams_reasoning_apart_from_the_answer(
        page: Page, start_router: Callable[..., RouterServer], upstreams: Callable[..., FakeUpstream],
        shots: Path) -> None:
    thinker = upstreams("thinker", models=["think-1"])
    thinker.behaviour.deltas = [{"role": "assistant", "reasoning_content": "The user greets me. "},
                                {"reasoning_content": "I greet back."},
                                {"content": "Hello"}, {"content": ", there!"}]
    thinker.behaviour.chunk_delay_s = 0.05
    plain = upstreams("plain", models=["plain-1"])
    plain.behaviour.fail_status = 400
    router = start_router(ui_config(remote("thinker", thinker), remote("plain", plain)))
    sign_in(page, router, "/ui/playground")
    expect(page.get_by_label("Model", exact=True)).to_contain_text("think-1")
    page.get_by_label("Model", exact=True).select_option("think-1")
    page.get_by_label("Message", exact=True).fill("Hi!")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#pg-answer")).to_have_text("Hello, there!")
    expect(page.locator("#pg-reasoning")).to_have_text("The user greets me. I greet back.")
    expect(page.locator("#pg-status")).to_have_text("done (stop)")
    expect(page.locator("#pg-backend")).to_have_text("thinker")
    expect(page.locator("#pg-latency")).to_contain_text("ms")
    expect(page.locator("#pg-ttft")).to_contain_text("ms")
    assert thinker.requests[-1]["stream"] is True and thinker.requests[-1]["messages"][-1]["content"] == "Hi!"
    page.screenshot(path=str(shots / "playground.png"), full_page=True)

    page.get_by_label("Model", exact=True).select_option("plain-1")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#pg-status")).to_have_text("failed")
    expect(page.locator("#error")).to_be_visible()
    assert "{" not in page.locator("#error").inner_text()
    expect(page.locator("#pg-backend")).to_have_text("plain")

    page.set_viewport_size(PHONE)
    assert fits_width(page)
    page.screenshot(path=str(shots / "playground-phone.png"), full_page=True)
