"""The benchmark's report: ratios, targets, the markdown tables, docs/performance.md."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
DOC_BEGIN = "<!-- bench:results:begin -->"
DOC_END = "<!-- bench:results:end -->"


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def ratios(results: dict[str, dict[str, Any]], concurrency: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, by_target in results.items():
        direct = by_target.get("direct")
        router = by_target.get("router")
        if not direct or not router:
            continue
        entry: dict[str, Any] = {
            "router_over_direct_rps": router["rps"] / direct["rps"] if direct["rps"] else None,
            "router_added_p50_ms": router["p50_ms"] - direct["p50_ms"],
            "router_added_p99_ms": router["p99_ms"] - direct["p99_ms"],
        }
        floor = by_target.get("passthrough")
        if floor:
            entry["router_over_passthrough_rps"] = router["rps"] / floor["rps"] if floor["rps"] else None
            entry["passthrough_added_p50_ms"] = floor["p50_ms"] - direct["p50_ms"]
            entry["passthrough_added_p99_ms"] = floor["p99_ms"] - direct["p99_ms"]
        peer = by_target.get("litellm")
        if peer:
            entry["router_over_litellm_rps"] = router["rps"] / peer["rps"] if peer["rps"] else None
            entry["litellm_added_p50_ms"] = peer["p50_ms"] - direct["p50_ms"]
        keyed = by_target.get("router-keys")
        if keyed:  # a client key with rpm/tpm limits vs the open router, same run
            entry["keys_over_router_rps"] = keyed["rps"] / router["rps"] if router["rps"] else None
            entry["keys_added_p50_ms"] = keyed["p50_ms"] - router["p50_ms"]
            entry["keys_added_p99_ms"] = keyed["p99_ms"] - router["p99_ms"]
        if "ttfc_p50_ms" in router:
            entry["router_added_ttfc_p50_ms"] = router["ttfc_p50_ms"] - direct["ttfc_p50_ms"]
            entry["router_added_ttfc_p99_ms"] = router["ttfc_p99_ms"] - direct["ttfc_p99_ms"]
            entry["router_added_chunk_lag_p99_ms"] = router["chunk_lag_p99_ms"] - direct["chunk_lag_p99_ms"]
            entry["router_chunks_per_stream"] = router["chunks_per_stream"]
        out[name] = entry
    return out


def check_targets(results: dict[str, dict[str, Any]], rat: dict[str, Any], rss: dict[str, Any] | None,
                  eng: dict[str, Any] | None, chunks: int) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, better: str, unit: str) -> None:
        if value is None:
            checks.append({"target": name, "value": None, "limit": limit, "met": None, "note": "not measured"})
            return
        met = value < limit if better == "below" else value >= limit
        checks.append({"target": name, "value": value, "limit": limit, "unit": unit, "met": met,
                       "margin": (limit - value) if better == "below" else (value - limit)})

    c1 = rat.get("json-c1", {})
    add("added p50 latency, c=1 (ms)", c1.get("router_added_p50_ms"), 1.0, "below", "ms")
    add("added p99 latency, c=1 (ms)", c1.get("router_added_p99_ms"), 3.0, "below", "ms")
    c64 = rat.get("json-c64", {})
    add("throughput c=64 vs LiteLLM (x)", c64.get("router_over_litellm_rps"), 5.0, "above", "x")
    add("throughput c=64 vs pass-through floor", c64.get("router_over_passthrough_rps"), 0.8, "above", "")
    s1 = rat.get("stream-c1", {})
    add("added time to first chunk, c=1 (ms)", s1.get("router_added_ttfc_p50_ms"), 2.0, "below", "ms")
    add("added per-chunk lag p99, c=1 (ms) [no chunk held back]",
        s1.get("router_added_chunk_lag_p99_ms"), 2.0, "below", "ms")
    lost = s1.get("router_chunks_per_stream")
    if lost is not None:
        checks.append({"target": "every chunk arrives (chunks per stream)", "value": lost, "limit": chunks,
                       "met": lost >= chunks})
    if rss and rss.get("growth_after_warmup_mib") is not None:
        add("RSS growth after warm-up over 100k requests (MiB)", rss["growth_after_warmup_mib"], 1.0, "below", "MiB")
    else:
        checks.append({"target": "RSS growth after warm-up", "value": None, "met": None,
                       "note": "not measured (--rss-requests 0)"})
    ratio = (eng or {}).get("router_over_direct_tokens_per_s")
    if ratio is not None:
        add("local engine tokens/s vs direct", ratio, 0.95, "above", "")
    else:
        checks.append({"target": "local engine tokens/s vs direct", "value": None, "met": None,
                       "note": (eng or {}).get("skipped") or (eng or {}).get("target_note", "not measured")})
    return checks


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"Run {meta['date']} on {meta['machine']}; Python {meta['python']}, aiohttp {meta['aiohttp']}, "
        f"router at `{meta['commit']}`{', LiteLLM ' + meta['litellm'] if meta.get('litellm') else ''}.",
        f"Settings: {meta['rounds']} rounds x {meta['duration_s']:g} s (+{meta['warmup_s']:g} s warm-up) per "
        f"target and scenario, medians across rounds; streams of {meta['chunks']} chunks "
        f"{meta['chunk_delay_ms']:g} ms apart; {'proxies pinned to CPU ' + meta['proxy_cpus'] if meta['pinned'] else 'no CPU pinning'}.",
        "",
    ]
    if meta.get("litellm_note"):
        lines += [f"LiteLLM: {meta['litellm_note']}", ""]
    results = report["results"]
    lines += ["**Non-streaming** (chat completion, ~200-byte answer)", "",
              "| scenario | target | req/s | p50 ms | p90 ms | p99 ms | errors | proxy CPU µs/req |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, by_target in results.items():
        if not name.startswith("json"):
            continue
        for target, r in by_target.items():
            lines.append(f"| {name} | {target} | {fmt(r['rps'], 0)} | {fmt(r['p50_ms'])} | {fmt(r['p90_ms'])} | "
                         f"{fmt(r['p99_ms'])} | {r['errors']} | {fmt(r.get('cpu_us_per_req'), 0)} |")
    lines += ["", "**Streaming** (SSE)", "",
              "| scenario | target | streams/s | TTFC p50 ms | TTFC p99 ms | full stream p50 ms | "
              "chunk lag p50 ms | chunk lag p99 ms | chunks/stream | errors | proxy CPU µs/stream |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, by_target in results.items():
        if not name.startswith("stream"):
            continue
        for target, r in by_target.items():
            lines.append(
                f"| {name} | {target} | {fmt(r['rps'], 0)} | {fmt(r.get('ttfc_p50_ms'))} | {fmt(r.get('ttfc_p99_ms'))} | "
                f"{fmt(r.get('stream_p50_ms'))} | {fmt(r.get('chunk_lag_p50_ms'))} | {fmt(r.get('chunk_lag_p99_ms'))} | "
                f"{fmt(r.get('chunks_per_stream'), 1)} | {r['errors']} | {fmt(r.get('cpu_us_per_req'), 0)} |")
    lines += ["", "**Ratios** (router vs the others, same run)", "",
              "| scenario | router/direct req/s | router/pass-through req/s | router/LiteLLM req/s | "
              "router added p50 ms | router added p99 ms | pass-through added p50 ms | added TTFC p50 ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["ratios"].items():
        lines.append(
            f"| {name} | {fmt(r.get('router_over_direct_rps'))} | {fmt(r.get('router_over_passthrough_rps'))} | "
            f"{fmt(r.get('router_over_litellm_rps'), 1)} | {fmt(r.get('router_added_p50_ms'))} | "
            f"{fmt(r.get('router_added_p99_ms'))} | {fmt(r.get('passthrough_added_p50_ms'))} | "
            f"{fmt(r.get('router_added_ttfc_p50_ms'))} |")
    keyed = {name: r for name, r in report["ratios"].items() if "keys_over_router_rps" in r}
    if keyed:
        lines += ["", "**Client keys** (a key with rpm/tpm limits vs the open router, same run)", "",
                  "| scenario | keyed/open req/s | keyed added p50 ms | keyed added p99 ms |", "|---|---:|---:|---:|"]
        for name, r in keyed.items():
            lines.append(f"| {name} | {fmt(r.get('keys_over_router_rps'))} | {fmt(r.get('keys_added_p50_ms'))} | "
                         f"{fmt(r.get('keys_added_p99_ms'))} |")
    rss = report.get("rss")
    if rss:
        lines += ["", f"**Memory**: router RSS {fmt(rss['rss_start_mib'], 1)} MiB before, "
                      f"{fmt(rss['rss_after_warmup_mib'], 1)} MiB after the first 10k (warm-up), "
                      f"{fmt(rss['rss_final_mib'], 1)} MiB after {rss['requests']:,} requests "
                      f"(max {fmt(rss['rss_max_after_warmup_mib'], 1)}; growth after warm-up "
                      f"{fmt(rss['growth_after_warmup_mib'], 2)} MiB; {rss['errors']} errors; {rss['seconds']} s). "
                      "Samples every 10k: " + ", ".join(fmt(s["rss_mib"], 1) for s in rss["samples"]) + " MiB."]
    idle = report.get("rss_by_target")
    if idle:
        lines += ["", "RSS after the runs above: " + ", ".join(f"{k} {fmt(v, 0)} MiB" for k, v in idle.items()) + "."]
    eng = report.get("engines") or {}
    lines += ["", f"**Local engines**: {eng.get('summary') or ('skipped: ' + eng['skipped'] if 'skipped' in eng else '-')}"]
    lines += ["", "**Targets**", "", "| target | value | limit | met |", "|---|---:|---:|---|"]
    for c in report["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[c["met"]]
        note = f" ({c['note']})" if c.get("note") else ""
        lines.append(f"| {c['target']} | {fmt(c['value'])} | {fmt(c.get('limit'))} | {met}{note} |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{platform.system()} {platform.machine()}, {model}, {os.cpu_count()} cores{mem}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def update_doc(md: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Performance\n\n{DOC_BEGIN}\n{DOC_END}\n"
    if DOC_BEGIN not in text or DOC_END not in text:
        text += f"\n{DOC_BEGIN}\n{DOC_END}\n"
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    DOC.write_text(f"{head}{DOC_BEGIN}\n{md}{DOC_END}{tail}")


# -- main -------------------------------------------------------------------------------


