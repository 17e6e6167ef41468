#!/usr/bin/env python3
"""Turns the results of bench/run.sh (Envoy benchmark JSON, microbenchmark JSONs) into
bench/RESULTS.md and prints the main table. Standard library only."""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ALG_ORDER = ["HS256", "ES256", "RS256", "EdDSA"]
# Targets (reported, never asserted).
TARGET_RPS_VS_B = 0.9
TARGET_P99_VS_B = 1.3
TARGET_WASM_NATIVE_ES256 = 2.5
TARGET_WASM_BYTES = 1_500_000  # 1.5 MB, decimal (the stricter reading; 1.5 MiB = 1,572,864)

GROUP_NAME = {
    "a": "(a) no auth filter",
    "b": "(b) Envoy jwt_authn",
    "c": "(c) Portcullis",
    "c0": "(c0) Portcullis, rule `requires: none`",
    "e": "(e) Envoy local_ratelimit",
}


def cmd_out(args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "(unavailable)"


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "(unknown)"


def mem_total():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "(unknown)"


def fmt_us(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def fmt_ns(ns):
    if ns >= 1_000_000:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1000:
        return f"{ns / 1000:.1f} µs"
    return f"{ns:.0f} ns"


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}×"


def fmt_int(n):
    return f"{n:,}"


# ---------------------------------------------------------------------------------


def envoy_rows(envoy):
    results = envoy["results"]
    by_key = {}
    for res in results.values():
        s = res["setup"]
        by_key[(s["group"], s["alg"], s["cached"], res["concurrency"])] = res

    def ref(group, alg, cached, conc):
        return by_key.get((group, alg, cached, conc))

    rows = []
    concs = sorted({r["concurrency"] for r in results.values()})
    algs = [a for a in ALG_ORDER if a in envoy["params"]["algs"]]
    for conc in concs:
        order = [("a", None, None), ("c0", None, None)]
        for alg in algs:
            for cached in (True, False):
                order += [("b", alg, cached), ("c", alg, cached)]
        order.append(("e", None, None))
        a = ref("a", None, None, conc)
        for group, alg, cached in order:
            res = ref(group, alg, cached, conc)
            if res is None:
                continue
            b = ref("b", alg, cached, conc) if group == "c" else None
            requests = sum(r["requests"] for r in res["runs"])
            allowed = None
            for r in res["runs"]:
                c = r["counters"]
                v = (c.get("wasmcustom.portcullis.requests.allowed") if group in ("c", "c0")
                     else c.get("http.ingress.jwt_authn.allowed") if group == "b"
                     else c.get("bench_rl.http_local_rate_limit.ok") if group == "e"
                     else c.get("http.ingress.downstream_rq_2xx"))
                allowed = (allowed or 0) + (v or 0)
            cache_hits = None
            if group == "b" and cached is not None:
                cache_hits = sum(r["counters"].get("http.ingress.jwt_authn.jwt_cache_hit", 0) for r in res["runs"])
            rows.append({
                "group": group, "alg": alg, "cached": cached, "conc": conc,
                "rps": res["rps"], "p50": res["p50_us"], "p99": res["p99_us"],
                "vs_a": res["rps"] / a["rps"] if a else None,
                "vs_b": res["rps"] / b["rps"] if b else None,
                "p99_vs_b": res["p99_us"] / b["p99_us"] if b else None,
                "requests": requests, "allowed": allowed, "cache_hits": cache_hits,
                "runs_rps": [r["rps"] for r in res["runs"]],
                "socket_errors": res["socket_errors"],
                "rss_warm": res["rss_kb_after_warmup"], "rss_end": res["rss_kb_end"],
            })
    return rows


def main_table(rows):
    head = ("| Setup | Alg | Cache | Workers | RPS (median) | p50 | p99 | RPS vs (a) | RPS vs (b) | p99 vs (b) "
            "| 2xx & allowed by the filter / wrk requests |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        cache = "—" if r["cached"] is None else ("cached" if r["cached"] else "uncached")
        verified = f"{fmt_int(r['allowed'])} / {fmt_int(r['requests'])}"
        if r["cache_hits"] is not None and r["cached"]:
            verified += f" ({fmt_int(r['cache_hits'])} jwt_cache_hit)"
        lines.append(
            f"| {GROUP_NAME[r['group']]} | {r['alg'] or '—'} | {cache} | {r['conc']} | {r['rps']:,.0f} "
            f"| {fmt_us(r['p50'])} | {fmt_us(r['p99'])} | {fmt_ratio(r['vs_a'])} | {fmt_ratio(r['vs_b'])} "
            f"| {fmt_ratio(r['p99_vs_b'])} | {verified} |")
    lines.append("| (d) Portcullis revocation + quota leases | — | — | — | not measured: feature not built yet | | | | | | |")
    lines.append("| (f) control-plane throughput | — | — | — | not measured: feature not built yet | | | | | | |")
    return "\n".join(lines)


def spread_table(rows):
    lines = ["| Setup | Alg | Cache | Workers | RPS of each run | socket errors |", "|---|---|---|---|---|---|"]
    for r in rows:
        cache = "—" if r["cached"] is None else ("cached" if r["cached"] else "uncached")
        lines.append(f"| {GROUP_NAME[r['group']]} | {r['alg'] or '—'} | {cache} | {r['conc']} | "
                     + ", ".join(f"{x:,.0f}" for x in r["runs_rps"]) + f" | {r['socket_errors']} |")
    return "\n".join(lines)


def memory_table(rows):
    concs = sorted({r["conc"] for r in rows})
    base = {r["conc"]: r for r in rows if r["group"] == "a"}
    lines = ["| Setup | Alg | Cache | " + " | ".join(f"Δ RSS, {c} worker{'s' if c > 1 else ''}" for c in concs)
             + (" | Δ per extra worker |" if len(concs) > 1 else " |"),
             "|---|---|---|" + "---|" * len(concs) + ("---|" if len(concs) > 1 else "")]
    keyed = {(r["group"], r["alg"], r["cached"], r["conc"]): r for r in rows}
    seen = []
    for r in rows:
        k = (r["group"], r["alg"], r["cached"])
        if r["group"] == "a" or k in seen:
            continue
        seen.append(k)
        deltas = []
        for c in concs:
            x = keyed.get(k + (c,))
            deltas.append(None if x is None or c not in base else x["rss_end"] - base[c]["rss_end"])
        cells = [("—" if d is None else f"{d / 1024:+.1f} MiB") for d in deltas]
        extra = ""
        if len(concs) > 1:
            if None in deltas:
                extra = " — |"
            else:
                per = (deltas[-1] - deltas[0]) / (concs[-1] - concs[0])
                extra = f" {per / 1024:+.1f} MiB |"
        cache = "—" if r["cached"] is None else ("cached" if r["cached"] else "uncached")
        lines.append(f"| {GROUP_NAME[r['group']]} | {r['alg'] or '—'} | {cache} | " + " | ".join(cells) + " |" + extra)
    base_line = ", ".join(f"{c} worker{'s' if c > 1 else ''}: {base[c]['rss_end'] / 1024:.1f} MiB"
                          for c in concs if c in base)
    return "\n".join(lines), base_line


# ---------------------------------------------------------------------------------


def micro(paths):
    """Per platform and algorithm, the best (lowest) of the rounds' median ns/op."""
    out = {}
    for p in paths:
        doc = json.loads(Path(p).read_text())
        plat = doc["platform"]
        for r in doc["results"]:
            cur = out.setdefault(plat, {}).setdefault(r["alg"], {"verify": [], "cache_hit": [], "token_bytes": r["token_bytes"]})
            cur["verify"].append(r["verify_ns"]["median"])
            cur["cache_hit"].append(r["cache_hit_ns"]["median"])
    return out


def micro_table(m):
    nat, wasm = m.get("native", {}), m.get("wasm32-wasip1", {})
    lines = ["| Alg | token bytes | native verify | wasm verify | wasm / native | native cache hit | wasm cache hit | wasm / native |",
             "|---|---|---|---|---|---|---|---|"]
    ratios = {}
    for alg in [a for a in ALG_ORDER if a in nat]:
        n, w = nat[alg], wasm.get(alg)
        nv, nc = min(n["verify"]), min(n["cache_hit"])
        if w:
            wv, wc = min(w["verify"]), min(w["cache_hit"])
            ratios[alg] = wv / nv
            lines.append(f"| {alg} | {n['token_bytes']} | {fmt_ns(nv)} | {fmt_ns(wv)} | {wv / nv:.2f}× "
                         f"| {fmt_ns(nc)} | {fmt_ns(wc)} | {wc / nc:.2f}× |")
        else:
            lines.append(f"| {alg} | {n['token_bytes']} | {fmt_ns(nv)} | — | — | {fmt_ns(nc)} | — | — |")
    return "\n".join(lines), ratios


def targets(rows, ratios, wasm_bytes):
    lines = ["| Target | Measured | Verdict |", "|---|---|---|"]
    missed = []

    def verdict(ok, miss_text):
        if ok:
            return "met"
        missed.append(miss_text)
        return f"**missed** ({miss_text})"

    for r in rows:
        if r["group"] != "c" or not r["cached"] or r["vs_b"] is None:
            continue
        label = f"{r['alg']}, {r['conc']} worker{'s' if r['conc'] > 1 else ''}"
        v = r["vs_b"]
        lines.append(f"| (c) cached RPS ≥ {TARGET_RPS_VS_B}× (b) cached, {label} | {v:.2f}× | "
                     + verdict(v >= TARGET_RPS_VS_B, f"RPS {label}: {v:.2f}×, {(TARGET_RPS_VS_B - v) / TARGET_RPS_VS_B * 100:.0f}% short")
                     + " |")
        p = r["p99_vs_b"]
        lines.append(f"| (c) cached p99 ≤ {TARGET_P99_VS_B}× (b) cached, {label} | {p:.2f}× | "
                     + verdict(p <= TARGET_P99_VS_B, f"p99 {label}: {p:.2f}×, {(p / TARGET_P99_VS_B - 1) * 100:.0f}% over")
                     + " |")
    if "ES256" in ratios:
        v = ratios["ES256"]
        lines.append(f"| wasm/native verify ≤ {TARGET_WASM_NATIVE_ES256}× for ES256 | {v:.2f}× | "
                     + verdict(v <= TARGET_WASM_NATIVE_ES256, f"ES256 wasm/native {v:.2f}×, {(v / TARGET_WASM_NATIVE_ES256 - 1) * 100:.0f}% over")
                     + " |")
    lines.append(f"| .wasm ≤ 1.5 MB | {wasm_bytes:,} bytes ({wasm_bytes / 1e6:.2f} MB) | "
                 + verdict(wasm_bytes <= TARGET_WASM_BYTES, f".wasm {wasm_bytes / 1e6:.2f} MB") + " |")
    return "\n".join(lines), missed


# ---------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--envoy-results", required=True, type=Path)
    p.add_argument("--micro", nargs="+", required=True)
    p.add_argument("--envoy", required=True)
    p.add_argument("--wasm", required=True, type=Path)
    p.add_argument("--wasm-bench", required=True, type=Path)
    p.add_argument("--rustc", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--started", required=True, type=int)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--analysis", type=Path)
    p.add_argument("--micro-ms", type=int, default=500)
    p.add_argument("--elapsed-s", type=int, help="override the measured duration (when regenerating)")
    args = p.parse_args()

    envoy = json.loads(args.envoy_results.read_text())
    prm = envoy["params"]
    rows = envoy_rows(envoy)
    m = micro(args.micro)
    mtable, ratios = micro_table(m)
    wasm_info = envoy.get("wasm") or {"bytes": args.wasm.stat().st_size, "sha256": "(not recorded)"}
    wasm_bytes = wasm_info["bytes"]
    ttable, missed = targets(rows, ratios, wasm_bytes)
    mem, mem_base = memory_table(rows)
    table = main_table(rows)
    elapsed = args.elapsed_s if args.elapsed_s is not None else int(time.time()) - args.started

    envoy_version = cmd_out([args.envoy, "--version"]).replace("\n", " ").strip()
    first = next(iter(envoy["results"].values()))
    # The per-setup paths live in a temporary work directory: show them generically.
    envoy_cmd = " ".join(
        "<setup>/" + Path(a).name if "/bench-run." in a else a for a in first["command"].split(" ")
    ).replace(f"--concurrency {first['concurrency']}", "--concurrency <1|2>")
    doc = f"""# Portcullis benchmark results

Generated by `bench/run.sh` (`make bench`); do not edit by hand: rerun it. The analysis at
the end is written by hand (bench/ANALYSIS.md) and included as is.

- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}
- Machine: {os.cpu_count()} CPUs (`nproc`: {cmd_out(['nproc'])}), {cpu_model()}, {mem_total()} RAM, {platform.system()} {platform.release()}.
  Shared with other builds while measuring: absolute numbers are noisy; compare the
  ratios, which come from setups measured interleaved in the same run.
- Envoy: `{envoy_version}`
- Rust for the filter: see `make build-wasm`; for the microbenchmark (both targets): `{cmd_out([args.rustc, '--version'])}`
- node (runs the wasm microbenchmark under WASI, V8): `{cmd_out([args.node, '--version'])}`, V8 `{cmd_out([args.node, '-p', 'process.versions.v8'])}`
- wrk: `{cmd_out(['sh', '-c', 'wrk -v 2>&1 | head -n1'])}`
- Filter: `{args.wasm}`: **{wasm_bytes:,} bytes**, sha256 `{wasm_info['sha256'][:16]}…` (the build the Envoys loaded)
- `bench/run.sh` took {elapsed // 60} min {elapsed % 60} s (Envoy part {envoy['elapsed_s']:.0f} s).

## How it was measured

Every setup is its own Envoy process (the same binary) with one listener whose only route
is a `direct_response` 200 (the upstream costs nothing), started with

    {envoy_cmd}

(`--concurrency` 1 or 2; ports chosen by Envoy: listener and admin on port 0). Load:

    {first['wrk_command']}

wrk always sends the setup's token (for (a) and (e) the {prm['algs'][0]} one, which no filter checks).
Per worker count, every setup gets a {prm['warmup_s']} s warm-up, then {prm['runs']} rounds of {prm['duration_s']} s
runs; each round runs every setup once, in an order rotated per round, so noise from the
rest of the machine spreads over all setups. Reported: the median over the runs of RPS, of
wrk's p50 and of its p99. The load generator shares the 2 cores with Envoy.

Before the warm-up each setup must answer 200 to the token and, where there is a JWT
filter, 401 to no token and to a forged signature. After every run the script checks
wrk's `Non-2xx or 3xx responses` (must be absent) and Envoy's counters over the run:
`http.ingress.downstream_rq_2xx` ≥ wrk's request count, no 1xx/3xx/4xx/5xx, and the
filter's own counters (`wasmcustom.portcullis.requests.allowed` for Portcullis,
`http.ingress.jwt_authn.allowed` for jwt_authn, `bench_rl.http_local_rate_limit.ok` for
local_ratelimit) ≥ the request count with nothing denied. Any failure stops the run.

Setups: (b) `jwt_authn` with the key inline (`local_jwks.inline_string`), `forward: true`
(Portcullis forwards the token too), and for "cached" `jwt_cache_config.jwt_cache_size:
{prm['jwt_cache_size']}`; (c) Portcullis with the same key inline (`jwks`), `algorithms` set to the one
algorithm, and for "uncached" `"verifiedTokenCache": {{"capacity": 0}}` (cached = the
default, capacity 4096, entries live ≤ 300 s); (e) `local_ratelimit` with a bucket of 10⁹
tokens refilled every second (never limits); (c0), a diagnostic: Portcullis with the same
provider but a rule `"requires": "none"` (the filter reads the headers and matches the
rule but checks no token), so (a) → (c0) → (c) splits the filter's cost into the wasm
filter's fixed per-request cost and the JWT work. Token claims: `iss`, `aud`, `sub`, `scope`,
`iat`, `exp` (1 day). Keys: tests/fixtures (ES256 `es256-a`, RS256 `rs256-a`, 2048-bit) and
bench/fixtures (HS256, Ed25519). Tokens are signed by `jsonwebtoken` (not by our code).

## Results

Medians of {prm['runs']} × {prm['duration_s']} s, wrk 1 thread, {prm['connections']} connections.
"RPS vs (b)" and "p99 vs (b)" compare Portcullis with jwt_authn for the same algorithm,
cache setting and worker count.

{table}

RPS of each measured run (spread):

{spread_table(rows)}

## Targets (reported, not asserted)

{ttable}

## Microbenchmark: `Provider::verify`

`bench/verify-bench`: `portcullis_core::jwt::Provider::verify` (parse, signature, claims)
with the bench provider configuration and token, timed with `std::time::Instant` in
batches (median batch; best of 2 rounds alternating native and wasm, {args.micro_ms} ms per
case and round). Native: x86_64, release profile of the filter (LTO, opt-level 3, no
target-cpu tuning). Wasm: the same source built for `wasm32-wasip1` with the same
compiler and profile, run under node's WASI (V8; Envoy 1.40 embeds a newer V8, so treat
the ratio as indicative). "cache hit" is `VerifiedTokenCache::get` for that token (what a
cached request costs instead of a verification). Note that the native column is our Rust
code, not Envoy's BoringSSL (which uses hand-written assembly for P-256 and RSA).

{mtable}

## Memory

Δ RSS = VmRSS of the setup's Envoy (from `/proc/<pid>/status`, after its runs) minus
VmRSS of setup (a) (no filter) with the same worker count; (a) itself: {mem_base}.
For Portcullis this is the whole cost of loading the filter: the V8 engine and one V8
isolate per worker plus the main thread's, the compiled module, the wasm linear memory
each VM has touched (including the verified-token cache, here holding one token) and
the filter's configuration; not the filter's heap alone. "Δ per extra worker" is the
difference between 2 and 1 workers, i.e. what each further worker adds. The .wasm file
is {wasm_bytes:,} bytes.

{mem}

## Not measured

- (d) revocation feed + quota leases: not measured: feature not built yet.
- (f) control-plane throughput: not measured: feature not built yet.
"""
    if args.analysis and args.analysis.exists():
        doc += "\n" + args.analysis.read_text()
    elif missed:
        doc += "\n## Missed targets\n\n" + "\n".join(f"- {x}" for x in missed) + "\n"
    args.out.write_text(doc)

    print()
    print(table)
    print()
    print(mtable)
    print()
    print(ttable)
    if missed:
        print("\nmissed targets: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
