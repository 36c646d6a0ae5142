"""Download jobs: models fetched from the Hugging Face Hub into ``models_dir``.

    downloads = Downloads(models_dir, store=models_dir / ".downloads" / "jobs.db")
    await downloads.start()          # resumes the jobs a previous run left unfinished
    job = await downloads.submit("org/repo", quantization="Q4_K_M")
    downloads.get(job["job_id"]); downloads.list(); await downloads.cancel(job["job_id"])
    await downloads.aclose()         # running jobs stop and resume at the next start()

A job goes ``pending`` (waiting for one of ``max_active`` slots) -> ``downloading`` ->
``completed`` | ``failed`` | ``cancelled``. ``submit`` validates at once: the url
(400 ``param: url``), the destination (400 ``param: destination`` if it would leave
``models_dir``), the repo and its files, listed from the Hub now (404 ``repo_not_found``,
400 ``no_matching_files`` naming the filters). The file list is pinned to the commit seen
then, so a job that resumes a day later fetches the same bytes.

Where the bytes go. Each job writes under ``models_dir/.downloads/<job_id>/`` (hidden: the
inventory skips dot-names), each file as ``<path>.part`` until it is whole, then renamed
to ``<path>`` there. When every file is in, the staging folder is renamed to the
destination in one step (a new folder), or, when the destination folder exists already,
each file is renamed into it (each rename atomic). So no half-written file ever stands
under a model's final name, and a new model appears whole.

Who moves the bytes. Each running job is a child process (``python -m
plugins.dynamic.downloads``) that fetches its files with huggingface_hub's own
``http_get`` (its HTTP client, headers, token, redirects, retries and error types),
appending to the ``.part`` file from its current size with a ``Range`` request. Cancel and
shutdown kill that process: the transfer stops at once (its socket closes), and the
``.part`` files stay for a resume (shutdown) or are removed (cancel). The child also exits
when its parent dies (it watches its stdin), so a killed router leaves no orphan
downloading, and the next ``start()`` resumes where the ``.part`` files end. (Why not
``hf_hub_download``: since 1.x it writes to a process-unique temporary file it deletes on
failure, so an interrupted download always starts over; and a thread cannot be
interrupted mid-file.)

Progress. The parent reads the sizes of the staging files twice a second (``bytes_done``,
``files_done``); the store is written when a job changes state and at most every
``STORE_EVERY_S`` while it downloads. Jobs live in one SQLite file (aiosqlite), so they
survive restarts with their final states.

Endpoint and token: by default huggingface_hub's own (``HF_ENDPOINT``, read when
``Downloads`` is made; ``HF_TOKEN`` or the token saved under ``HF_HOME``); the child
inherits the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugins.dynamic.hub import HubRef, Listing, RepoFile, default_destination, fetch_listing, parse_url
from router import InvalidRequest, shown

if TYPE_CHECKING:
    import aiosqlite

# The dynamic extra: looked up here (cheap, nothing imported) so that importing this module
# says at once when it is missing; the packages themselves are imported where they are used.
for _package in ("huggingface_hub", "aiosqlite"):
    if importlib.util.find_spec(_package) is None:
        raise ImportError(f"downloads need the {_package} package (the dynamic extra)", name=_package)

STAGING = ".downloads"
#: How often a running job's progress is read from disk, and written to the store.
POLL_S = 0.5
STORE_EVERY_S = 2.0
#: The size of each read (and write) of a file body: the most a killed download loses.
CHUNK_BYTES = 1 << 20
ACTIVE = ("pending", "downloading")
#: Glob patterns (include / exclude), as clients send them.
Globs = list[str] | None
_ROOT = Path(__file__).resolve().parents[2]


def _now() -> float:
    return time.time()


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass
class _Job:
    job_id: str
    url: str
    repo_id: str
    revision: str
    commit: str
    files: list[RepoFile]
    destination: str
    include: list[str] | None = None
    exclude: list[str] | None = None
    quantization: str | None = None
    status: str = "pending"
    bytes_done: int = 0
    files_done: int = 0
    error: str | None = None
    created_at: float = dataclasses.field(default_factory=_now)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    def record(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["files"] = [[f.path, f.size] for f in self.files]
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> _Job:
        data = dict(data)
        data["files"] = [RepoFile(str(p), int(s)) for p, s in data["files"]]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def message(self) -> str:
        if self.status == "pending":
            return "Download job created" if self.started_at is None else "Download waiting to resume"
        if self.status == "downloading":
            return f"Downloading {self.files_done}/{len(self.files)} files"
        if self.status == "completed":
            return f"Download completed: {len(self.files)} files"
        if self.status == "failed":
            return f"Download failed: {self.error}"
        return "Download job cancelled"

    def public(self, path_prefix: str | None) -> dict[str, Any]:
        total = self.bytes_total
        done = min(self.bytes_done, total)
        duration = (self.finished_at - self.started_at
                    if self.finished_at is not None and self.started_at is not None else None)
        model_path = self.destination
        if path_prefix is not None:
            model_path = path_prefix.rstrip("/") + ("/" + self.destination if self.destination else "")
        return {
            "job_id": self.job_id,
            "url": self.url,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "files": [f.path for f in self.files],
            "destination": self.destination,
            "model_path": model_path,
            "status": self.status,
            "bytes_done": done,
            "bytes_total": total,
            "files_done": self.files_done,
            "files_total": len(self.files),
            "progress": 1.0 if total == 0 and self.status == "completed" else (done / total if total else 0.0),
            "error": self.error,
            "message": self.message(),
            "include": self.include,
            "exclude": self.exclude,
            "quantization": self.quantization,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            # XandRouting's names for the same facts
            "completed_at": _iso(self.finished_at) if self.status == "completed" else None,
            "duration_seconds": round(duration, 3) if duration is not None else None,
            "files_downloaded": self.files_done if self.status == "completed" else None,
        }


class Downloads:
    """The download jobs of one ``models_dir``, kept in ``store`` (SQLite)."""

    def __init__(self, models_dir: Path, store: Path, *, endpoint: str | None = None,
                 token: str | None = None, logger: logging.Logger | None = None,
                 path_prefix: str | None = None, max_active: int = 2) -> None:
        self.models_dir = Path(models_dir)
        self.store = Path(store)
        # HF_ENDPOINT read now, not when huggingface_hub was first imported (its constants)
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
        self.token = token
        self.log = logger or logging.getLogger("router.dynamic")
        #: The prefix clients put before model paths (``/models``): ``model_path`` in a job.
        self.path_prefix = path_prefix
        self.max_active = max_active
        self._jobs: dict[str, _Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(max_active)
        self._db: aiosqlite.Connection | None = None
        self._saved_at: dict[str, float] = {}

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, *, resume: bool = True) -> None:
        """Open the store; unfinished jobs resume (unless ``resume=False``: see ``resume``)."""
        import aiosqlite

        self.store.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.store)
        await self._db.execute("CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, "
                               "created_at REAL NOT NULL, data TEXT NOT NULL)")
        await self._db.commit()
        async with self._db.execute("SELECT data FROM jobs ORDER BY created_at") as cursor:
            rows = await cursor.fetchall()
        for (data,) in rows:
            try:
                job = _Job.from_record(json.loads(data))
            except (ValueError, TypeError, KeyError) as exc:
                self.log.warning("downloads: skipping an unreadable job in %s: %s", self.store, exc)
                continue
            self._jobs[job.job_id] = job
        if resume:
            for job in self._jobs.values():
                if job.status in ACTIVE:
                    self.log.info("downloads: resuming %s (%s)", job.job_id, job.repo_id)
                    self._spawn(job)

    async def resume(self, job_id: str) -> dict[str, Any] | None:
        """Resume one unfinished job (after ``start(resume=False)``); None if unknown."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status in ACTIVE and job_id not in self._tasks:
            self._spawn(job)
        return job.public(self.path_prefix)

    async def aclose(self) -> None:
        """Stop the running jobs where they are (they stay pending/downloading and resume
        at the next ``start``), save their progress, close the store."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._db is not None:
            for job in self._jobs.values():
                if job.status in ACTIVE:
                    await self._save(job)
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> Downloads:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the API -----------------------------------------------------------------------

    async def submit(self, url: str, *, destination: str | None = None, include: Globs = None,
                     exclude: Globs = None, quantization: str | None = None) -> dict[str, Any]:
        """Validate, list the repo's files now, and start the job in the background."""
        if destination is not None:
            self._destination(destination, parse_url(url, endpoint=self.endpoint))
        listing = await self._listing(url, include, exclude, quantization)
        dest = self._destination(destination, listing.ref)
        job = _Job(job_id=f"download_{int(_now() * 1000)}_{secrets.token_hex(4)}", url=url,
                   repo_id=listing.ref.repo_id, revision=listing.revision, commit=listing.commit,
                   files=list(listing.files), destination=dest, include=include, exclude=exclude,
                   quantization=quantization)
        self._jobs[job.job_id] = job
        await self._save(job)
        self.log.info("downloads: %s: %s (%d files, %d bytes) -> %s", job.job_id, job.repo_id,
                      len(job.files), job.bytes_total, dest or ".")
        self._spawn(job)
        return job.public(self.path_prefix)

    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        return job.public(self.path_prefix) if job is not None else None

    def list(self) -> list[dict[str, Any]]:
        """Every job, newest first."""
        jobs = sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)
        return [job.public(self.path_prefix) for job in jobs]

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Stop a pending or downloading job now (its transfer is killed), remove its partial
        files, mark it ``cancelled``. None if unknown; 400 if it has already finished."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status not in ACTIVE:
            raise InvalidRequest(f"download job {shown(job_id)} is {job.status}; only pending or downloading "
                                 "jobs can be cancelled", param="job_id", code="job_not_cancellable")
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if job.status not in ACTIVE:  # it finished while being cancelled
            return job.public(self.path_prefix)
        await asyncio.to_thread(shutil.rmtree, self._staging(job), True)
        job.status = "cancelled"
        job.finished_at = _now()
        await self._save(job)
        self.log.info("downloads: %s cancelled", job_id)
        return job.public(self.path_prefix)

    async def verify(self, url: str, *, include: Globs = None, exclude: Globs = None,
                     quantization: str | None = None, destination: str | None = None) -> dict[str, Any]:
        """What a download would fetch (nothing is written)."""
        if destination is not None:
            self._destination(destination, parse_url(url, endpoint=self.endpoint))
        listing = await self._listing(url, include, exclude, quantization)
        dest = self._destination(destination, listing.ref)
        paths = [f.path for f in listing.files]
        return {
            "status": "accessible",
            "repo_id": listing.ref.repo_id,
            "repo_type": "model",
            "revision": listing.revision,
            "commit": listing.commit,
            "files": [{"path": f.path, "size_bytes": f.size} for f in listing.files],
            "total_size_bytes": listing.total_size,
            "destination": dest,
            "total_files": len(listing.all_files),
            "matched_files": len(paths),
            "sample_files": paths[:10],
            "message": f"Repository is accessible with {len(paths)} matching files",
        }

    # --- validation --------------------------------------------------------------------

    async def _listing(self, url: str, include: Globs, exclude: Globs,
                       quantization: str | None) -> Listing:
        parse_url(url, endpoint=self.endpoint)  # a bad url is a 400 before any network call
        return await asyncio.to_thread(fetch_listing, url, include=include, exclude=exclude,
                                       quantization=quantization, endpoint=self.endpoint, token=self.token)

    def _destination(self, destination: str | None, ref: HubRef) -> str:
        """The destination as a clean path relative to models_dir ("" for models_dir itself);
        400 ``param: destination`` for anything that would leave it or hide in it."""
        raw = default_destination(ref) if destination is None else destination
        if not isinstance(raw, str):
            raise InvalidRequest("destination must be a folder name under the models folder", param="destination")
        text = raw.strip()
        prefix = (self.path_prefix or "").rstrip("/")
        if prefix and (text == prefix or text.startswith(prefix + "/")):
            text = text[len(prefix):].lstrip("/")  # XandRouting clients may send /models/NAME
        root = self.models_dir.resolve()
        target = Path(text)
        candidate = (target if target.is_absolute() else root / target).resolve()
        try:
            rel = candidate.relative_to(root)
        except ValueError:
            raise InvalidRequest(f"destination {shown(raw)} is outside the models folder ({root}); give a "
                                 "folder name under it, like \"my-model\"", param="destination") from None
        if any(part.startswith(".") for part in rel.parts):
            raise InvalidRequest(f"destination {shown(raw)} is a hidden folder (names starting with '.' are "
                                 "not listed in the inventory); choose another name", param="destination")
        if candidate.exists() and not candidate.is_dir():
            raise InvalidRequest(f"destination {shown(raw)} is a file, not a folder", param="destination")
        return rel.as_posix() if rel.parts else ""

    # --- running a job -----------------------------------------------------------------

    def _staging(self, job: _Job) -> Path:
        return self.models_dir / STAGING / job.job_id

    def _spawn(self, job: _Job) -> None:
        task = asyncio.create_task(self._run(job), name=f"download {job.job_id}")
        self._tasks[job.job_id] = task
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for job_id, running in list(self._tasks.items()):
            if running is task:
                del self._tasks[job_id]

    async def _run(self, job: _Job) -> None:
        async with self._slots:
            job.status = "downloading"
            job.started_at = job.started_at or _now()
            job.error = None
            self._measure(job)
            await self._save(job)
            try:
                error = await self._fetch(job)
            except asyncio.CancelledError:
                self._measure(job)
                raise
            except Exception as exc:  # a bug or the disk: the job says so, the router goes on
                self.log.exception("downloads: %s failed", job.job_id)
                error = f"{type(exc).__name__}: {exc}"
            # Once the bytes are all in, moving them into place and recording it is not
            # interrupted by a cancel or a shutdown (else the store would say "downloading"
            # for a model that stands complete in models_dir).
            finish = asyncio.ensure_future(self._finish(job, error))
            try:
                await asyncio.shield(finish)
            except asyncio.CancelledError:
                await finish
                raise

    async def _finish(self, job: _Job, error: str | None) -> None:
        if error is None:
            try:
                await asyncio.to_thread(self._install, job)
            except Exception as exc:
                self.log.exception("downloads: %s: moving the files into place failed", job.job_id)
                error = f"moving the files into {job.destination or '.'} failed: {type(exc).__name__}: {exc}"
        if error is None:
            job.status = "completed"
            job.bytes_done = job.bytes_total
            job.files_done = len(job.files)
        else:
            job.status = "failed"
            job.error = error
            await asyncio.to_thread(shutil.rmtree, self._staging(job), True)
        job.finished_at = _now()
        await self._save(job)
        self.log.info("downloads: %s %s%s", job.job_id, job.status, f": {error}" if error else "")

    async def _fetch(self, job: _Job) -> str | None:
        """Run the child that moves the bytes; None when every file is whole in staging,
        else a readable error."""
        staging = self._staging(job)
        staging.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "plugins.dynamic.downloads", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        spec = {"endpoint": self.endpoint, "token": self.token, "repo_id": job.repo_id, "commit": job.commit,
                "files": [[f.path, f.size] for f in job.files], "staging": str(staging)}
        tail: list[str] = []
        reader = asyncio.create_task(_tail(proc.stderr, tail))
        ticker = asyncio.create_task(self._tick(job))
        error: str | None = None
        done = False
        try:
            proc.stdin.write(json.dumps(spec).encode() + b"\n")
            await proc.stdin.drain()
            async for line in proc.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "error":
                    error = str(event.get("message"))
                elif event.get("event") == "done":
                    done = True
            rc = await proc.wait()
            await reader
        except BaseException:
            if proc.returncode is None:
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        finally:
            ticker.cancel()
            reader.cancel()
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        self._measure(job)
        if done and rc == 0:
            return None
        if error is None:
            last = " | ".join(tail[-3:]) or "no output"
            error = f"the download process exited with status {rc}: {last}"
        return error

    async def _tick(self, job: _Job) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            self._measure(job)
            if _now() - self._saved_at.get(job.job_id, 0.0) >= STORE_EVERY_S:
                await self._save(job)

    def _measure(self, job: _Job) -> None:
        """bytes_done and files_done from what stands in the staging folder."""
        staging = self._staging(job)
        done_bytes = 0
        done_files = 0
        for f in job.files:
            final = staging / f.path
            try:
                size = final.stat().st_size
                done_files += 1
            except OSError:
                try:
                    size = final.with_name(final.name + ".part").stat().st_size
                except OSError:
                    size = 0
            done_bytes += min(size, f.size)
        job.bytes_done = done_bytes
        job.files_done = done_files

    def _install(self, job: _Job) -> None:
        """Move a whole job from staging to its destination (a new folder: one rename)."""
        staging = self._staging(job)
        dest = self.models_dir / job.destination if job.destination else self.models_dir
        # the destination is checked again: a symlink may have appeared since submit
        self._destination(job.destination or ".", HubRef(job.repo_id))
        if job.destination and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, dest)
            return
        for f in job.files:
            target = dest / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / f.path, target)
        shutil.rmtree(staging, ignore_errors=True)

    async def _save(self, job: _Job) -> None:
        if self._db is None:
            return
        self._saved_at[job.job_id] = _now()
        await self._db.execute("INSERT OR REPLACE INTO jobs (job_id, created_at, data) VALUES (?, ?, ?)",
                               (job.job_id, job.created_at, json.dumps(job.record())))
        await self._db.commit()


async def _tail(stream: asyncio.StreamReader, tail: list[str]) -> None:
    """Keep the last lines of a child's stderr (for the error when it dies unexplained)."""
    async for line in stream:
        text = line.decode("utf-8", "replace").strip()
        if text:
            tail.append(text[:500])
            del tail[:-20]


# --- the child process: python -m plugins.dynamic.downloads ----------------------------------


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _watch_parent() -> None:
    """Exit when the parent closes our stdin (it was killed, or it killed the job)."""
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(3)


def _readable(exc: BaseException, repo_id: str, path: str) -> str:
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    if isinstance(exc, RepositoryNotFoundError):
        return f"repo {repo_id!r} is no longer readable on the Hub (deleted, renamed or private)"
    if isinstance(exc, EntryNotFoundError):
        return f"{path!r} is no longer in repo {repo_id!r}"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return f"the Hub answered HTTP {status} for {path!r}: {text}"
    if isinstance(exc, OSError):
        return f"cannot write {path!r}: {exc.strerror or text}"
    return f"network error while downloading {path!r}: {text}"


def _child() -> int:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides (it kills us
    # to stop, and keeps the .part files for a resume), so the child ignores it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = json.loads(sys.stdin.readline())
    threading.Thread(target=_watch_parent, daemon=True).start()
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # a lazy re-export

    # Read and write 1 MiB at a time (the library's default is 10 MiB): what a killed
    # download loses, and the step in which progress shows.
    constants.DOWNLOAD_CHUNK_SIZE = CHUNK_BYTES
    staging = Path(spec["staging"])
    repo_id = str(spec["repo_id"])
    path = ""
    try:
        headers = build_hf_headers(token=spec["token"])
        for path, size in spec["files"]:
            final = staging / path
            if final.is_file() and final.stat().st_size == size:
                continue
            part = final.with_name(final.name + ".part")
            final.parent.mkdir(parents=True, exist_ok=True)
            resume = part.stat().st_size if part.exists() else 0
            if resume > size:
                part.unlink()
                resume = 0
            url = hf_hub_url(repo_id, path, revision=spec["commit"], endpoint=spec["endpoint"])
            with part.open("ab") as out:
                http_get(url, out, resume_size=resume, headers=headers, expected_size=size, displayed_filename=path)
            os.replace(part, final)
            _emit({"event": "file", "path": path})
    except Exception as exc:
        _emit({"event": "error", "message": _readable(exc, repo_id, path)})
        return 1
    _emit({"event": "done"})
    return 0


if __name__ == "__main__":
    _code = _child()
    sys.stdout.flush()
    os._exit(_code)  # not sys.exit: the stdin watcher thread must not meet interpreter shutdown
