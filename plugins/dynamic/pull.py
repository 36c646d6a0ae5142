"""``python -m router pull``: download a model from the Hugging Face Hub into a models folder.

    python -m router pull ORG/REPO[:FILE] [--quantization Q4_K_M] [--models-dir ./models] \\
        [--destination NAME] [--include GLOB ...] [--exclude GLOB ...]

The same download jobs as ``POST /v1/models/download`` (``plugins.dynamic.downloads``):
the files are listed first (a wrong repo, or filters that keep nothing, fail at once with
one line saying so), fetched into ``MODELS_DIR/.downloads/`` and moved into place when
whole. A progress bar is drawn on stderr (a line every few seconds when stderr is not a
terminal). Ctrl-C stops the download and keeps what has arrived: the same command again
resumes it. The endpoint and token are huggingface_hub's (``HF_ENDPOINT``, ``HF_TOKEN``,
``HF_HOME``). Exit status: 0 done, 1 failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

from router import Command, RouterError

#: The pull command's own job store, apart from a server's (whose jobs a server resumes).
PULL_STORE = "pull.db"
_NOT_TTY_EVERY_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", help="ORG/REPO, ORG/REPO:FILE, ORG/REPO@REVISION or a https://huggingface.co/... URL")
    parser.add_argument("--quantization", "-q", help="only the GGUF files with this tag, e.g. Q4_K_M (any case)")
    parser.add_argument("--models-dir", default="./models", help="the models folder (default: ./models)")
    parser.add_argument("--destination", help="the folder under the models folder (default: the repo's name, "
                        "lower-cased; '.' for the models folder itself)")
    parser.add_argument("--include", action="append", metavar="GLOB", help="only files matching (repeatable)")
    parser.add_argument("--exclude", action="append", metavar="GLOB", help="not files matching (repeatable)")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


class Bar:
    """One progress line on ``stream``: redrawn in place on a terminal, else a line every
    few seconds."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last_line = 0.0

    def draw(self, job: dict[str, Any], final: bool = False) -> None:
        now = time.monotonic()
        if not self.tty and not final and now - self._last_line < _NOT_TTY_EVERY_S:
            return
        self._last_line = now
        done, total = int(job["bytes_done"]), int(job["bytes_total"])
        width = 30
        filled = int(width * job["progress"])
        rate = done / max(now - self.started, 1e-3)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {job['progress'] * 100:5.1f}% {_mb(done)} / "
                f"{_mb(total)}  {job['files_done']}/{job['files_total']} files  {_mb(int(rate))}/s")
        if self.tty:
            self.stream.write("\r" + line.ljust(100) + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


INTERRUPTED = "\ninterrupted: what has arrived is kept; run the same command again to resume\n"


def _same(job: dict[str, Any], args: argparse.Namespace) -> bool:
    return (job["status"] in ("pending", "downloading") and job["url"] == args.repo
            and job["quantization"] == args.quantization and job["include"] == args.include
            and job["exclude"] == args.exclude
            and (args.destination is None or job["destination"] == args.destination.strip("/")))


async def pull(args: argparse.Namespace, stream: IO[str]) -> int:
    from plugins.dynamic.downloads import STAGING, Downloads

    models = Path(args.models_dir)
    models.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("router.dynamic.pull")
    downloads = Downloads(models, models / STAGING / PULL_STORE, logger=logger)
    # Ctrl-C is noted here and acted on between polls: a KeyboardInterrupt turned into a
    # cancellation could land inside the downloads' own awaits and be lost there.
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    await downloads.start(resume=False)
    try:
        earlier = next((job for job in downloads.list() if _same(job, args)), None)
        if earlier is not None:
            job = await downloads.resume(earlier["job_id"]) or earlier
            stream.write(f"resuming {job['repo_id']}: {_mb(job['bytes_done'])} of {_mb(job['bytes_total'])} "
                         "already here\n")
        else:
            job = await downloads.submit(args.repo, destination=args.destination, include=args.include,
                                         exclude=args.exclude, quantization=args.quantization)
        where = models / job["destination"] if job["destination"] else models
        stream.write(f"pulling {job['repo_id']} ({job['files_total']} files, {_mb(job['bytes_total'])}) "
                     f"into {where}\n")
        stream.flush()
        bar = Bar(stream)
        while job["status"] in ("pending", "downloading"):
            bar.draw(job)
            try:
                await asyncio.wait_for(interrupted.wait(), 0.2)
            except TimeoutError:
                pass
            if interrupted.is_set():
                stream.write(INTERRUPTED)
                return 130
            job = downloads.get(job["job_id"]) or job
        bar.draw(job, final=True)
        if job["status"] != "completed":
            stream.write(f"error: {job['error'] or job['message']}\n")
            return 1
        for name in job["files"]:
            print(where / name)
        return 0
    except RouterError as exc:
        stream.write(f"error: {exc.message}\n")
        return 1
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await downloads.aclose()


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(pull(args, sys.stderr))
    except KeyboardInterrupt:  # before the loop was running
        sys.stderr.write(INTERRUPTED)
        return 130


COMMAND = Command(
    name="pull",
    help="download a model from the Hugging Face Hub into the models folder (progress bar, resumable)",
    run=run,
    add_arguments=add_arguments,
)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m plugins.dynamic.pull", description=COMMAND.help)
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
