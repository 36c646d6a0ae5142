"""The benchmark, in one command: ``python -m bench.run`` (``--quick`` for a smoke run).

In the same run and in alternation, it measures the same load against:

* ``direct``       the cheap upstream itself (``bench.upstream``),
* ``passthrough``  a minimal aiohttp pass-through proxy (``bench.passthrough``): the floor,
* ``router``       the router, started as users start it (``python -m router serve``),
* ``router-keys``  the same router with a client key and rpm/tpm limits (docs/operations.md):
                   every request authenticated, admitted, its tokens counted from usage,
* ``litellm``      LiteLLM's proxy, if installed (see ``--litellm``): the peer.

Each scenario (streaming or not, at each concurrency) runs ``--rounds`` rounds; every
round measures every target once, in an order rotated per round, and the report gives
medians across rounds. On a machine with 2+ cores the proxies are pinned to one core and
the upstream and load generator to another (``--no-pin`` to turn off), so a proxy's
throughput is what one core of it gives.

Then it sends ``--rss-requests`` (100k by default) through the router and samples its RSS
every 10k, and runs the local-engine section (``bench.engines``) when it can.

Results: ``bench/results/<UTC time>.json`` and ``.md`` (and ``latest.*``); ``--update-docs``
also writes the tables into docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import engines
from bench.loadgen import LoadSpec, measure
from bench.procs import Target, cpu_seconds, find_litellm, litellm_version, rss_mib, start, stop
from bench.report import DOC, check_targets, fmt, git_commit, machine, markdown, ratios, update_doc
from router.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET_ORDER = ("direct", "passthrough", "router", "router-keys", "litellm")
RSS_BATCH = 10_000
LITELLM_KEY = "sk-bench-0123456789abcdef"  # LiteLLM's proxy refuses to start without one
ROUTER_KEY = "sk-prx-bench-0123456789abcdef"  # router-keys: limits far above what the load reaches


def scenario_name(stream: bool, concurrency: int) -> str:
    return f"{'stream' if stream else 'json'}-c{concurrency}"


def measure_target(target: Target, stream: bool, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    spec = LoadSpec(url=target.url, concurrency=concurrency, duration_s=args.duration,
                    warmup_s=args.warmup, stream=stream, chunks=args.chunks if stream else 0,
                    auth=target.auth)
    cpu_before = cpu_seconds(target.pid) if target.name != "direct" else None
    result = measure(spec)
    if cpu_before is not None:
        cpu_after = cpu_seconds(target.pid)
        if cpu_after is not None and result["completed_total"]:
            result["cpu_us_per_req"] = (cpu_after - cpu_before) / result["completed_total"] * 1e6
    return result


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in rounds[0]:
        values = [r.get(key) for r in rounds]
        if key == "errors":
            out[key] = sum(v or 0 for v in values)
        elif key != "error_samples":
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            out[key] = statistics.median(numbers) if numbers else None
    samples = [s for r in rounds for s in r.get("error_samples", [])]
    if samples:
        out["error_samples"] = samples[:5]
    return out


def run_matrix(targets: list[Target], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for stream in [m == "stream" for m in args.modes]:
        for concurrency in args.concurrency:
            name = scenario_name(stream, concurrency)
            rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            for r in range(args.rounds):
                shift = r % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    rounds[target.name].append(measure_target(target, stream, concurrency, args))
            results[name] = {}
            for target in targets:
                summary = median_of(rounds[target.name])
                summary["rounds"] = rounds[target.name]
                results[name][target.name] = summary
            line = "  ".join(
                f"{t.name} {results[name][t.name]['rps']:,.0f}/s p50 {fmt(results[name][t.name]['p50_ms'])}ms"
                for t in targets
            )
            print(f"  {name:<11} {line}", flush=True)
            for t in targets:
                if results[name][t.name]["errors"]:
                    print(f"    {t.name}: {results[name][t.name]['errors']} errors, e.g. "
                          f"{results[name][t.name].get('error_samples', [])[:2]}", flush=True)
    return results


def rss_check(router: Target, total: int, chunks: int) -> dict[str, Any]:
    """``total`` requests through the router (8 in 10 plain, 2 in 10 streamed) at
    concurrency 64, RSS sampled every 10k; the first 10k are the warm-up."""
    samples = [{"requests": 0, "rss_mib": rss_mib(router.pid)}]
    done = 0
    errors = 0
    started = time.monotonic()
    while done < total:
        batch = min(RSS_BATCH, total - done)
        plain = batch * 8 // 10
        for stream, count in ((False, plain), (True, batch - plain)):
            if count:
                result = measure(LoadSpec(url=router.url, auth=router.auth, concurrency=64, requests=count, stream=stream,
                                          chunks=chunks if stream else 0))
                errors += result["errors"]
        done += batch
        samples.append({"requests": done, "rss_mib": rss_mib(router.pid)})
    warm = samples[1]["rss_mib"] if len(samples) > 1 else samples[0]["rss_mib"]
    final = samples[-1]["rss_mib"]
    after_warm = [s["rss_mib"] for s in samples[1:] if s["rss_mib"] is not None]
    return {
        "requests": total,
        "errors": errors,
        "seconds": round(time.monotonic() - started, 1),
        "rss_start_mib": samples[0]["rss_mib"],
        "rss_after_warmup_mib": warm,
        "rss_final_mib": final,
        "rss_max_after_warmup_mib": max(after_warm) if after_warm else None,
        "growth_after_warmup_mib": (final - warm) if final is not None and warm is not None else None,
        "samples": samples,
    }


# -- report -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 round of 0.5 s, no RSS check (about 30 s)")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 3)")
    parser.add_argument("--duration", type=float, help="measured seconds per target and round (default 1.5)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds first (default 0.3)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated (default 1,16,64)")
    parser.add_argument("--modes", default="json,stream", help="json, stream or both (default)")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream (default 20)")
    parser.add_argument("--chunk-delay-ms", type=float, default=1.0, help="between chunks (default 1)")
    parser.add_argument("--targets", default=",".join(TARGET_ORDER),
                        help="subset of direct,passthrough,router,litellm")
    parser.add_argument("--litellm", help="the litellm executable (default: $BENCH_LITELLM, "
                        ".bench-litellm/bin/litellm, then PATH)")
    parser.add_argument("--rss-requests", type=int,
                        help="requests through the router for the RSS check (default 100000; 0 skips; "
                             "--quick skips unless given)")
    parser.add_argument("--no-pin", action="store_true", help="don't pin processes to CPUs")
    parser.add_argument("--no-engines", action="store_true", help="skip the local-engine section")
    parser.add_argument("--engine-tokens", type=int, default=1000, help="tokens per local-engine run")
    parser.add_argument("--engines-big", action="store_true",
                        help="also the ~100M-parameter GGUF in --quick runs (always in full runs)")
    parser.add_argument("--update-docs", action="store_true", help="write the tables into docs/performance.md")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (0.5 if args.quick else 1.5)
    args.warmup = args.warmup if args.warmup is not None else (0.2 if args.quick else 0.3)
    if args.rss_requests is None:
        args.rss_requests = 0 if args.quick else 100_000
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.targets = [t for t in args.targets.split(",") if t]
    args.engines_big = args.engines_big or not args.quick
    args.modes = [m for m in args.modes.split(",") if m in ("json", "stream")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pinned = not args.no_pin and (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")
    ncpu = os.cpu_count() or 1
    load_cpus: set[int] | None = {0} if pinned else None
    proxy_cpus: set[int] | None = {1} if pinned else None
    if pinned:
        os.sched_setaffinity(0, load_cpus)  # the load generator runs in this process
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "python": platform.python_version(),
        "aiohttp": __import__("aiohttp").__version__,
        "commit": git_commit(),
        "rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
        "concurrency": args.concurrency, "chunks": args.chunks, "chunk_delay_ms": args.chunk_delay_ms,
        "pinned": pinned, "proxy_cpus": "1" if pinned else "", "cpus": ncpu, "logs": str(workdir),
    }
    started = time.monotonic()
    try:
        targets: list[Target] = []
        up_port = free_port()
        upstream = start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(up_port),
                                      "--chunks", str(args.chunks), "--chunk-delay-ms", str(args.chunk_delay_ms)],
                         f"http://127.0.0.1:{up_port}/health", workdir, load_cpus)
        procs.append(upstream)
        up_url = f"http://127.0.0.1:{up_port}"
        if "direct" in args.targets:
            targets.append(Target("direct", up_url))
        if "passthrough" in args.targets:
            port = free_port()
            proc = start("passthrough", [sys.executable, "-m", "bench.passthrough", "--upstream", up_url,
                                         "--port", str(port)], f"http://127.0.0.1:{port}/health", workdir, proxy_cpus)
            procs.append(proc)
            targets.append(Target("passthrough", f"http://127.0.0.1:{port}", proc))
        if "router" in args.targets:
            port = free_port()
            config = workdir / "router.yaml"
            config.write_text(
                "server:\n  host: 127.0.0.1\n  port: %d\n"
                "backends:\n  - name: bench\n    provider: openai_compatible\n"
                "    base_url: %s\n    models: [\"bench-model\"]\n" % (port, up_url))
            proc = start("router", [sys.executable, "-m", "router", "serve", "--config", str(config)],
                         f"http://127.0.0.1:{port}/health/ready", workdir, proxy_cpus)
            procs.append(proc)
            targets.append(Target("router", f"http://127.0.0.1:{port}", proc))
        if "router-keys" in args.targets:
            port = free_port()
            config = workdir / "router-keys.yaml"
            config.write_text(
                "server:\n  host: 127.0.0.1\n  port: %d\n"
                "auth:\n  keys:\n    - {name: bench, key: %s, rpm: 1000000000, tpm: 1000000000000}\n"
                "backends:\n  - name: bench\n    provider: openai_compatible\n"
                "    base_url: %s\n    models: [\"bench-model\"]\n" % (port, ROUTER_KEY, up_url))
            proc = start("router-keys", [sys.executable, "-m", "router", "serve", "--config", str(config)],
                         f"http://127.0.0.1:{port}/health/ready", workdir, proxy_cpus)
            procs.append(proc)
            targets.append(Target("router-keys", f"http://127.0.0.1:{port}", proc, auth=ROUTER_KEY))
        if "litellm" in args.targets:
            executable = find_litellm(args.litellm)
            if executable is None:
                meta["litellm_note"] = ("not measured: LiteLLM is not installed (python -m venv .bench-litellm && "
                                        ".bench-litellm/bin/pip install 'litellm[proxy]', or pass --litellm)")
                print(f"LiteLLM {meta['litellm_note']}", flush=True)
            else:
                port = free_port()
                config = workdir / "litellm.yaml"
                config.write_text(
                    "model_list:\n  - model_name: bench-model\n    litellm_params:\n"
                    "      model: openai/bench-model\n      api_base: %s/v1\n      api_key: sk-bench\n"
                    "litellm_settings:\n  set_verbose: false\n  turn_off_message_logging: true\n"
                    "general_settings:\n  master_key: %s\n  disable_spend_logs: true\n" % (up_url, LITELLM_KEY))
                t0 = time.monotonic()
                try:
                    proc = start("litellm", [executable, "--config", str(config), "--host", "127.0.0.1",
                                             "--port", str(port), "--num_workers", "1"],
                                 f"http://127.0.0.1:{port}/health/liveliness", workdir, proxy_cpus,
                                 env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                                      "LITELLM_TELEMETRY": "False"}, timeout=120)
                except RuntimeError as exc:
                    meta["litellm_note"] = f"not measured: its proxy did not start ({str(exc)[:300]})"
                    print(f"LiteLLM {meta['litellm_note']}", flush=True)
                else:
                    procs.append(proc)
                    meta["litellm"] = litellm_version(executable)
                    meta["litellm_start_s"] = round(time.monotonic() - t0, 1)
                    targets.append(Target("litellm", f"http://127.0.0.1:{port}", proc, LITELLM_KEY))
        for target in targets:  # first requests (imports, pools, caches) are not measured
            for stream in (False, True):
                measure(LoadSpec(url=target.url, auth=target.auth, concurrency=8,
                                 requests=40 if target.name == "litellm" else 400, stream=stream))
        order = {name: i for i, name in enumerate(TARGET_ORDER)}
        targets.sort(key=lambda t: order[t.name])
        print(f"Measuring {', '.join(t.name for t in targets)}: {args.rounds} rounds x {args.duration:g} s, "
              f"concurrency {args.concurrency} (logs in {workdir})", flush=True)
        results = run_matrix(targets, args)
        rss_by_target = {t.name: rss_mib(t.pid) for t in targets if t.pid is not None}
        router = next((t for t in targets if t.name == "router"), None)
        rss = None
        if router is not None and args.rss_requests > 0:
            print(f"RSS check: {args.rss_requests:,} requests through the router...", flush=True)
            rss = rss_check(router, args.rss_requests, args.chunks)
        eng: dict[str, Any] | None = None
        if not args.no_engines:
            if pinned:
                # Engines run unpinned, as deployed: pinned to the load generator's core,
                # the router and the worker would share one core with generation itself.
                os.sched_setaffinity(0, set(range(ncpu)))
            eng = engines.run(args)
            if "skipped" in eng:
                print(f"Local engines: skipped: {eng['skipped']}", flush=True)
    finally:
        for proc in reversed(procs):
            stop(proc)
    rat = ratios(results, args.concurrency)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    report = {"meta": meta, "results": results, "ratios": rat, "rss": rss, "rss_by_target": rss_by_target,
              "engines": eng, "targets": check_targets(results, rat, rss, eng, args.chunks)}
    md = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stamp}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stamp}.md").write_text(md)
    (args.out / "latest.json").write_text(json.dumps(report, indent=2))
    (args.out / "latest.md").write_text(md)
    if args.update_docs:
        update_doc(md)
    print()
    print(md)
    print(f"Wrote {args.out / (stamp + '.json')} and .md in {meta['elapsed_s']} s"
          + (f"; updated {DOC.relative_to(ROOT)}" if args.update_docs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
