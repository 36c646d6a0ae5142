"""Processes the benchmark starts and watches: targets, readiness, CPU time and RSS."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Target:
    name: str
    url: str
    proc: subprocess.Popen[bytes] | None = None
    auth: str | None = None  # a Bearer token the target requires

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


# -- processes --------------------------------------------------------------------------


def _affinity(cpus: set[int] | None):  # type: ignore[no-untyped-def]
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}: not ready after {timeout:g}s:\n{log_path.read_text()[-3000:]}")


def start(name: str, cmd: list[str], ready_url: str, workdir: Path, cpus: set[int] | None,
          env: dict[str, str] | None = None, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **(env or {})}, preexec_fn=_affinity(cpus))
    try:
        _wait_ready(ready_url, proc, log_path, timeout)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (Linux /proc)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def find_litellm(explicit: str | None) -> str | None:
    for candidate in (explicit, os.environ.get("BENCH_LITELLM"),
                      str(ROOT / ".bench-litellm" / "bin" / "litellm"), shutil.which("litellm")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def litellm_version(executable: str) -> str:
    python = Path(executable).with_name("python")
    try:
        out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# -- measuring --------------------------------------------------------------------------


