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
# Targets (reported, never asserted): the performance issue's table.
TARGET_C0_VS_A = 0.85  # (c0) filter with a `requires: none` rule vs no filter
TARGET_RPS_VS_B = 0.9  # (c) cached vs jwt_authn cached
TARGET_P99_VS_B = 1.1
TARGET_D_VS_C = 0.95  # (d) and (d-lease) vs (c) cached
TARGET_UNCACHED_VS_B = {"ES256": 0.5, "RS256": 0.5, "EdDSA": 0.7}  # (c) uncached vs (b) uncached
TARGET_WASM_NATIVE_ES256 = 2.5
TARGET_WASM_BYTES = 1_000_000  # 1.0 MB, decimal
TARGET_CALLS_PER_REQUEST = 0.01  # (d): control-plane calls per request with quota leases

GROUP_NAME = {
    "a": "(a) no auth filter",
    "b": "(b) Envoy jwt_authn",
    "c": "(c) Portcullis",
    "c0": "(c0) Portcullis, rule `requires: none`",
    "e": "(e) Envoy local_ratelimit",
    "d": "(d) Portcullis + revocation feed + lease limit",
    "dr": "(d-feed) diagnostic: (c) + revocation feed only",
    "dl": "(d-lease) diagnostic: (c) + lease limit only",
    "dm": "(d-many) (c) + lease limit, wrk cycling over 1,000 subjects",
    "dn": "(d-near) (c) + lease limit, one subject, load paced at ~90 % of the limit",
    "t": "(t) Portcullis, API token (shared replica)",
    "u": "(u) (c) + audit log, default sampling",
    "h": "(h) Portcullis, HMAC-signed POST, 1 KiB body",
    "hj": "(hj) Portcullis, cached JWT, the same POST",
}
D_GROUPS = ("d", "dr", "dl", "dm", "dn")
TARGET_MEMORY_GROWTH_KB = 1024  # (m): VmRSS growth from 1 M requests to the last checkpoint
STORE_NAME = {"embedded": "embedded store", "redis": "Redis store", "memory": "memory store"}


def setup_name(group, store=None):
    name = GROUP_NAME[group]
    return f"{name} ({STORE_NAME.get(store, store)})" if store else name


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
        by_key[(s["group"], s["alg"], s["cached"], res["concurrency"], s.get("store"))] = res

    def ref(group, alg, cached, conc, store=None):
        return by_key.get((group, alg, cached, conc, store))

    d_stores = sorted({r["setup"].get("store") for r in results.values() if r["setup"]["group"] == "d"},
                      key=lambda x: (x != "embedded", x))

    rows = []
    concs = sorted({r["concurrency"] for r in results.values()})
    algs = [a for a in ALG_ORDER if a in envoy["params"]["algs"]]
    for conc in concs:
        order = [("a", None, None, None), ("c0", None, None, None)]
        for alg in algs:
            for cached in (True, False):
                order += [("b", alg, cached, None), ("c", alg, cached, None)]
                if cached:
                    order += [("d", alg, cached, store) for store in d_stores]
                    order += [(g, alg, cached, store) for g in ("dr", "dl", "dm", "dn", "t", "u")
                              for store in d_stores]
        order += [("h", alg, None, None) for alg in algs] + [("hj", alg, True, None) for alg in algs]
        order.append(("e", None, None, None))
        a = ref("a", None, None, conc)
        for group, alg, cached, store in order:
            res = ref(group, alg, cached, conc, store)
            if res is None:
                continue
            b = ref("b", alg, cached, conc) if group == "c" else None
            c = ref("c", alg, cached, conc) if group in D_GROUPS + ("t", "u") else None
            requests = sum(r["requests"] for r in res["runs"])
            allowed = None
            for r in res["runs"]:
                cnt = r["counters"]
                v = (cnt.get("wasmcustom.portcullis.requests.allowed") if group in ("c", "c0", "t", "u", "h", "hj") + D_GROUPS
                     else cnt.get("http.ingress.jwt_authn.allowed") if group == "b"
                     else cnt.get("bench_rl.http_local_rate_limit.ok") if group == "e"
                     else cnt.get("http.ingress.downstream_rq_2xx"))
                allowed = (allowed or 0) + (v or 0)
            cache_hits = None
            if group == "b" and cached is not None:
                cache_hits = sum(r["counters"].get("http.ingress.jwt_authn.jwt_cache_hit", 0) for r in res["runs"])
            lim = None
            if group in D_GROUPS:
                def total(name, runs=res["runs"]):
                    return sum(r["counters"].get(name, 0) for r in runs)
                limit_name = (envoy["params"].get("d_limit") or {}).get("name", "bench")
                served = total("wasmcustom.portcullis.requests.allowed")
                calls = total("wasmcustom.portcullis.ratelimit.calls")
                releases = total("wasmcustom.portcullis.ratelimit.release_calls")
                lim = {
                    "served": served,
                    "two_xx": total("http.ingress.downstream_rq_2xx"),
                    "limit_allowed": total(f"wasmcustom.portcullis.ratelimit.{limit_name}.allowed"),
                    "calls": calls, "release_calls": releases,
                    "lease_grants": total("wasmcustom.portcullis.ratelimit.lease_grants"),
                    "calls_per_request": (calls + releases) / served if served else None,
                    "poll_ok": total("wasmcustom.portcullis.revocation.poll_ok"),
                    "poll_failed": total("wasmcustom.portcullis.revocation.poll_failed"),
                    "overdue": total("wasmcustom.portcullis.guard.overdue"),
                    "unavailable": total("wasmcustom.portcullis.guard.control_plane_unavailable"),
                    "parked": total("wasmcustom.portcullis.requests.parked"),
                    # (d-near) is paced, so its RPS says nothing against (c).
                    "vs_c": res["rps"] / c["rps"] if c and group != "dn" else None,
                    "p99_vs_c": res["p99_us"] / c["p99_us"] if c and group != "dn" else None,
                    "limited": total(f"wasmcustom.portcullis.ratelimit.{limit_name}.denied"),
                }
                near = envoy["params"].get("near_limit")
                if group == "dn" and near:
                    seconds = envoy["params"]["duration_s"] * len(res["runs"])
                    lim["load_of_limit"] = served / (near["limit"] * seconds) if seconds else None
            rows.append({
                "group": group, "alg": alg, "cached": cached, "conc": conc, "store": store, "limit": lim,
                "rps": res["rps"], "p50": res["p50_us"], "p99": res["p99_us"],
                "vs_a": res["rps"] / a["rps"] if a else None,
                "vs_c": res["rps"] / c["rps"] if c and group in ("t", "u") else None,
                "p99_vs_c": res["p99_us"] / c["p99_us"] if c and group in ("t", "u") else None,
                "audit": ({k: sum(r["counters"].get(f"wasmcustom.portcullis.audit.{k}", 0) for r in res["runs"])
                           for k in ("recorded", "sampled_out", "sent", "dropped", "send_failed")}
                          if group == "u" else None),
                "vs_b": res["rps"] / b["rps"] if b and group == "c" else None,
                "p99_vs_b": res["p99_us"] / b["p99_us"] if b and group == "c" else None,
                "requests": requests, "allowed": allowed, "cache_hits": cache_hits,
                "runs_rps": [r["rps"] for r in res["runs"]],
                "socket_errors": res["socket_errors"],
                "rss_warm": res["rss_kb_after_warmup"], "rss_end": res["rss_kb_end"],
            })
    return rows


def api_token_table(rows):
    """(t) against (c) cached with the same algorithm, same run."""
    trows = [r for r in rows if r["group"] == "t"]
    if not trows:
        return ""
    lines = ["", "API tokens (t) against the cached JWT path (c) of the same run:", "",
             "| Setup | Workers | RPS (median) | p99 | RPS vs (c) cached | p99 vs (c) cached |",
             "|---|---|---|---|---|---|"]
    for r in trows:
        lines.append(f"| {setup_name(r['group'], r.get('store'))} | {r['conc']} | {r['rps']:,.0f} | {fmt_us(r['p99'])} "
                     f"| {fmt_ratio(r.get('vs_c'))} | {fmt_ratio(r.get('p99_vs_c'))} |")
    return "\n".join(lines)


def audit_table(rows):
    """(u) against (c) cached with the same algorithm, same run (target: at least 0.95x)."""
    urows = [r for r in rows if r["group"] == "u"]
    if not urows:
        return ""
    lines = ["", "Audit log (u) against the same setup without it, (c) cached, same run (target >= 0.95x):", "",
             "| Setup | Workers | RPS (median) | p99 | RPS vs (c) cached | p99 vs (c) cached "
             "| recorded / sampled out / sent / dropped |",
             "|---|---|---|---|---|---|---|"]
    for r in urows:
        a = r["audit"] or {}
        counts = " / ".join(fmt_int(a.get(k)) for k in ("recorded", "sampled_out", "sent", "dropped"))
        lines.append(f"| {setup_name(r['group'], r.get('store'))} | {r['conc']} | {r['rps']:,.0f} | {fmt_us(r['p99'])} "
                     f"| {fmt_ratio(r.get('vs_c'))} | {fmt_ratio(r.get('p99_vs_c'))} | {counts} |")
    return "\n".join(lines)


def hmac_table(rows):
    """(h) against (hj): the same 1 KiB POST, signed or with a cached JWT, same run."""
    jwt = {(r["alg"], r["conc"]): r for r in rows if r["group"] == "hj"}
    lines = ["", "Signed requests (h) against the cached JWT path with the same POST (hj), same run:", "",
             "| Workers | (h) RPS | (h) p99 | (hj) RPS | (hj) p99 | RPS (h)/(hj) | p99 (h)/(hj) |",
             "|---|---|---|---|---|---|---|"]
    for h in (r for r in rows if r["group"] == "h"):
        j = jwt.get((h["alg"], h["conc"]))
        if j is None:
            continue
        lines.append(f"| {h['conc']} | {h['rps']:,.0f} | {fmt_us(h['p99'])} | {j['rps']:,.0f} | {fmt_us(j['p99'])} "
                     f"| {fmt_ratio(h['rps'] / j['rps'])} | {fmt_ratio(h['p99'] / j['p99'])} |")
    return "\n".join(lines) if len(lines) > 5 else ""


def main_table(rows, cp=None, params=None):
    head = ("| Setup | Alg | Cache | Workers | RPS (median) | p50 | p99 | RPS vs (a) | RPS vs (b) | p99 vs (b) "
            "| 2xx & allowed by the filter / wrk requests |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        cache = "—" if r["cached"] is None else ("cached" if r["cached"] else "uncached")
        verified = f"{fmt_int(r['allowed'])} / {fmt_int(r['requests'])}"
        if r["cache_hits"] is not None and r["cached"]:
            verified += f" ({fmt_int(r['cache_hits'])} jwt_cache_hit)"
        lines.append(
            f"| {setup_name(r['group'], r.get('store'))} | {r['alg'] or '—'} | {cache} | {r['conc']} | {r['rps']:,.0f} "
            f"| {fmt_us(r['p50'])} | {fmt_us(r['p99'])} | {fmt_ratio(r['vs_a'])} | {fmt_ratio(r['vs_b'])} "
            f"| {fmt_ratio(r['p99_vs_b'])} | {verified} |")
    if not any(r["group"] == "d" for r in rows):
        lines.append(f"| (d) Portcullis revocation + quota leases | — | — | — | not measured: {not_measured_why(params)} "
                     "| | | | | | |")
    if cp:
        lines.append("| (f) control-plane throughput | — | — | — | see [(f) below](#f-control-plane-throughput) | | | | | | |")
    else:
        lines.append(f"| (f) control-plane throughput | — | — | — | not measured: {not_measured_why(params)} | | | | | | |")
    return "\n".join(lines)


def not_measured_why(params):
    if params is not None and "d_limit" not in params:
        return "results from a bench run before (d)/(f) existed"
    return "no control-plane binary given to bench/envoy_bench.py"


def fmt_calls(x):
    return "—" if x is None else f"{x:.4f}"


def shape_section(envoy, rows):
    """The headline rows measured again with fewer wrk connections per worker, beside
    the same ratio at the main run's connection count."""
    shape = envoy.get("shape")
    if not shape or not shape.get("results"):
        return ""
    per_worker = shape["connections_per_worker"]
    srows = envoy_rows({"results": shape["results"], "params": envoy["params"]})
    main = {(r["group"], r["alg"], r["cached"], r["conc"], r["store"]): r for r in rows}

    def ratio(r):
        if r is None:
            return None, None, ""
        if r["group"] == "c0":
            return r["vs_a"], None, "RPS vs (a)"
        if r["group"] == "c":
            return r["vs_b"], r["p99_vs_b"], "RPS, p99 vs (b)"
        if r["group"] == "d":
            return r["limit"]["vs_c"], r["limit"]["p99_vs_c"], "RPS, p99 vs (c)"
        return r["vs_a"], None, "RPS vs (a)"

    def fmt(v, p):
        return fmt_ratio(v) + (f", {fmt_ratio(p)}" if p is not None else "")

    conns = envoy["params"]["connections"]
    lines = [f"| Setup | Alg | Workers | Connections | RPS (median) | p99 | ratio | ratio at {conns} connections |",
             "|" + "---|" * 8]
    for r in srows:
        v, p, what = ratio(r)
        mv, mp, _ = ratio(main.get((r["group"], r["alg"], r["cached"], r["conc"], r["store"])))
        cache = " cached" if r["cached"] else ""
        lines.append(f"| {setup_name(r['group'], r.get('store'))} | {(r['alg'] or '—') + cache} | {r['conc']} "
                     f"| {per_worker * r['conc']} | {r['rps']:,.0f} | {fmt_us(r['p99'])} | {what}: {fmt(v, p)} "
                     f"| {fmt(mv, mp)} |")
    return f"""
### Load shape: {per_worker} connections per worker

The headline rows again, in their own interleaved rounds (same warm-up, rounds and checks),
with wrk holding {per_worker} connections per Envoy worker instead of {conns}, so a ratio
that holds in both is not an artefact of one load shape. Fewer connections mean less
queueing in Envoy, so latencies are lower and RPS depends more on per-request cost.

{chr(10).join(lines)}
"""


def profile_section(path):
    """(p): where the Envoy process's CPU goes per request, from bench/profile.py."""
    if not path or not path.exists():
        return ""
    doc = json.loads(path.read_text())
    return f"""
### (p) Profile: CPU per request by code object

`bench/profile.py` (also `make bench-profile`): one Envoy per setup with 1 worker, loaded
by wrk as above, while `perf record -e cpu-clock` samples that Envoy process alone; the
samples are grouped by the code they ran in. `envoy` is the Envoy binary: its HTTP path,
the proxy-wasm host functions and the V8 runtime (V8's builtins are part of the binary,
which is stripped, so there is no finer split); `wasm/JIT` is code V8 generated, i.e.
the filter's compiled wasm. CPU µs per request = samples / frequency / requests served
while perf sampled. The setups run one after another, rotated per round.

{doc["markdown"]}
"""


def d_table(rows):
    """(d): the rate-limit and revocation path's own numbers."""
    drows = [r for r in rows if r["group"] in D_GROUPS]
    if not drows:
        return None
    lines = ["| Setup | Store | Alg | Workers | RPS (median) | p50 | p99 | RPS vs (a) | RPS vs (c) | p99 vs (c) "
             "| control-plane calls / request (lease + release) | lease grants "
             "| `ratelimit.bench.allowed` / served (filter allowed) / 2xx / wrk requests | feed polls ok / failed |",
             "|" + "---|" * 14]
    for r in drows:
        lim = r["limit"]
        calls = f"**{fmt_calls(lim['calls_per_request'])}** ({fmt_int(lim['calls'])} + {fmt_int(lim['release_calls'])})"
        if r["group"] == "dr":
            calls = "— (no limit)"
        if r["group"] == "dn" and lim.get("load_of_limit") is not None:
            calls += f"; load {lim['load_of_limit'] * 100:.0f} % of the limit, {fmt_int(lim['limited'])} refused (429)"
        polls = "— (no feed)" if r["group"] in ("dl", "dm", "dn") else f"{fmt_int(lim['poll_ok'])} / {fmt_int(lim['poll_failed'])}"
        rl_check = (f"{fmt_int(lim['limit_allowed'])} / " if r["group"] != "dr" else "— / ")
        lines.append(
            f"| {GROUP_NAME[r['group']].split(' ', 1)[0]} | {STORE_NAME.get(r['store'], r['store'])} | {r['alg']} | {r['conc']} "
            f"| {r['rps']:,.0f} | {fmt_us(r['p50'])} "
            f"| {fmt_us(r['p99'])} | {fmt_ratio(r['vs_a'])} | {fmt_ratio(lim['vs_c'])} | {fmt_ratio(lim['p99_vs_c'])} "
            f"| {calls} | {fmt_int(lim['lease_grants'])} "
            f"| {rl_check}{fmt_int(lim['served'])} / {fmt_int(lim['two_xx'])} / {fmt_int(r['requests'])} "
            f"| {polls} |")
    return "\n".join(lines)


CP_ENDPOINT_NAME = {"healthz": "`GET /healthz` (baseline)", "lease": "`POST /v1/ratelimit`, one lease ask",
                    "feed": "`GET /v1/feed?after=0` (snapshot)",
                    "feed_delta": "`GET /v1/feed?after=<head>` (poll, nothing new)"}
CP_ENDPOINTS = ("healthz", "lease", "feed", "feed_delta")


def cp_rows(cp):
    res = cp["results"]
    rows = []
    stores = sorted({r["store"] for r in res.values()}, key=lambda x: (x != "embedded", x))
    for store in stores:
        base = res.get(f"{store}-healthz")
        for ep in CP_ENDPOINTS:
            r = res.get(f"{store}-{ep}")
            if r is None:
                continue
            rows.append({
                "store": store, "endpoint": ep, "rps": r["rps"], "p50": r["p50_us"], "p99": r["p99_us"],
                "vs_base": r["rps"] / base["rps"] if base else None,
                "p99_vs_base": r["p99_us"] / base["p99_us"] if base else None,
                "requests": sum(x["requests"] for x in r["runs"]),
                "answered": sum(x["counters"]["answered_2xx"] for x in r["runs"]),
                "granted": (sum(x["counters"]["leases_granted"] for x in r["runs"]) if ep == "lease" else None),
                "runs_rps": [x["rps"] for x in r["runs"]], "socket_errors": r["socket_errors"],
                "rss": r.get("rss_kb_end"),
            })
    return rows


def cp_table(rows):
    lines = ["| Store | Endpoint | RPS (median) | p50 | p99 | RPS vs `/healthz` | p99 vs `/healthz` "
             "| 2xx counted by the control plane / wrk requests |",
             "|" + "---|" * 8]
    for r in rows:
        check = f"{fmt_int(r['answered'])} / {fmt_int(r['requests'])}"
        if r["granted"] is not None:
            check += f" ({fmt_int(r['granted'])} leases granted, 0 refused)"
        lines.append(f"| {STORE_NAME.get(r['store'], r['store'])} | {CP_ENDPOINT_NAME[r['endpoint']]} | {r['rps']:,.0f} "
                     f"| {fmt_us(r['p50'])} | {fmt_us(r['p99'])} | {fmt_ratio(r['vs_base'])} "
                     f"| {fmt_ratio(r['p99_vs_base'])} | {check} |")
    return "\n".join(lines)


def spread_table(rows):
    lines = ["| Setup | Alg | Cache | Workers | RPS of each run | socket errors |", "|---|---|---|---|---|---|"]
    for r in rows:
        cache = "—" if r["cached"] is None else ("cached" if r["cached"] else "uncached")
        lines.append(f"| {setup_name(r['group'], r.get('store'))} | {r['alg'] or '—'} | {cache} | {r['conc']} | "
                     + ", ".join(f"{x:,.0f}" for x in r["runs_rps"]) + f" | {r['socket_errors']} |")
    return "\n".join(lines)


def cp_spread_table(rows):
    lines = ["| Store | Endpoint | RPS of each run | socket errors |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {STORE_NAME.get(r['store'], r['store'])} | {CP_ENDPOINT_NAME[r['endpoint']]} | "
                     + ", ".join(f"{x:,.0f}" for x in r["runs_rps"]) + f" | {r['socket_errors']} |")
    return "\n".join(lines)


def summary_df(rows, crow):
    """Generated sentences on (d) and (f) (so they always match the tables above)."""
    out = []
    drows = [r for r in rows if r["group"] == "d"]
    if drows:
        cpr = [r["limit"]["calls_per_request"] for r in drows if r["limit"]["calls_per_request"] is not None]
        worst = max(cpr) if cpr else None
        if worst is not None:
            verdict = "met" if worst <= TARGET_CALLS_PER_REQUEST else "**missed**"
            out.append(f"- (d) control-plane calls per request: {min(cpr):.4f}–{worst:.4f} across "
                       f"{len(drows)} cells (target ≤ {TARGET_CALLS_PER_REQUEST}: {verdict}, "
                       f"{worst / TARGET_CALLS_PER_REQUEST * 100:.0f}% of the budget in the worst cell).")
        vc = [r["limit"]["vs_c"] for r in drows if r["limit"]["vs_c"] is not None]
        va = [r["vs_a"] for r in drows if r["vs_a"] is not None]
        pc = [r["limit"]["p99_vs_c"] for r in drows if r["limit"]["p99_vs_c"] is not None]
        if vc:
            vs_a = f" (vs (a): {min(va):.2f}–{max(va):.2f}×)" if va else ""
            out.append(f"- (d) RPS vs (c) of the same algorithm and worker count: {min(vc):.2f}–{max(vc):.2f}×"
                       f"{vs_a}; p99 vs (c): {min(pc):.2f}–{max(pc):.2f}×.")
        bad = [r for r in drows if r["limit"]["limit_allowed"] != r["limit"]["served"]]
        out.append("- (d) every request the filter allowed was counted by the lease limit "
                   "(`ratelimit.bench.allowed` = `requests.allowed` in every run)" if not bad else
                   f"- (d) `ratelimit.bench.allowed` differs from `requests.allowed` in {len(bad)} cells")
        # Cost per request over (c) from 1/RPS (includes wrk's share of the cores).
        for conc in sorted({r["conc"] for r in drows}):
            parts = []
            for r in [x for x in rows if x["group"] in D_GROUPS and x["conc"] == conc]:
                c_rps = r["rps"] / r["limit"]["vs_c"] if r["limit"]["vs_c"] else None
                if c_rps:
                    what = {"d": f"feed + lease ({STORE_NAME.get(r['store'], r['store'])})",
                            "dr": "feed only", "dl": "lease only",
                            "dm": "lease only, 1,000 subjects", "dn": None}[r["group"]]
                    if what is None:
                        continue
                    parts.append(f"{what} {1e6 / r['rps'] - 1e6 / c_rps:+.1f} µs")
            if parts:
                out.append(f"- Cost per request over (c) (1/RPS, {conc} worker{'s' if conc > 1 else ''}; "
                           f"noise of a few µs): " + ", ".join(parts) + ".")
        polls_failed = sum(r["limit"]["poll_failed"] for r in drows)
        out.append(f"- (d) revocation feed polls during the measured runs: "
                   f"{sum(r['limit']['poll_ok'] for r in drows):,} ok, {polls_failed:,} failed.")
    if crow:
        by = {(r["store"], r["endpoint"]): r for r in crow}
        for store in sorted({r["store"] for r in crow}, key=lambda x: (x != "embedded", x)):
            parts = []
            for ep in CP_ENDPOINTS[1:]:
                r = by.get((store, ep))
                if r and r["vs_base"] is not None:
                    parts.append(f"{CP_ENDPOINT_NAME[ep]} {r['vs_base']:.2f}× the RPS of `/healthz` "
                                 f"(p99 {r['p99_vs_base']:.2f}×)")
            if parts:
                out.append(f"- (f) {STORE_NAME.get(store, store)}: " + "; ".join(parts) + ".")
    return "\n".join(out)


def memory_table(rows):
    concs = sorted({r["conc"] for r in rows})
    base = {r["conc"]: r for r in rows if r["group"] == "a"}
    lines = ["| Setup | Alg | Cache | " + " | ".join(f"Δ RSS, {c} worker{'s' if c > 1 else ''}" for c in concs)
             + (" | Δ per extra worker |" if len(concs) > 1 else " |"),
             "|---|---|---|" + "---|" * len(concs) + ("---|" if len(concs) > 1 else "")]
    keyed = {(r["group"], r["alg"], r["cached"], r.get("store"), r["conc"]): r for r in rows}
    seen = []
    for r in rows:
        k = (r["group"], r["alg"], r["cached"], r.get("store"))
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
        lines.append(f"| {setup_name(r['group'], r.get('store'))} | {r['alg'] or '—'} | {cache} | " + " | ".join(cells) + " |" + extra)
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


def memory_growth(memory):
    """kB of VmRSS gained from the 1 M checkpoint (or the first after the warm-up) to the last."""
    samples = memory["samples"]
    base = next((x for x in samples if x["requests"] >= 1_000_000), samples[min(1, len(samples) - 1)])
    return samples[-1]["rss_kb"] - base["rss_kb"]


def memory_section(memory):
    if not memory:
        return ("\n## (m) Memory over a long run\n\nNot measured (`BENCH_MEMORY_REQUESTS=0`, "
                "or HS256 not among `BENCH_ALGS`).\n")
    rows = "\n".join(f"| {x['what']} | {x['requests']:,} | {x['rss_kb'] / 1024:.1f} MiB | "
                     f"{(x['rss_kb'] - memory['samples'][0]['rss_kb']) / 1024:+.1f} MiB |"
                     for x in memory["samples"])
    allowed = memory["counters"].get("wasmcustom.portcullis.requests.allowed", 0)
    return f"""
## (m) Memory over a long run

One Envoy (1 worker) with the (c) cached HS256 configuration (verified-token cache at its
default capacity, {memory['cache_capacity']:,} entries) under wrk cycling over {memory['tokens']:,} distinct
tokens (one subject each, minted by bench/envoy_bench.py), so the cache is full after the
first {memory['cache_capacity']:,} requests and every later miss evicts. wrk runs of at most 60 s, each
checked like the cells above (all 2xx, all allowed); VmRSS of the Envoy process read after
a warm-up and at each checkpoint. The filter allowed {allowed:,} requests in all. Took
{memory['elapsed_s']:.0f} s.

| When | Requests | VmRSS | Δ since the warm-up |
|---|---:|---:|---:|
{rows}
"""


def targets(rows, ratios, wasm_bytes, memory=None):
    lines = ["| Target | Measured | Verdict |", "|---|---|---|"]
    missed = []

    def verdict(ok, miss_text):
        if ok:
            return "met"
        missed.append(miss_text)
        return f"**missed** ({miss_text})"

    def workers(n):
        return f"{n} worker{'s' if n > 1 else ''}"

    def at_least(what, v, target):
        return (f"| {what} ≥ {target}× | {v:.2f}× | "
                + verdict(v >= target, f"{what}: {v:.2f}×, {(target - v) / target * 100:.0f}% short") + " |")

    for r in rows:
        if r["group"] == "c0" and r["vs_a"] is not None:
            lines.append(at_least(f"(c0) RPS vs (a), {workers(r['conc'])}", r["vs_a"], TARGET_C0_VS_A))
    for r in rows:
        if r["group"] == "c" and r["cached"] is False and r["vs_b"] is not None and r["alg"] in TARGET_UNCACHED_VS_B:
            lines.append(at_least(f"(c) uncached {r['alg']} RPS vs (b) uncached, {workers(r['conc'])}", r["vs_b"],
                                  TARGET_UNCACHED_VS_B[r["alg"]]))
    for r in rows:
        if r["group"] in ("d", "dl") and r["limit"]["vs_c"] is not None:
            name = "(d)" if r["group"] == "d" else "(d-lease)"
            lines.append(at_least(f"{name} RPS vs (c) cached, {STORE_NAME.get(r['store'], r['store'])}, "
                                  f"{workers(r['conc'])}", r["limit"]["vs_c"], TARGET_D_VS_C))
    for r in rows:
        if r["group"] != "c" or not r["cached"] or r["vs_b"] is None:
            continue
        label = f"{r['alg']}, {workers(r['conc'])}"
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
    for r in rows:
        if r["group"] not in ("d", "dm", "dn") or r["limit"]["calls_per_request"] is None:
            continue
        label = f"{STORE_NAME.get(r['store'], r['store'])}, {r['conc']} worker{'s' if r['conc'] > 1 else ''}"
        if r["group"] != "d":
            label = GROUP_NAME[r["group"]].split(" ", 1)[0] + ", " + label
        v = r["limit"]["calls_per_request"]
        lines.append(f"| (d) control-plane calls per request ≤ {TARGET_CALLS_PER_REQUEST}, {label} | {v:.4f} | "
                     + verdict(v <= TARGET_CALLS_PER_REQUEST,
                               f"calls/request {label}: {v:.4f}, {(v / TARGET_CALLS_PER_REQUEST - 1) * 100:.0f}% over")
                     + " |")
    if memory and len(memory["samples"]) >= 3:
        grow = memory_growth(memory)
        lines.append(f"| (m) VmRSS growth from 1 M requests to the last checkpoint ≤ {TARGET_MEMORY_GROWTH_KB // 1024} MiB "
                     f"| {grow / 1024:+.1f} MiB | "
                     + verdict(grow <= TARGET_MEMORY_GROWTH_KB, f"memory grew {grow / 1024:+.1f} MiB") + " |")
    lines.append(f"| .wasm ≤ {TARGET_WASM_BYTES / 1e6:.1f} MB | {wasm_bytes:,} bytes ({wasm_bytes / 1e6:.2f} MB) | "
                 + verdict(wasm_bytes <= TARGET_WASM_BYTES, f".wasm {wasm_bytes / 1e6:.2f} MB") + " |")
    return "\n".join(lines), missed


def df_sections(envoy, rows, dtable, crow, prm):
    """The text of (d) and (f): how they were measured, their tables, what is missing."""
    cp = envoy.get("control_plane")
    missing = []
    how = ""
    if dtable or cp:
        lim = prm.get("d_limit") or {}
        stores = ", ".join(STORE_NAME.get(x, x) for x in prm.get("cp_stores", []))
        redis = f" ({cp['redis_version'].split(' v=')[0]} v={cp['redis_version'].split(' v=')[1].split()[0]})" \
            if cp and cp.get("redis_version") and " v=" in cp["redis_version"] else ""
        binary = cp["binary"] if cp else "(see bench/run.sh)"
        if "/bench-run." in binary:
            binary = "<work dir>/" + Path(binary).name
        how = f"""
(d): Portcullis exactly as the (c) cached setup of the same algorithm, plus the revocation
feed (`"revocation": {{}}`, polled every second by one worker) and one quota-lease rate
limit applying to every request, `{json.dumps(lim)}` (a limit that never refuses: nothing
is denied, so the lease path is measured, not 429s), with `"controlPlane": {{"cluster":
"portcullis_control_plane", "authority": "control-plane", "timeoutMs": 500, "credential":
{{"env": "PORTCULLIS_FLEET_CREDENTIAL"}}}}` (every call carries the fleet credential, which
Envoy passes to the filter from its environment). The Envoy cluster
`portcullis_control_plane` points at a real control plane's internal listener (`{binary}`, release build,
default log level) started per store like tests/src/lib.rs does: {stores}{redis}; one
process per store for the whole run, shared by the (d) Envoys of both worker counts, and on
the same 2 cores. Beyond the checks above, every (d) run must show
`wasmcustom.portcullis.ratelimit.bench.allowed` = `wasmcustom.portcullis.requests.allowed`
(every allowed request spent a leased unit) and no `denied`/`unavailable_*` for the limit,
and each Envoy must have polled the feed successfully after its warm-up. "Calls per request"
= (Δ`ratelimit.calls` + Δ`ratelimit.release_calls`) / Δ`requests.allowed`, summed over the
measured runs. Two diagnostics split (c) → (d) on the first store: (d-feed) adds only the
revocation feed, (d-lease) only the lease limit (and `controlPlane`). (d-many) is
(d-lease) with HS256 tokens for 1,000 subjects (minted by bench/envoy_bench.py with the
HS256 bench key), wrk cycling over them with a Lua script: 1,000 counters, so each lease
serves fewer requests; compared with (c) HS256 cached. Its leases are released while the
other setups run, so each of its measured runs follows 1 s of unmeasured load that takes
them again: the run measures the steady state (renewals), not each subject's first lease
(about one call per subject, once). (d-near) is (d-lease) with one
subject and the limit `{json.dumps(prm.get("near_limit"))}`, and wrk paced by a Lua `delay()` of
{prm.get("near_delay_ms")} ms before each request on each of the {prm["connections"]} connections (at most
{prm["connections"] * 1000 // max(prm.get("near_delay_ms") or 1, 1):,} requests per second, about 90 % of the limit): leases are sized from what
remains of the limit, so they shrink as it nears. Refusals (429) are allowed there, up to
5 % of a run, and counted; its RPS is set by the pacing, so it has no ratio to (c).
"""
    else:
        missing.append(f"- (d) revocation feed + quota leases: not measured: {not_measured_why(prm)}.")
    d_section = ""
    if dtable:
        d_section = f"""### (d) Portcullis with the revocation feed and a quota-lease limit

Medians as above. "vs (c)" compares with Portcullis of the same algorithm, cache and
worker count without rate limit and feed, measured in the same rounds.

{dtable}

"""
    f_section = ""
    if cp:
        f_section = f"""
## (f) Control-plane throughput

wrk against the control plane directly (no Envoy), same wrk settings
(1 thread, {prm['connections']} connections, {prm['warmup_s']} s warm-up, medians of {prm['runs']} × {prm['duration_s']} s, every
(store, endpoint) cell once per round in a rotated order):

    {cp['wrk_command']}

`POST /v1/ratelimit` sends one lease ask per request, cycling over 4 counter keys with a
small wrk Lua script (`{{"asks":[{{"key":"bench-k<1..4>","limit":100000000,"unit":"second",
"op":"lease","maxLease":100,"holders":4,"ttlMs":2000}}]}}`); `GET /v1/feed` asks for a
snapshot's first part (what a new follower asks first; here the whole state: the store
holds one revoked token id, seeded before the run), `GET /v1/feed?cursor=<head>` is a
follower's poll when nothing changed (what each Envoy asks every second in steady state);
all of them with the fleet credential; `GET /healthz` of the same process is the
baseline (routing, the metrics/log middleware, no store). Every run is checked against
the control plane's own `/metrics`: all answers 2xx (`portcullis_http_requests_total` for
the route) and, for leases, every ask granted, none refused. The control plane logs each
`/v1/feed` request at info (the default level), `/healthz` and `/v1/ratelimit` at debug.
wrk, the control plane and Redis share the 2 cores, so compare the ratios to `/healthz`,
not the absolute numbers.

{cp_table(crow)}

RPS of each measured run:

{cp_spread_table(crow)}
"""
        skipped = cp.get("skipped") or {}
        for store, why in skipped.items():
            missing.append(f"- {STORE_NAME.get(store, store)} for (d) and (f): skipped ({why}).")
    else:
        missing.append(f"- (f) control-plane throughput: not measured: {not_measured_why(prm)}.")
    summary = summary_df(rows, crow)
    if summary:
        f_section += f"""
## (d) and (f) in this run (generated)

{summary}
"""
    not_measured = ("\n## Not measured\n\n" + "\n".join(missing) + "\n") if missing else ""
    return how, d_section, f_section, not_measured


def sync_table(sync):
    """(g): one row per state, medians over the rounds."""
    res = sync["results"]
    empty = res.get("empty")
    lines = ["| Revocation state | Pages received | Sync time from Envoy start | from Envoy ready | Envoy RSS after sync | Δ RSS vs empty | Control plane RSS |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in res.items():
        label = "empty" if name == "empty" else f"{r['revoked']:,} revoked ids + {r['users']:,} revoked users"
        delta = "—" if name == "empty" or not empty else f"+{(r['rss_kb'] - empty['rss_kb']) / 1024:.1f} MiB"
        cp_rss = f"{r['cp_rss_kb_end'] / 1024:.1f} MiB" if r.get("cp_rss_kb_end") else "—"
        lines.append(f"| {label} | {r['pages']:.0f} | {r['from_start_s']:.2f} s | {r['from_ready_s']:.2f} s | "
                     f"{r['rss_kb'] / 1024:.1f} MiB | {delta} | {cp_rss} |")
    return "\n".join(lines)


def sync_section(sync, prm):
    if not sync:
        return "\n## (g) A fresh Envoy syncing a large revocation state\n\nNot measured (needs the control plane and redis-server; `BENCH_SYNC_ENTRIES=0` skips it).\n"
    runs = "\n".join(
        f"| {name} | " + " | ".join(f"{x['from_ready_s']:.2f} s" for x in r["runs"]) + " |"
        for name, r in sync["results"].items()
    )
    rounds = max(len(r["runs"]) for r in sync["results"].values())
    return f"""
## (g) A fresh Envoy syncing a large revocation state

A fresh Envoy ({sync['workers']} workers; the filter with the bench provider, `controlPlane` with the
fleet credential and `"revocation": {{"pollIntervalMs": 1000, "timeoutMs": 5000}}`) starts against a
control plane (release build) on Redis and is timed until its filter has published the
replica (counter `wasmcustom.portcullis.revocation.snapshots_assembled` = 1 and the gauges
`revoked_entries` and `user_entries` equal to the seeded state, polled every 20 ms),
then its VmRSS is read. The large state ({sync['entries']:,} revoked token ids and {sync['entries']:,} revoked
users, seeded straight into Redis with pipelined ZADD/HSET, no feed entries) reaches a
follower only as a snapshot: parts of up to 5000 entries (what the filter asks for) that
one worker assembles privately, then the catch-up delta, then one publication to shared
data that every worker decodes. The empty state is the baseline measured in the same
run: Envoy's start-up, the filter's configuration, one empty snapshot. Each round starts
a new Envoy per state, the states interleaved; medians of {rounds} rounds. Δ RSS is what
the replica costs: the shared-data copy plus each worker's decoded copy (16-byte hashes
with an 8-byte value each) plus what the assembly left behind.

{sync_table(sync)}

Sync time from Envoy ready, each round:

| State | {" | ".join(f"round {i + 1}" for i in range(rounds))} |
|---|{"---:|" * rounds}
{runs}
"""


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
    p.add_argument("--profile", type=Path, help="profile (p) results written by bench/profile.py")
    args = p.parse_args()

    envoy = json.loads(args.envoy_results.read_text())
    prm = envoy["params"]
    rows = envoy_rows(envoy)
    m = micro(args.micro)
    mtable, ratios = micro_table(m)
    wasm_info = envoy.get("wasm") or {"bytes": args.wasm.stat().st_size, "sha256": "(not recorded)"}
    wasm_bytes = wasm_info["bytes"]
    ttable, missed = targets(rows, ratios, wasm_bytes, envoy.get("memory"))
    mem, mem_base = memory_table(rows)
    cp = envoy.get("control_plane")
    table = main_table(rows, cp, prm) + api_token_table(rows) + audit_table(rows) + hmac_table(rows)
    dtable = d_table(rows)
    crow = cp_rows(cp) if cp else []
    elapsed = args.elapsed_s if args.elapsed_s is not None else int(time.time()) - args.started

    envoy_version = cmd_out([args.envoy, "--version"]).replace("\n", " ").strip()
    first = next(iter(envoy["results"].values()), None) or {
        "command": "envoy -c <setup>/envoy.json --concurrency 1", "concurrency": 1,
        "wrk_command": "(no Envoy setup in this run: BENCH_GROUPS)"}
    # The per-setup paths live in a temporary work directory: show them generically.
    envoy_cmd = " ".join(
        "<setup>/" + Path(a).name if "/bench-run." in a else a for a in first["command"].split(" ")
    ).replace(f"--concurrency {first['concurrency']}", "--concurrency <1|2>")
    how_df, d_section, f_section, not_measured = df_sections(envoy, rows, dtable, crow, prm)
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
{how_df}
## Results

Medians of {prm['runs']} × {prm['duration_s']} s, wrk 1 thread, {prm['connections']} connections.
"RPS vs (b)" and "p99 vs (b)" compare Portcullis with jwt_authn for the same algorithm,
cache setting and worker count.

{table}

{d_section}{shape_section(envoy, rows)}
RPS of each measured run (spread):

{spread_table(rows)}
{f_section}{sync_section(envoy.get("feed_sync"), prm)}{memory_section(envoy.get("memory"))}{profile_section(args.profile)}
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

{not_measured}"""
    if args.analysis and args.analysis.exists():
        doc += "\n" + args.analysis.read_text()
    elif missed:
        doc += "\n## Missed targets\n\n" + "\n".join(f"- {x}" for x in missed) + "\n"
    args.out.write_text(doc)

    print()
    print(table)
    if dtable:
        print()
        print(dtable)
    if crow:
        print()
        print(cp_table(crow))
    if envoy.get("feed_sync"):
        print()
        print(sync_table(envoy["feed_sync"]))
    print()
    print(mtable)
    print()
    print(ttable)
    if missed:
        print("\nmissed targets: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
