"""A fake Hugging Face Hub on 127.0.0.1: a real aiohttp server that serves model repos the
way the Hub does, enough for ``huggingface_hub`` (>= 1.0) to list and download from it
with ``HF_ENDPOINT=hub.url`` (or ``endpoint=hub.url``).

    hub = await FakeHub().start()
    commit = hub.add_repo("org/tiny-GGUF", {"tiny-Q4_K_M.gguf": data, "README.md": b"..."})
    hf_hub_download("org/tiny-GGUF", "tiny-Q4_K_M.gguf", endpoint=hub.url, local_dir=...)
    await hub.stop()

What it serves (paths and headers as the Hub's):

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: the model info,
  ``siblings`` with ``size``, ``blobId`` and ``lfs`` when ``?blobs=true`` (what
  ``HfApi.model_info(files_metadata=True)`` asks for).
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``?recursive=true``): the tree listing
  (``HfApi.list_repo_tree``).
- ``HEAD`` and ``GET /{repo}/resolve/{rev}/{path}``: ``ETag`` (and ``X-Linked-Etag``,
  ``X-Linked-Size`` for LFS files), ``X-Repo-Commit``, ``Content-Length``,
  ``Accept-Ranges: bytes``; ``Range: bytes=N-`` answers 206 with ``Content-Range``.
- Errors with the Hub's headers (``X-Error-Code``: ``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``; ``X-Error-Message``), so huggingface_hub raises its own
  ``RepositoryNotFoundError`` and friends. A repo added with ``token=...`` answers 401
  (as the Hub does for a private repo) unless ``Authorization: Bearer <token>`` is sent.

Knobs and counters for tests (plain attributes; set them while it runs):

- ``throttle_bps``: file bodies are sent at about this many bytes per second (None: as
  fast as possible), so a test can cancel or interrupt a transfer mid-file.
- ``kill_after_bytes``: the next file body is cut (connection aborted) after this many
  bytes; the knob resets itself once used.
- ``fail_status``: every API and file request answers this status (e.g. 500).
- ``bytes_served``, ``range_requests`` (``(path, start)`` for each ``Range`` GET),
  ``file_gets`` (each GET of a file: ``(path, start)``), ``transfers_open`` (bodies being
  sent now), ``transfers_cut`` (bodies whose client went away before the end),
  ``requests`` (``(method, path)`` of every request).
- ``wait_for(predicate)``: wait until a counter says something (bounded, no sleeps in tests).

Self-contained (aiohttp only) so other test suites can reuse it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
_REVISION_PREFIX = "/revision/"


@dataclasses.dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes]
    commit: str
    revisions: tuple[str, ...]
    token: str | None = None


def _sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_lfs(path: str, data: bytes) -> bool:
    return path.endswith((".gguf", ".safetensors", ".bin")) or len(data) > 10_000


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.throttle_bps: int | None = None
        self.kill_after_bytes: int | None = None
        self.fail_status: int | None = None
        self.bytes_served = 0
        self.range_requests: list[tuple[str, int]] = []
        self.file_gets: list[tuple[str, int]] = []
        self.transfers_open = 0
        self.transfers_cut = 0
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, revisions: tuple[str, ...] = ("main",),
                 token: str | None = None) -> str:
        """Serve ``files`` (repo path -> content) as ``repo_id``; returns the commit sha."""
        digest = hashlib.sha1(repo_id.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + _sha256(files[path]).encode())
        commit = digest.hexdigest()
        self.repos[repo_id] = Repo(repo_id, dict(files), commit, revisions, token)
        return commit

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> FakeHub:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self._changed = asyncio.Event()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds (checked whenever a counter changes)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), 0.2)
                except TimeoutError:
                    pass

    def _touch(self) -> None:
        self._changed.set()

    # --- routing ---------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["tail"]
        self.requests.append((request.method, "/" + path))
        self.authorizations.append(request.headers.get("Authorization"))
        self._touch()
        if self.fail_status is not None:
            return self._error(self.fail_status, None, f"fake hub failing with {self.fail_status}")
        if path.startswith("api/models/"):
            if request.method != "GET":
                return self._error(405, None, "method not allowed")
            return self._api(request, path[len("api/models/"):])
        if "/resolve/" in path and request.method in ("GET", "HEAD"):
            return await self._resolve(request, path)
        return self._error(404, None, "Not Found")

    def _find(self, request: web.Request, repo_id: str, revision: str | None) -> Repo | web.Response:
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if repo.token is not None and request.headers.get("Authorization") != f"Bearer {repo.token}":
            return self._error(401, "RepoNotFound", "Invalid username or password.")
        if revision is not None and revision not in repo.revisions and revision != repo.commit:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo

    def _api(self, request: web.Request, rest: str) -> web.Response:
        tree_path: str | None = None
        revision: str | None = None
        if "/tree/" in rest:
            rest, _, tail = rest.partition("/tree/")
            revision, _, tree_path = tail.partition("/")
        elif _REVISION_PREFIX in rest:
            rest, _, revision = rest.partition(_REVISION_PREFIX)
        found = self._find(request, rest, revision)
        if isinstance(found, web.Response):
            return found
        if tree_path is not None:
            return self._tree(found, tree_path, request.query.get("recursive", "").lower() in ("1", "true"))
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        siblings: list[dict[str, Any]] = []
        for name in sorted(found.files):
            data = found.files[name]
            sibling: dict[str, Any] = {"rfilename": name}
            if blobs:
                sibling.update(size=len(data), blobId=_sha1(data))
                if _is_lfs(name, data):
                    sibling["lfs"] = {"size": len(data), "sha256": _sha256(data), "pointerSize": 134}
            siblings.append(sibling)
        info = {
            "_id": found.commit[:24], "id": found.repo_id, "modelId": found.repo_id,
            "author": found.repo_id.split("/")[0], "sha": found.commit, "private": found.token is not None,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": siblings,
        }
        return web.json_response(info)

    def _tree(self, repo: Repo, prefix: str, recursive: bool) -> web.Response:
        prefix = prefix.strip("/")
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for name in sorted(repo.files):
            if prefix and not name.startswith(prefix + "/"):
                continue
            rest = name[len(prefix) + 1:] if prefix else name
            parts = rest.split("/")
            if not recursive and len(parts) > 1:
                folders.add((prefix + "/" if prefix else "") + parts[0])
                continue
            for depth in range(1, len(parts)):
                folders.add((prefix + "/" if prefix else "") + "/".join(parts[:depth]))
            data = repo.files[name]
            entry: dict[str, Any] = {"type": "file", "oid": _sha1(data), "size": len(data), "path": name}
            if _is_lfs(name, data):
                entry["lfs"] = {"oid": _sha256(data), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        if prefix and not entries and not folders:
            return self._error(404, "EntryNotFound", f"{prefix} does not exist on \"main\"")
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
        return web.json_response(entries)

    async def _resolve(self, request: web.Request, path: str) -> web.StreamResponse:
        repo_id, _, tail = path.partition("/resolve/")
        revision, _, file_path = tail.partition("/")
        found = self._find(request, repo_id, revision)
        if isinstance(found, web.Response):
            return found
        data = found.files.get(file_path)
        if data is None:
            return self._error(404, "EntryNotFound", "Entry not found", commit=found.commit)
        etag = _sha256(data) if _is_lfs(file_path, data) else _sha1(data)
        headers = {
            "ETag": f'"{etag}"', "X-Repo-Commit": found.commit, "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'inline; filename="{file_path.rsplit("/", 1)[-1]}"',
        }
        if _is_lfs(file_path, data):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        start, end = 0, len(data)
        status = 200
        spec = request.headers.get("Range")
        if spec is not None:
            match = _RANGE.match(spec.strip())
            if match is None or int(match.group(1)) >= len(data):
                headers["Content-Range"] = f"bytes */{len(data)}"
                return web.Response(status=416, headers=headers)
            start = int(match.group(1))
            if match.group(2):
                end = min(len(data), int(match.group(2)) + 1)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        if request.method == "HEAD":
            headers["Content-Length"] = str(end - start)
            return web.Response(status=status, headers=headers)
        self.file_gets.append((file_path, start))
        if spec is not None:
            self.range_requests.append((file_path, start))
        return await self._send(request, status, headers, data[start:end])

    async def _send(self, request: web.Request, status: int, headers: dict[str, str],
                    body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        kill_after, self.kill_after_bytes = self.kill_after_bytes, None
        self.transfers_open += 1
        self._touch()
        sent = 0
        finished = False
        try:
            await response.prepare(request)
            while sent < len(body):
                rate = self.throttle_bps
                size = 64 * 1024 if rate is None else max(1, min(64 * 1024, rate // 20))
                if kill_after is not None:
                    size = min(size, kill_after - sent)
                    if size <= 0:
                        assert request.transport is not None
                        request.transport.abort()
                        break
                chunk = body[sent:sent + size]
                await response.write(chunk)
                sent += len(chunk)
                self.bytes_served += len(chunk)
                self._touch()
                if rate is not None:
                    await asyncio.sleep(len(chunk) / rate)
            else:
                await response.write_eof()
                finished = True
        except ConnectionError:
            pass  # the client went away (counted below)
        finally:
            self.transfers_open -= 1
            if not finished:
                self.transfers_cut += 1
            self._touch()
        return response

    @staticmethod
    def _error(status: int, code: str | None, message: str, *, commit: str | None = None) -> web.Response:
        headers = {"X-Error-Message": message}
        if code is not None:
            headers["X-Error-Code"] = code
        if commit is not None:
            headers["X-Repo-Commit"] = commit
        return web.Response(status=status, headers=headers, content_type="application/json",
                            text=json.dumps({"error": message}))
