"""What commit-on-first-token adds to time to first token: ``python -m bench.commit_ttft [ROUNDS]``.

Two routers on CPU 1 against ``bench.upstream`` on CPU 0 (20 chunks a stream, 1 ms apart):
the default (a stream reaches the client with its first token, ``routing.commit_after_bytes``
16 KB) and ``commit_after_bytes: 0`` (the status line and headers go out as soon as the
backend's do). Rounds alternate the two (order rotated), 400 streams each at concurrency 1;
reported: the client's time to first chunk (p50, ms) and the router's CPU µs per stream,
medians over the rounds, and their ratios (commit / at once). See docs/routing.md.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from bench.loadgen import LoadSpec, measure
from bench.procs import cpu_seconds, start, stop
from router.testing import free_port


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    work = Path(tempfile.mkdtemp(prefix="commit-ttft-"))
    up_port = free_port()
    procs = [start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(up_port), "--chunks", "20",
                                "--chunk-delay-ms", "1"], f"http://127.0.0.1:{up_port}/health", work, {0})]
    targets = {}
    try:
        for name, commit in (("commit", 16384), ("at-once", 0)):
            port = free_port()
            cfg = work / f"{name}.yaml"
            cfg.write_text(f"server:\n  host: 127.0.0.1\n  port: {port}\n  log_level: warning\n"
                           f"routing:\n  commit_after_bytes: {commit}\nbackends:\n  - name: bench\n"
                           f"    provider: openai_compatible\n    base_url: http://127.0.0.1:{up_port}\n"
                           f"    models: [bench-model]\n")
            p = start(name, [sys.executable, "-m", "router", "serve", "--config", str(cfg)],
                      f"http://127.0.0.1:{port}/health/ready", work, {1})
            procs.append(p)
            targets[name] = (f"http://127.0.0.1:{port}", p)
        ttfc: dict[str, list[float]] = {n: [] for n in targets}
        cpu: dict[str, list[float]] = {n: [] for n in targets}
        for url, _ in targets.values():  # warm-up
            measure(LoadSpec(url=url, concurrency=1, requests=100, stream=True, chunks=20))
        for rnd in range(rounds):
            order = list(targets.items())
            order = order[rnd % 2:] + order[:rnd % 2]
            for name, (url, p) in order:
                before = cpu_seconds(p.pid)
                r = measure(LoadSpec(url=url, concurrency=1, requests=400, stream=True, chunks=20))
                assert r["errors"] == 0, (name, r)
                ttfc[name].append(r["ttfc_p50_ms"])
                cpu[name].append((cpu_seconds(p.pid) - before) / 400 * 1e6)
        for name in targets:
            print(f"{name}: ttfc p50 {statistics.median(ttfc[name]):.3f} ms "
                  f"(rounds {', '.join(f'{x:.3f}' for x in ttfc[name])}); CPU µs/stream {statistics.median(cpu[name]):.0f}")
        t_c, t_o = statistics.median(ttfc["commit"]), statistics.median(ttfc["at-once"])
        c_c, c_o = statistics.median(cpu["commit"]), statistics.median(cpu["at-once"])
        print(f"commit/at-once: ttfc {t_c / t_o:.3f} ({(t_c - t_o) * 1000:+.0f} µs); CPU {c_c / c_o:.3f} ({c_c - c_o:+.0f} µs)")
    finally:
        for p in procs:
            stop(p)


if __name__ == "__main__":
    main()
