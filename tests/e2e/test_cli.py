"""The command line, run as a user runs it: ``python -m router check|serve|models``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import backend, write_config
from tests.unit.test_config import GOOD


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    return subprocess.run([sys.executable, "-m", "router", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=60)


def test_cli_check_reports_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("provider: openai_compatible", "provider: nope"))
    result = run_cli("check", "--config", str(bad), env={"GPU_BOX_KEY": "x"})
    assert result.returncode == 1
    assert f"{bad}:9: backends[0].provider: unknown provider 'nope'" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    result = run_cli("check", "--config", str(good), env={"GPU_BOX_KEY": "x"})
    assert result.returncode == 0 and "OK" in result.stdout


def test_serve_refuses_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  prot: 1\n")
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 1
    assert "bad.yaml:2: server.prot: unknown key" in result.stderr
    assert "Router listening" not in result.stdout


def test_shipped_config_is_valid():
    root = Path(__file__).resolve().parents[2]
    result = run_cli("check", "--config", str(root / "config.yaml"), cwd=root)
    assert result.returncode == 0, result.stderr


def test_cli_models_lists_each_backend(upstreams, tmp_path):
    up = upstreams("alpha", models=["m1", "m2"])
    cfg = write_config(tmp_path / "c.yaml", {
        "backends": [backend("alpha", up), {"name": "down", "provider": "openai_compatible",
                                            "base_url": "http://127.0.0.1:9", "models": ["x"]}],
        "aliases": {"fast": "m1"}})
    result = subprocess.run([sys.executable, "-m", "router", "models", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "alpha: m1, m2" in lines
    assert any(line.startswith("down: unavailable: ") for line in lines)
    assert "alias fast -> m1" in lines


def test_serve_refuses_an_open_router_off_loopback(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", {"backends": []})
    result = run_cli("serve", "--config", str(cfg), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 1
    assert "config error:" in result.stderr and "auth:" in result.stderr
    assert "not a loopback address" in result.stderr and "auth: {open: true}" in result.stderr


def test_serve_says_it_is_open_and_warns_off_loopback(tmp_path):
    from router.testing import free_port

    cfg = write_config(tmp_path / "c.yaml", {"auth": {"open": True}, "backends": []})
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(cfg),
                             "--host", "0.0.0.0", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(10)
    text = "".join(lines)
    assert f"Router listening on http://0.0.0.0:{port}" in text
    assert "no client authentication" in text
    assert "WARNING" in text and "not a loopback address" in text
