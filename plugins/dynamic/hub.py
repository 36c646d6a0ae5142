"""What a download names and what it would fetch, from the Hugging Face Hub.

``parse_url`` reads the forms a client may send:

    https://huggingface.co/org/repo                      the whole repo (filters apply)
    https://huggingface.co/org/repo/tree/REV             at a branch, tag or commit
    https://huggingface.co/org/repo/blob/REV/dir/f.gguf  one file (also .../resolve/...)
    org/repo   org/repo:f.gguf   org/repo@REV   org/repo@REV:f.gguf

``list_repo`` asks the Hub for the repo's files with their sizes (one
``HfApi.model_info(files_metadata=True)`` call, blocking: run it in a thread) and
``select`` keeps what the filters take: ``include``/``exclude`` globs (huggingface_hub's
own ``filter_repo_objects``, as ``snapshot_download`` applies them) and a quantization tag
(``Q4_K_M`` keeps only the GGUF files whose path carries that tag, any case). Hub errors
become the router's (``repo_not_found`` 404, ``revision_not_found`` 404, a gated repo,
an unreachable Hub 502), with a message that says what to fix.

huggingface_hub is imported inside the functions that need it (the ``dynamic`` extra), so
importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from router import InvalidRequest, NotFound, RouterError, UpstreamError, UpstreamUnreachable, shown

DEFAULT_ENDPOINT = "https://huggingface.co"
#: Hosts whose URLs name Hub repos (besides the configured endpoint's host).
HUB_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NOT_MODEL_REPOS = ("datasets", "spaces", "buckets")


@dataclasses.dataclass(frozen=True)
class HubRef:
    """A repo (and maybe one file in it) named by a client."""

    repo_id: str
    revision: str | None = None  # None: the repo's default branch
    filename: str | None = None


@dataclasses.dataclass(frozen=True)
class RepoFile:
    path: str
    size: int


@dataclasses.dataclass(frozen=True)
class Listing:
    """What a download of ``ref`` with some filters would fetch."""

    ref: HubRef
    commit: str                  # the commit the files are read at (pinned for the download)
    all_files: tuple[RepoFile, ...]
    files: tuple[RepoFile, ...]  # the ones the filters keep

    @property
    def revision(self) -> str:
        return self.ref.revision or "main"

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def _bad_url(url: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"url {shown(url)} {why}; give a Hugging Face Hub repo as https://huggingface.co/ORG/REPO "
        "(or .../blob/main/FILE), ORG/REPO or ORG/REPO:FILE", param="url")


def _check_repo_id(url: str, parts: Sequence[str]) -> str:
    if not 1 <= len(parts) <= 2 or not all(_NAME.match(p) and ".." not in p and not p.endswith(".git")
                                           for p in parts):
        raise _bad_url(url, "does not name a repo")
    return "/".join(parts)


def _check_file(url: str, filename: str) -> str:
    path = PurePosixPath(filename)
    if not filename or filename.endswith("/") or path.is_absolute() or any(p in ("", ".", "..") for p in filename.split("/")):
        raise _bad_url(url, "does not name a file in the repo")
    return filename


def parse_url(url: str, *, endpoint: str | None = None) -> HubRef:
    """The repo, revision and file a client's ``url`` names (400 ``param: url`` if none)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest("url is required: a Hugging Face Hub repo (https://huggingface.co/ORG/REPO, "
                             "ORG/REPO or ORG/REPO:FILE)", param="url")
    text = url.strip()
    if "://" in text:
        split = urllib.parse.urlsplit(text)
        hosts = set(HUB_HOSTS)
        if endpoint:
            hosts.add((urllib.parse.urlsplit(endpoint).hostname or "").lower())
        if split.scheme not in ("http", "https") or (split.hostname or "").lower() not in hosts:
            raise _bad_url(url, "is not on the Hugging Face Hub" + (f" ({endpoint})" if endpoint else ""))
        parts = [urllib.parse.unquote(p) for p in split.path.split("/") if p]
        if parts and parts[0] in _NOT_MODEL_REPOS:
            raise _bad_url(url, f"is a {parts[0][:-1]} repo; only model repos can be downloaded")
        if parts and parts[0] == "models":
            parts = parts[1:]
        for marker in ("tree", "blob", "resolve"):
            if marker in parts[1:3]:
                at = parts.index(marker, 1)
                repo_id = _check_repo_id(url, parts[:at])
                rest = parts[at + 1:]
                if not rest:
                    raise _bad_url(url, f"has no revision after /{marker}/")
                revision = rest[0]
                if marker == "tree":
                    return HubRef(repo_id, revision)  # a folder in the tree means the repo
                if len(rest) < 2:
                    raise _bad_url(url, f"has no file after /{marker}/{revision}/")
                return HubRef(repo_id, revision, _check_file(url, "/".join(rest[1:])))
        return HubRef(_check_repo_id(url, parts))
    repo_part, sep, filename = text.partition(":")
    repo_part, at_sign, revision = repo_part.partition("@")
    repo_id = _check_repo_id(url, repo_part.split("/"))
    if at_sign and not revision:
        raise _bad_url(url, "has no revision after @")
    return HubRef(repo_id, revision or None, _check_file(url, filename) if sep else None)


_TAG_BEFORE = r"(?<![A-Za-z0-9])"
_TAG_AFTER = r"(?![A-Za-z0-9_])"


def check_quantization(tag: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]+", tag):
        raise InvalidRequest(f"quantization {shown(tag)} is not a quantization tag (like Q4_K_M, Q8_0, IQ4_XS)",
                             param="quantization")
    return tag


def has_quantization(path: str, tag: str) -> bool:
    """Whether a GGUF file's path carries the tag (``model-Q4_K_M.gguf``, ``Q4_K_M/x-00001-of-00002.gguf``):
    any case, as a whole tag (``Q4_K`` does not take ``Q4_K_M``, ``Q4_0`` does not take ``IQ4_0``)."""
    if not path.lower().endswith(".gguf"):
        return False
    return re.search(_TAG_BEFORE + re.escape(tag) + _TAG_AFTER, path, re.IGNORECASE) is not None


def _check_globs(name: str, globs: list[str] | None) -> list[str] | None:
    if globs is None:
        return None
    if isinstance(globs, str):
        globs = [globs]
    if not isinstance(globs, list) or not all(isinstance(g, str) and g for g in globs):
        raise InvalidRequest(f"{name} must be a list of glob patterns (like \"*.gguf\")", param=name)
    return globs


def select(listing_files: Sequence[RepoFile], ref: HubRef, *, include: list[str] | None = None,
           exclude: list[str] | None = None, quantization: str | None = None) -> list[RepoFile]:
    """The files a download takes: the one named, else the whole repo narrowed by the filters."""
    # re-exported by huggingface_hub.utils' lazy loader, which mypy does not read as an export
    from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

    if ref.filename is not None:
        files = [f for f in listing_files if f.path == ref.filename]
    else:
        files = list(filter_repo_objects(listing_files, allow_patterns=include, ignore_patterns=exclude,
                                         key=lambda f: f.path))
    if quantization is not None:
        files = [f for f in files if has_quantization(f.path, quantization)]
    return [f for f in files if _safe_repo_path(f.path)]


def _safe_repo_path(path: str) -> bool:
    """A repo path that stays inside a folder (a hostile mirror could list ``../x``)."""
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in path.split("/"))


def describe_filters(ref: HubRef, include: list[str] | None, exclude: list[str] | None,
                     quantization: str | None) -> str:
    said = []
    if ref.filename is not None:
        said.append(f"file {shown(ref.filename)}")
    if include:
        said.append(f"include {include}")
    if exclude:
        said.append(f"exclude {exclude}")
    if quantization:
        said.append(f"quantization {shown(quantization)}")
    return ", ".join(said) or "no filters"


def list_repo(ref: HubRef, *, endpoint: str | None, token: str | None, timeout: float = 30.0) -> tuple[str, list[RepoFile]]:
    """The repo's commit and files (path, size) at ``ref.revision``; blocking."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(endpoint=endpoint, token=token)
    where = api.endpoint
    try:
        info = api.model_info(ref.repo_id, revision=ref.revision, files_metadata=True, timeout=timeout)
    except GatedRepoError as exc:
        raise InvalidRequest(f"repo {shown(ref.repo_id)} on {where} is gated: accept its terms on the Hub and "
                             "give a token that may read it (HF_TOKEN)", param="url", code="repo_gated") from exc
    except RevisionNotFoundError as exc:
        raise NotFound(f"repo {shown(ref.repo_id)} on {where} has no revision {shown(ref.revision or 'main')}",
                       param="url", code="revision_not_found") from exc
    except RepositoryNotFoundError as exc:
        raise NotFound(f"repo {shown(ref.repo_id)} not found on {where}: check the name (a private repo needs "
                       "a token that may read it: HF_TOKEN)", param="url", code="repo_not_found") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise UpstreamError(f"the Hub at {where} answered HTTP {status} listing {shown(ref.repo_id)}: "
                            f"{_first_line(exc)}") from exc
    except RouterError:
        raise
    except Exception as exc:  # connection refused, DNS, TLS, timeouts: huggingface_hub's HTTP client's errors
        raise UpstreamUnreachable(f"cannot reach the Hugging Face Hub at {where}: {_first_line(exc)}") from exc
    files = [RepoFile(s.rfilename, int(s.size or 0)) for s in (info.siblings or [])]
    return str(info.sha or ref.revision or "main"), files


def fetch_listing(url: str, *, include: list[str] | None = None, exclude: list[str] | None = None,
                  quantization: str | None = None, endpoint: str | None = None,
                  token: str | None = None) -> Listing:
    """Parse, list and select (blocking): what a download of ``url`` would fetch. Raises the
    router's errors; a selection that keeps nothing is a 400 naming the filters."""
    include = _check_globs("include", include)
    exclude = _check_globs("exclude", exclude)
    if quantization is not None:
        if not isinstance(quantization, str):
            raise InvalidRequest("quantization must be a string like \"Q4_K_M\"", param="quantization")
        quantization = check_quantization(quantization)
    ref = parse_url(url, endpoint=endpoint or _default_endpoint())
    commit, files = list_repo(ref, endpoint=endpoint, token=token)
    chosen = select(files, ref, include=include, exclude=exclude, quantization=quantization)
    if not chosen:
        if ref.filename is not None and not any(f.path == ref.filename for f in files):
            raise NotFound(f"repo {shown(ref.repo_id)} has no file {shown(ref.filename)}", param="url",
                           code="file_not_found")
        param = "quantization" if quantization else ("include" if include else ("exclude" if exclude else "url"))
        ggufs = sorted({f.path for f in files if f.path.lower().endswith(".gguf")})[:10]
        hint = f"; its GGUF files: {', '.join(ggufs)}" if quantization and ggufs else ""
        raise InvalidRequest(f"no file of repo {shown(ref.repo_id)} ({len(files)} files) matches "
                             f"{describe_filters(ref, include, exclude, quantization)}{hint}", param=param,
                             code="no_matching_files")
    return Listing(ref, commit, tuple(files), tuple(chosen))


def _default_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())[:300]


def default_destination(ref: HubRef) -> str:
    """Where a download goes when the client names no folder: the repo's name, lower-cased
    (XandRouting's choice)."""
    return ref.repo_id.rsplit("/", 1)[-1].lower()


def listing_dict(listing: Listing) -> dict[str, Any]:
    return {
        "repo_id": listing.ref.repo_id,
        "revision": listing.revision,
        "commit": listing.commit,
        "files": [{"path": f.path, "size_bytes": f.size} for f in listing.files],
        "total_size_bytes": listing.total_size,
    }
