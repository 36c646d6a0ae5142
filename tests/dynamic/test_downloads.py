"""The dynamic provider's downloads against a fake Hugging Face Hub on 127.0.0.1
(tests/fakehub.py), checked first with huggingface_hub itself: jobs, progress, staging,
cancel, resume after a shutdown and after a kill, persistence, wrong repos, escaping
destinations, verify, and the ``pull`` command as a subprocess."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from plugins.dynamic.downloads import STAGING, Downloads
from plugins.dynamic.hub import HubRef, has_quantization, parse_url
from router import InvalidRequest, NotFound, UpstreamUnreachable
from router.testing import free_port
from tests.fakehub import FakeHub

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
REPO = "org/Tiny-GGUF"


def blob(size: int, seed: str) -> bytes:
    """Deterministic, incompressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    fake = await FakeHub().start()
    yield fake
    await fake.stop()


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
async def open_downloads(models: Path, hub: FakeHub) -> AsyncIterator[Callable[..., Any]]:
    """Start Downloads on the test's models folder and store (several, one after another,
    is a restart); each is closed after the test."""
    opened: list[Downloads] = []

    async def start(**kwargs: Any) -> Downloads:
        kwargs.setdefault("endpoint", hub.url)
        downloads = Downloads(models, models / STAGING / "jobs.db", **kwargs)
        await downloads.start()
        opened.append(downloads)
        return downloads

    yield start
    for downloads in opened:
        await downloads.aclose()


async def wait_job(downloads: Downloads, job_id: str, until: Callable[[dict[str, Any]], bool],
                   timeout: float = 60.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            job = downloads.get(job_id)
            assert job is not None
            if until(job):
                return job
            await asyncio.sleep(0.05)


def finished(job: dict[str, Any]) -> bool:
    return job["status"] not in ("pending", "downloading")


def visible_files(models: Path) -> list[str]:
    """What the inventory could see: files outside dot-folders."""
    return sorted(str(p.relative_to(models)) for p in models.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(models).parts))


def gguf_repo(hub: FakeHub, big: int = 64 * 1024) -> dict[str, bytes]:
    files = {
        "tiny-Q4_K_M.gguf": blob(big, "q4"),
        "tiny-Q8_0.gguf": blob(32 * 1024, "q8"),
        "tiny-IQ4_XS.gguf": blob(1024, "iq4"),
        "README.md": b"# tiny\n",
        "config.json": b"{}",
    }
    hub.add_repo(REPO, files)
    return files


# --- the fake hub, checked with huggingface_hub itself ---------------------------------------


async def test_fake_hub_serves_what_huggingface_hub_reads(hub: FakeHub, tmp_path: Path) -> None:
    import huggingface_hub as hh
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    files = gguf_repo(hub)
    files["sub/extra.json"] = b'{"a": 1}'
    commit = hub.add_repo(REPO, files)
    hub.add_repo("org/private", {"x.gguf": b"secret"}, token="hf_test_token")
    api = hh.HfApi(endpoint=hub.url)

    info = await asyncio.to_thread(api.model_info, REPO, files_metadata=True)
    assert info.sha == commit
    assert {s.rfilename: s.size for s in info.siblings or []} == {k: len(v) for k, v in files.items()}
    tree = await asyncio.to_thread(lambda: list(api.list_repo_tree(REPO, recursive=True)))
    assert {t.path for t in tree if isinstance(t, hh.hf_api.RepoFile)} == set(files)

    meta = await asyncio.to_thread(hh.get_hf_file_metadata, hh.hf_hub_url(REPO, "tiny-Q4_K_M.gguf", endpoint=hub.url))
    assert meta.commit_hash == commit and meta.size == len(files["tiny-Q4_K_M.gguf"])
    assert meta.etag == hashlib.sha256(files["tiny-Q4_K_M.gguf"]).hexdigest()

    path = await asyncio.to_thread(hh.hf_hub_download, REPO, "sub/extra.json", endpoint=hub.url,
                                   local_dir=tmp_path / "one")
    assert Path(path).read_bytes() == files["sub/extra.json"]
    snap = await asyncio.to_thread(hh.snapshot_download, REPO, endpoint=hub.url, local_dir=tmp_path / "snap",
                                   allow_patterns=["*.gguf"])
    assert sorted(p.name for p in Path(snap).glob("*.gguf")) == sorted(k for k in files if k.endswith(".gguf"))
    for name in (k for k in files if k.endswith(".gguf")):
        assert (Path(snap) / name).read_bytes() == files[name]

    with pytest.raises(RepositoryNotFoundError):
        await asyncio.to_thread(api.model_info, "org/missing")
    with pytest.raises(RevisionNotFoundError):
        await asyncio.to_thread(api.model_info, REPO, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        await asyncio.to_thread(hh.hf_hub_download, REPO, "missing.gguf", endpoint=hub.url, local_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        await asyncio.to_thread(api.model_info, "org/private")
    private = await asyncio.to_thread(hh.HfApi(endpoint=hub.url, token="hf_test_token").model_info, "org/private")
    assert private.id == "org/private"


# --- hub.py: what a url names, what a quantization takes ------------------------------------


@pytest.mark.parametrize(("url", "ref"), [
    ("org/repo", HubRef("org/repo")),
    ("org/repo:model-Q4_K_M.gguf", HubRef("org/repo", None, "model-Q4_K_M.gguf")),
    ("org/repo@v1:dir/model.gguf", HubRef("org/repo", "v1", "dir/model.gguf")),
    ("https://huggingface.co/org/repo", HubRef("org/repo")),
    ("https://huggingface.co/org/repo/", HubRef("org/repo")),
    ("https://huggingface.co/org/repo/tree/main", HubRef("org/repo", "main")),
    ("https://huggingface.co/org/repo/blob/main/model-Q8_0.gguf", HubRef("org/repo", "main", "model-Q8_0.gguf")),
    ("https://huggingface.co/org/repo/resolve/dev/sub/a.gguf?download=true", HubRef("org/repo", "dev", "sub/a.gguf")),
    ("https://hf.co/gpt2", HubRef("gpt2")),
])
def test_parse_url_reads_the_forms_clients_send(url: str, ref: HubRef) -> None:
    assert parse_url(url) == ref


@pytest.mark.parametrize("url", [
    "", "   ", "https://example.com/org/repo", "ftp://huggingface.co/org/repo", "https://huggingface.co/",
    "https://huggingface.co/datasets/org/data", "org/repo/extra", "../etc/passwd", "org/..",
    "org/repo:../../x", "org/repo:", "https://huggingface.co/org/repo/blob/main", "org/repo@:x.gguf",
])
def test_parse_url_rejects_what_names_no_model_repo(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_url(url)
    assert caught.value.param == "url"
    assert caught.value.status == 400


def test_parse_url_accepts_the_configured_mirror() -> None:
    assert parse_url("http://mirror.local:8080/org/repo", endpoint="http://mirror.local:8080") == HubRef("org/repo")
    with pytest.raises(InvalidRequest):
        parse_url("http://mirror.local:8080/org/repo")


@pytest.mark.parametrize(("path", "tag", "taken"), [
    ("model-Q4_K_M.gguf", "Q4_K_M", True),
    ("model.q4_k_m.gguf", "Q4_K_M", True),
    ("model-Q4_K_M.gguf", "q4_k_m", True),
    ("Q4_K_M/model-Q4_K_M-00001-of-00002.gguf", "Q4_K_M", True),
    ("model-Q4_K_M.gguf", "Q4_K", False),
    ("model-IQ4_XS.gguf", "Q4_XS", False),
    ("model-Q8_0.gguf", "Q4_K_M", False),
    ("model-Q4_K_M.bin", "Q4_K_M", False),
])
def test_quantization_tag_is_a_whole_tag_on_gguf_files(path: str, tag: str, taken: bool) -> None:
    assert has_quantization(path, tag) is taken


# --- jobs ------------------------------------------------------------------------------------


async def test_submit_downloads_the_quantization_into_place(hub: FakeHub, models: Path,
                                                            open_downloads: Callable[..., Any]) -> None:
    files = gguf_repo(hub)
    downloads = await open_downloads(path_prefix="/models")
    job = await downloads.submit(REPO, quantization="q4_k_m")
    assert job["status"] in ("pending", "downloading")
    assert job["files"] == ["tiny-Q4_K_M.gguf"]
    assert job["bytes_total"] == len(files["tiny-Q4_K_M.gguf"]) and job["files_total"] == 1
    assert job["destination"] == "tiny-gguf" and job["model_path"] == "/models/tiny-gguf"
    assert job["repo_id"] == REPO and job["error"] is None and job["finished_at"] is None
    done = await wait_job(downloads, job["job_id"], finished)
    assert done["status"] == "completed", done
    assert done["bytes_done"] == done["bytes_total"] and done["progress"] == 1.0
    assert done["files_done"] == 1 and done["files_downloaded"] == 1
    assert done["started_at"] is not None and done["finished_at"] == done["completed_at"] is not None
    assert done["duration_seconds"] is not None and done["duration_seconds"] >= 0
    assert (models / "tiny-gguf" / "tiny-Q4_K_M.gguf").read_bytes() == files["tiny-Q4_K_M.gguf"]
    assert visible_files(models) == ["tiny-gguf/tiny-Q4_K_M.gguf"]
    assert not (models / STAGING / job["job_id"]).exists()

    # a second file into the same (existing) folder, by name, with the XandRouting destination form
    second = await downloads.submit(f"{REPO}:tiny-Q8_0.gguf", destination="/models/tiny-gguf")
    assert (await wait_job(downloads, second["job_id"], finished))["status"] == "completed"
    assert visible_files(models) == ["tiny-gguf/tiny-Q4_K_M.gguf", "tiny-gguf/tiny-Q8_0.gguf"]
    assert [j["job_id"] for j in downloads.list()] == [second["job_id"], job["job_id"]]


async def test_whole_repo_with_include_and_exclude(hub: FakeHub, models: Path,
                                                   open_downloads: Callable[..., Any]) -> None:
    files = gguf_repo(hub)
    downloads = await open_downloads()
    job = await downloads.submit(f"https://huggingface.co/{REPO}", destination="nested/here",
                                 include=["*.gguf", "*.json"], exclude=["*Q8_0*"])
    assert sorted(job["files"]) == ["config.json", "tiny-IQ4_XS.gguf", "tiny-Q4_K_M.gguf"]
    assert (await wait_job(downloads, job["job_id"], finished))["status"] == "completed"
    for name in job["files"]:
        assert (models / "nested" / "here" / name).read_bytes() == files[name]
    assert len(visible_files(models)) == 3


async def test_progress_shows_while_no_file_stands_under_its_final_name(
        hub: FakeHub, models: Path, open_downloads: Callable[..., Any]) -> None:
    files = gguf_repo(hub, big=4 * MiB)
    hub.throttle_bps = 2 * MiB
    downloads = await open_downloads()
    job = await downloads.submit(REPO, quantization="Q4_K_M")
    midway = await wait_job(downloads, job["job_id"], lambda j: j["bytes_done"] >= MiB or finished(j))
    assert midway["status"] == "downloading"
    assert 0 < midway["bytes_done"] < midway["bytes_total"]
    assert 0 < midway["progress"] < 1
    assert visible_files(models) == []  # the partial file is only in the hidden staging folder
    assert not (models / "tiny-gguf").exists()
    hub.throttle_bps = None
    done = await wait_job(downloads, job["job_id"], finished)
    assert done["status"] == "completed"
    assert (models / "tiny-gguf" / "tiny-Q4_K_M.gguf").read_bytes() == files["tiny-Q4_K_M.gguf"]


async def test_cancel_stops_the_transfer_and_removes_the_partial_file(
        hub: FakeHub, models: Path, open_downloads: Callable[..., Any]) -> None:
    gguf_repo(hub, big=8 * MiB)
    hub.throttle_bps = MiB
    downloads = await open_downloads()
    job = await downloads.submit(REPO, quantization="Q4_K_M")
    await wait_job(downloads, job["job_id"], lambda j: j["bytes_done"] > 0 or finished(j))
    cancelled = await downloads.cancel(job["job_id"])
    assert cancelled is not None and cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] is not None and cancelled["message"] == "Download job cancelled"
    await hub.wait_for(lambda: hub.transfers_open == 0)
    assert hub.transfers_cut == 1
    assert hub.bytes_served < 8 * MiB  # stopped mid-file, not at its end
    assert not (models / STAGING / job["job_id"]).exists()
    assert visible_files(models) == []
    assert downloads.get(job["job_id"])["status"] == "cancelled"  # type: ignore[index]
    with pytest.raises(InvalidRequest) as again:
        await downloads.cancel(job["job_id"])
    assert again.value.code == "job_not_cancellable" and "cancelled" in again.value.message
    assert await downloads.cancel("download_unknown") is None


async def test_a_shutdown_mid_file_resumes_with_a_range_request(
        hub: FakeHub, models: Path, open_downloads: Callable[..., Any]) -> None:
    size = 8 * MiB
    files = gguf_repo(hub, big=size)
    hub.throttle_bps = 2 * MiB
    first = await open_downloads()
    job = await first.submit(REPO, quantization="Q4_K_M")
    await wait_job(first, job["job_id"], lambda j: j["bytes_done"] >= MiB or finished(j))
    await first.aclose()
    await hub.wait_for(lambda: hub.transfers_open == 0)
    part = models / STAGING / job["job_id"] / "tiny-Q4_K_M.gguf.part"
    kept = part.stat().st_size
    assert 0 < kept < size
    served_before = hub.bytes_served

    hub.throttle_bps = None
    second = await open_downloads()  # the same store: the job is there, still unfinished, and resumes
    done = await wait_job(second, job["job_id"], finished)
    assert done["status"] == "completed", done
    assert hub.range_requests == [("tiny-Q4_K_M.gguf", kept)]
    assert hub.bytes_served - served_before == size - kept
    assert hub.bytes_served < 1.5 * size
    assert (models / "tiny-gguf" / "tiny-Q4_K_M.gguf").read_bytes() == files["tiny-Q4_K_M.gguf"]


async def test_a_connection_cut_mid_file_is_resumed_by_huggingface_hub(
        hub: FakeHub, models: Path, open_downloads: Callable[..., Any]) -> None:
    size = 4 * MiB
    files = gguf_repo(hub, big=size)
    hub.kill_after_bytes = 2 * MiB + 12345
    downloads = await open_downloads()
    job = await downloads.submit(REPO, quantization="Q4_K_M")
    done = await wait_job(downloads, job["job_id"], finished)
    assert done["status"] == "completed", done
    assert hub.transfers_cut == 1 and len(hub.range_requests) == 1
    name, start = hub.range_requests[0]
    assert name == "tiny-Q4_K_M.gguf" and MiB <= start <= 2 * MiB + 12345
    assert hub.bytes_served < 1.5 * size
    assert (models / "tiny-gguf" / "tiny-Q4_K_M.gguf").read_bytes() == files["tiny-Q4_K_M.gguf"]


KILLED_ROUTER = """
import asyncio, sys
from pathlib import Path
from plugins.dynamic.downloads import Downloads
async def main():
    models = Path(sys.argv[1])
    downloads = Downloads(models, models / ".downloads" / "jobs.db", endpoint=sys.argv[2])
    await downloads.start()
    job = await downloads.submit(sys.argv[3], quantization="Q4_K_M")
    print(job["job_id"], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def test_a_killed_process_leaves_no_orphan_and_the_next_start_resumes(
        hub: FakeHub, models: Path, open_downloads: Callable[..., Any]) -> None:
    size = 8 * MiB
    files = gguf_repo(hub, big=size)
    hub.throttle_bps = 2 * MiB
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_ROUTER, str(models), hub.url, REPO, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    job_id = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
    part = models / STAGING / job_id / "tiny-Q4_K_M.gguf.part"
    await hub.wait_for(lambda: part.exists() and part.stat().st_size >= MiB)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    await hub.wait_for(lambda: hub.transfers_open == 0)  # its download process died with it
    kept = part.stat().st_size
    assert 0 < kept < size

    hub.throttle_bps = None
    downloads = await open_downloads()
    assert downloads.get(job_id) is not None
    done = await wait_job(downloads, job_id, finished)
    assert done["status"] == "completed", done
    assert hub.range_requests == [("tiny-Q4_K_M.gguf", kept)]
    assert hub.bytes_served < 1.5 * size
    assert (models / "tiny-gguf" / "tiny-Q4_K_M.gguf").read_bytes() == files["tiny-Q4_K_M.gguf"]


async def test_jobs_survive_a_restart_with_their_final_states(
        hub: FakeHub, models: Path, open_downloads: Callable[..., Any]) -> None:
    gguf_repo(hub, big=4 * MiB)
    first = await open_downloads()
    ok = await first.submit(REPO, quantization="Q8_0")
    await wait_job(first, ok["job_id"], finished)

    hub.throttle_bps = MiB
    stopped = await first.submit(REPO, quantization="Q4_K_M", destination="cancelled-one")
    await first.cancel(stopped["job_id"])
    hub.throttle_bps = None

    failing = await first.submit(REPO, quantization="IQ4_XS", destination="failed-one")
    hub.fail_status = 500  # listed fine; the file itself then answers 500
    failed = await wait_job(first, failing["job_id"], finished)
    hub.fail_status = None
    assert failed["status"] == "failed"
    assert "HTTP 500" in failed["error"] and failed["message"].startswith("Download failed: ")
    assert not (models / "failed-one").exists() and not (models / STAGING / failing["job_id"]).exists()
    before = first.list()
    await first.aclose()

    again = await open_downloads()
    after = again.list()
    assert [j["job_id"] for j in after] == [failing["job_id"], stopped["job_id"], ok["job_id"]]
    assert [j["status"] for j in after] == ["failed", "cancelled", "completed"]
    assert after == before
    assert visible_files(models) == ["tiny-gguf/tiny-Q8_0.gguf"]


async def test_a_wrong_repo_or_file_is_a_404_at_submit(hub: FakeHub, models: Path,
                                                       open_downloads: Callable[..., Any]) -> None:
    gguf_repo(hub)
    downloads = await open_downloads()
    with pytest.raises(NotFound) as caught:
        await downloads.submit("org/no-such-repo")
    assert caught.value.code == "repo_not_found" and caught.value.param == "url"
    assert "'org/no-such-repo'" in caught.value.message and hub.url in caught.value.message
    with pytest.raises(NotFound) as caught:
        await downloads.submit(f"https://huggingface.co/{REPO}/blob/main/missing.gguf")
    assert caught.value.code == "file_not_found" and "'missing.gguf'" in caught.value.message
    with pytest.raises(NotFound) as caught:
        await downloads.submit(f"{REPO}@no-branch")
    assert caught.value.code == "revision_not_found"
    assert downloads.list() == [] and visible_files(models) == []


async def test_filters_that_keep_nothing_are_a_400_naming_them(hub: FakeHub,
                                                               open_downloads: Callable[..., Any]) -> None:
    gguf_repo(hub)
    downloads = await open_downloads()
    with pytest.raises(InvalidRequest) as caught:
        await downloads.submit(REPO, quantization="Q2_K")
    assert caught.value.param == "quantization" and caught.value.code == "no_matching_files"
    assert "'Q2_K'" in caught.value.message and "tiny-Q4_K_M.gguf" in caught.value.message
    with pytest.raises(InvalidRequest) as caught:
        await downloads.submit(REPO, include=["*.safetensors"])
    assert caught.value.param == "include" and "*.safetensors" in caught.value.message
    with pytest.raises(InvalidRequest) as caught:
        await downloads.submit(REPO, include=[""])
    assert caught.value.param == "include"
    with pytest.raises(InvalidRequest) as caught:
        await downloads.submit(REPO, quantization="Q4 K M")
    assert caught.value.param == "quantization"
    assert downloads.list() == []


async def test_private_repo_needs_the_token(hub: FakeHub, models: Path,
                                            open_downloads: Callable[..., Any]) -> None:
    hub.add_repo("org/private", {"p-Q4_K_M.gguf": blob(2048, "p")}, token="hf_secret")
    anonymous = await open_downloads()
    with pytest.raises(NotFound):
        await anonymous.submit("org/private")
    trusted = await open_downloads(token="hf_secret")
    job = await trusted.submit("org/private")
    assert (await wait_job(trusted, job["job_id"], finished))["status"] == "completed"
    assert (models / "private" / "p-Q4_K_M.gguf").read_bytes() == blob(2048, "p")


@pytest.mark.parametrize("destination", ["../outside", "a/../../outside", "/tmp/elsewhere", "link-out/x",
                                         ".hidden", "sub/.git", "/models/../../outside", "a-file"])
async def test_a_destination_cannot_leave_the_models_folder(
        destination: str, hub: FakeHub, models: Path, tmp_path: Path,
        open_downloads: Callable[..., Any]) -> None:
    gguf_repo(hub)
    outside = tmp_path / "outside"
    outside.mkdir()
    (models / "link-out").symlink_to(outside, target_is_directory=True)
    (models / "a-file").write_text("not a folder")
    downloads = await open_downloads(path_prefix="/models")
    for call in (downloads.submit, downloads.verify):
        with pytest.raises(InvalidRequest) as caught:
            await call(REPO, destination=destination)
        assert caught.value.param == "destination" and caught.value.status == 400
        assert repr(destination) in caught.value.message
    assert hub.requests == []  # refused before asking the Hub anything
    assert list(outside.iterdir()) == [] and downloads.list() == []
    assert not (tmp_path / "elsewhere").exists()


async def test_a_destination_given_as_an_absolute_path_inside_is_taken(
        hub: FakeHub, models: Path, open_downloads: Callable[..., Any]) -> None:
    gguf_repo(hub)
    downloads = await open_downloads()
    job = await downloads.submit(f"{REPO}:tiny-IQ4_XS.gguf", destination=str(models / "abs"))
    assert job["destination"] == "abs"
    await wait_job(downloads, job["job_id"], finished)
    assert visible_files(models) == ["abs/tiny-IQ4_XS.gguf"]


async def test_verify_lists_what_a_download_would_fetch(hub: FakeHub, models: Path,
                                                        open_downloads: Callable[..., Any]) -> None:
    files = gguf_repo(hub)
    commit = hub.add_repo(REPO, files)
    downloads = await open_downloads()
    seen = await downloads.verify(f"https://huggingface.co/{REPO}", quantization="Q4_K_M")
    assert seen["status"] == "accessible" and seen["repo_id"] == REPO and seen["repo_type"] == "model"
    assert seen["revision"] == "main" and seen["commit"] == commit
    assert seen["files"] == [{"path": "tiny-Q4_K_M.gguf", "size_bytes": len(files["tiny-Q4_K_M.gguf"])}]
    assert seen["total_size_bytes"] == len(files["tiny-Q4_K_M.gguf"])
    assert seen["destination"] == "tiny-gguf"
    assert seen["total_files"] == len(files) and seen["matched_files"] == 1
    assert seen["sample_files"] == ["tiny-Q4_K_M.gguf"]
    assert "1 matching files" in seen["message"]
    everything = await downloads.verify(REPO, exclude=["*.md"])
    assert everything["matched_files"] == len(files) - 1
    assert everything["total_size_bytes"] == sum(len(v) for k, v in files.items() if not k.endswith(".md"))
    with pytest.raises(NotFound):
        await downloads.verify("org/missing")
    assert list(models.iterdir()) == [models / STAGING]  # the store only: nothing downloaded
    assert [m for m, _ in hub.requests if m != "GET"] == [] and not hub.file_gets


async def test_hf_endpoint_is_read_when_downloads_start(hub: FakeHub, models: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    files = gguf_repo(hub)
    monkeypatch.setenv("HF_ENDPOINT", hub.url + "/")
    downloads = Downloads(models, models / STAGING / "jobs.db")
    await downloads.start()
    try:
        job = await downloads.submit(f"{hub.url}/{REPO}/resolve/main/tiny-Q8_0.gguf")  # a mirror URL too
        assert (await wait_job(downloads, job["job_id"], finished))["status"] == "completed"
    finally:
        await downloads.aclose()
    assert (models / "tiny-gguf" / "tiny-Q8_0.gguf").read_bytes() == files["tiny-Q8_0.gguf"]


async def test_an_unreachable_hub_is_a_502_saying_where(models: Path) -> None:
    downloads = Downloads(models, models / STAGING / "jobs.db", endpoint=f"http://127.0.0.1:{free_port()}")
    await downloads.start()
    try:
        with pytest.raises(UpstreamUnreachable) as caught:
            await downloads.submit(REPO)
        assert "cannot reach the Hugging Face Hub" in caught.value.message
    finally:
        await downloads.aclose()


# --- python -m router pull -------------------------------------------------------------------


def pull_argv() -> list[str]:
    """``router pull`` once plugins.dynamic registers it, else the module itself."""
    registered = (ROOT / "plugins" / "dynamic" / "__init__.py")
    if registered.exists() and "pull" in registered.read_text():
        return [sys.executable, "-m", "router", "pull"]
    return [sys.executable, "-m", "plugins.dynamic.pull"]


async def run_pull(hub_url: str, *args: str, env: dict[str, str] | None = None,
                   base: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *pull_argv(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**(os.environ if base is None else base), "HF_ENDPOINT": hub_url, "PYTHONPATH": str(ROOT),
             **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_pull_downloads_with_progress_and_exit_0(hub: FakeHub, models: Path) -> None:
    files = gguf_repo(hub, big=3 * MiB)
    hub.throttle_bps = 2 * MiB
    rc, out, err = await run_pull(hub.url, REPO, "--quantization", "Q4_K_M", "--models-dir", str(models))
    assert rc == 0, err
    assert (models / "tiny-gguf" / "tiny-Q4_K_M.gguf").read_bytes() == files["tiny-Q4_K_M.gguf"]
    assert out.strip() == str(models / "tiny-gguf" / "tiny-Q4_K_M.gguf")
    lines = [line for line in err.splitlines() if "%" in line]
    assert len(lines) >= 2 and "100.0%" in lines[-1] and "1/1 files" in lines[-1]
    assert f"pulling {REPO} (1 files" in err


@pytest.mark.parametrize("where", ["HF_TOKEN", "HF_HOME"])
async def test_pull_honours_hf_token_and_hf_home(where: str, hub: FakeHub, models: Path, tmp_path: Path) -> None:
    hub.add_repo("org/private", {"p-Q4_K_M.gguf": blob(4096, "p")}, token="hf_secret")
    if where == "HF_TOKEN":
        env = {"HF_TOKEN": "hf_secret"}
    else:  # the token `hf auth login` saves, under HF_HOME
        (tmp_path / "hf-home").mkdir()
        (tmp_path / "hf-home" / "token").write_text("hf_secret")
        env = {"HF_HOME": str(tmp_path / "hf-home")}
    environ = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HOME")}
    rc, _, err = await run_pull(hub.url, "org/private:p-Q4_K_M.gguf", "--models-dir", str(models),
                                "--destination", ".", env=env, base=environ)
    assert rc == 0, err
    assert (models / "p-Q4_K_M.gguf").read_bytes() == blob(4096, "p")
    assert "Bearer hf_secret" in hub.authorizations


@pytest.mark.parametrize(("args", "says"), [
    (["org/no-such-repo"], "not found"),
    ([REPO, "--quantization", "Q2_K"], "no file of repo"),
    (["https://example.com/x/y"], "is not on the Hugging Face Hub"),
    ([REPO, "--destination", "../out"], "outside the models folder"),
])
async def test_pull_fails_with_one_clear_line(args: list[str], says: str, hub: FakeHub, models: Path) -> None:
    gguf_repo(hub)
    rc, out, err = await run_pull(hub.url, *args, "--models-dir", str(models))
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err
    assert visible_files(models) == []


async def test_pull_against_an_unreachable_hub_fails_clearly(models: Path) -> None:
    rc, _, err = await run_pull(f"http://127.0.0.1:{free_port()}", REPO, "--models-dir", str(models))
    assert rc == 1
    assert err.startswith("error: cannot reach the Hugging Face Hub at http://127.0.0.1:") and err.count("\n") == 1


async def test_pull_interrupted_resumes_on_the_same_command(hub: FakeHub, models: Path) -> None:
    # Large enough that the interrupt lands mid-file even on a loaded machine (CI once
    # saw a 6 MiB pull finish before the signal arrived); the resume runs at full speed.
    size = 24 * MiB
    files = gguf_repo(hub, big=size)
    hub.throttle_bps = 2 * MiB
    proc = await asyncio.create_subprocess_exec(
        *pull_argv(), REPO, "-q", "Q4_K_M", "--models-dir", str(models), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, "HF_ENDPOINT": hub.url, "PYTHONPATH": str(ROOT)})
    staging = models / STAGING

    def partial() -> int:
        return sum(p.stat().st_size for p in staging.glob("download_*/*.part")) if staging.exists() else 0

    await hub.wait_for(lambda: partial() >= MiB)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 130 and "run the same command again to resume" in err.decode()
    await hub.wait_for(lambda: hub.transfers_open == 0)
    kept = partial()
    assert kept >= MiB

    hub.throttle_bps = None
    rc, _, err2 = await run_pull(hub.url, REPO, "-q", "Q4_K_M", "--models-dir", str(models))
    assert rc == 0, err2
    assert "resuming" in err2
    assert hub.range_requests == [("tiny-Q4_K_M.gguf", kept)]
    assert (models / "tiny-gguf" / "tiny-Q4_K_M.gguf").read_bytes() == files["tiny-Q4_K_M.gguf"]
