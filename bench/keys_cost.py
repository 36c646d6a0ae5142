"""What client keys cost, as CPU per request: ``python -m bench.keys_cost [ROUNDS]``.

Three routers on CPU 1 against ``bench.upstream`` on CPU 0: open, keyed (a client key with
rpm and tpm far above the load), and open with ``log_level: warning`` (no request log
lines). Rounds alternate the three (order rotated), 2,000 whole answers then 400 streams of
20 chunks each at concurrency 1, and report each router's CPU µs per request (medians):
CPU time moves least on a shared machine. See docs/performance.md.
"""
import statistics
import sys
import tempfile
from pathlib import Path

from bench.loadgen import LoadSpec, measure
from bench.procs import cpu_seconds, start, stop
from router.testing import free_port

KEY = "sk-prx-bench-0123456789abcdef"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="keys-cost-"))
    up_port = free_port()
    procs = [start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(up_port), "--chunks", "20",
                                "--chunk-delay-ms", "0"], f"http://127.0.0.1:{up_port}/health", work, {0})]
    configs = {
        "open": "",
        "keyed": "auth:\n  keys:\n    - {name: bench, key: %s, rpm: 1000000000, tpm: 1000000000000}\n" % KEY,
        "open-nolog": "",
    }
    targets = {}
    try:
        for name, extra in configs.items():
            port = free_port()
            level = "  log_level: warning\n" if name == "open-nolog" else ""
            cfg = work / f"{name}.yaml"
            cfg.write_text(f"server:\n  host: 127.0.0.1\n  port: {port}\n{level}{extra}backends:\n  - name: bench\n"
                           f"    provider: openai_compatible\n    base_url: http://127.0.0.1:{up_port}\n    models: [bench-model]\n")
            p = start(name, [sys.executable, "-m", "router", "serve", "--config", str(cfg)],
                      f"http://127.0.0.1:{port}/health/ready", work, {1})
            procs.append(p)
            targets[name] = (f"http://127.0.0.1:{port}", p, KEY if name == "keyed" else None)
        res = {(n, s): [] for n in targets for s in (False, True)}
        for stream in (False, True):
            n = 400 if stream else 2000
            for name, (url, p, auth) in targets.items():
                measure(LoadSpec(url=url, concurrency=1, requests=200, stream=stream, chunks=20 if stream else 0, auth=auth))
            for rnd in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
                order = list(targets.items())
                order = order[rnd % 3:] + order[:rnd % 3]
                for name, (url, p, auth) in order:
                    before = cpu_seconds(p.pid)
                    r = measure(LoadSpec(url=url, concurrency=1, requests=n, stream=stream, chunks=20 if stream else 0, auth=auth))
                    assert r["errors"] == 0, (name, r)
                    res[(name, stream)].append((cpu_seconds(p.pid) - before) / n * 1e6)
        for (name, stream), v in res.items():
            print(f"{'stream' if stream else 'json'} {name}: CPU µs/req median {statistics.median(v):.0f} (rounds: {', '.join(f'{x:.0f}' for x in v)})")
        for stream in (False, True):
            o = statistics.median(res[("open", stream)]); k = statistics.median(res[("keyed", stream)]); nl = statistics.median(res[("open-nolog", stream)])
            print(f"{'stream' if stream else 'json'}: keyed/open CPU {k/o:.3f} (+{k-o:.0f} µs); open/open-nolog {o/nl:.3f} (+{o-nl:.0f} µs)")
    finally:
        for p in procs:
            stop(p)


if __name__ == "__main__":
    main()
