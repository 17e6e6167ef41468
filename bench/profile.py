#!/usr/bin/env python3
"""Where an Envoy's CPU time goes per request, split by code object (`make bench-profile`).

For each setup ((a) no filter, (c0) Portcullis with a rule that checks nothing, (c)
Portcullis cached HS256, (b) jwt_authn cached HS256, and optionally more), one Envoy with
1 worker is loaded by wrk while `perf record -e cpu-clock` samples that Envoy process
alone. Samples are grouped by what they ran in:

- `envoy`: the Envoy binary: Envoy's HTTP path, the proxy-wasm host functions and the
  V8 runtime (V8's builtins are embedded in the binary);
- `wasm/JIT`: code V8 generated at run time, i.e. the filter's compiled wasm (and its
  trampolines); perf sees it as anonymous memory;
- `kernel`, `libc` and the rest.

With `--control-plane`, (d-lease) joins: (c) plus one quota-lease limit on `sub`, leased
from a control plane on the embedded store (the control plane's own CPU is not counted).

Each group is reported as CPU µs per request (samples / frequency / requests), beside
(a), so a filter's cost splits into what it spends in its own code and what it costs
Envoy and V8 to run it. The Envoy binary is stripped, so there is no finer split inside
it; what the wasm code does per request is the microbenchmark's and the host-call
budget tests' subject.

Standard library only; needs `perf` (Debian package linux-perf) with cpu-clock sampling
allowed (perf_event_paranoid ≤ 2 for a process of the same user).
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import envoy_bench as eb  # noqa: E402

SETUPS = {
    "a": {"id": "a-none", "group": "a", "alg": None, "cached": None},
    "c0": {"id": "c0-portcullis-no-jwt", "group": "c0", "alg": None, "cached": None},
    "c": {"id": "c-portcullis-HS256-cached", "group": "c", "alg": "HS256", "cached": True},
    "b": {"id": "b-jwt_authn-HS256-cached", "group": "b", "alg": "HS256", "cached": True},
    # Needs --control-plane: (c) plus the quota-lease limit of (d), embedded store.
    "dl": {"id": "dl-portcullis-HS256-cached-lease", "group": "dl", "alg": "HS256", "cached": True,
           "store": "embedded"},
}


def group_of(dso):
    if dso == "[kernel.kallsyms]" or dso.startswith("[kernel"):
        return "kernel"
    if dso in ("envoy",) or dso.endswith("/envoy"):
        return "envoy"
    if dso.startswith("libc") or dso.startswith("ld-linux") or dso.startswith("libm") or "libpthread" in dso:
        return "libc"
    if dso.startswith("[JIT]") or dso in ("[unknown]", "//anon", "[anon]") or dso.startswith("perf-") \
            or "anon" in dso:
        return "wasm/JIT"
    return "other"


def perf_split(perf_data, perf_bin):
    """Samples per code-object group, from `perf report --sort dso`."""
    out = subprocess.run([perf_bin, "report", "-i", str(perf_data), "--sort", "dso", "--stdio", "-n",
                          "--percentage", "absolute"],
                         capture_output=True, text=True, check=True).stdout
    groups = collections.Counter()
    dsos = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"^\s+[\d.]+%\s+(\d+)\s+(.+?)\s*$", line)
        if m:
            samples, dso = int(m.group(1)), m.group(2)
            groups[group_of(dso)] += samples
            dsos[dso] += samples
    return groups, dsos


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envoy", required=True, type=Path)
    p.add_argument("--wasm", required=True, type=Path)
    p.add_argument("--wrk", default="wrk")
    p.add_argument("--perf", default="perf")
    p.add_argument("--input", required=True, type=Path, help="bench input written by mint-bench-tokens")
    p.add_argument("--setups", default="a,c0,c,b")
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--frequency", type=int, default=2000, help="cpu-clock samples per second")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--control-plane", type=Path, help="portcullis-control-plane binary: adds (d-lease)")
    args = p.parse_args()
    bench_input = json.loads(args.input.read_text())
    token = next(c["token"] for c in bench_input["cases"] if c["alg"] == "HS256")
    names = [s for s in args.setups.split(",") if s]
    if args.control_plane and "dl" not in names:
        names.append("dl")
    names = [n for n in names if n != "dl" or args.control_plane]
    work = Path(tempfile.mkdtemp(prefix="portcullis-profile."))
    envoys = {}
    cp = None
    totals = {n: {"requests": 0, "groups": collections.Counter(), "dsos": collections.Counter()} for n in names}
    try:
        if "dl" in names:
            cp = eb.ControlPlane(Path(os.path.abspath(args.control_plane)), "embedded", work, work)
            cp.start()
        for n in names:
            setup = SETUPS[n]
            cfg = eb.bootstrap(setup, bench_input, args.wasm, cp.internal_port if setup.get("store") else None)
            envoys[n] = eb.Envoy(setup, 1, work, args.envoy, work, cfg)
            envoys[n].start()
        for e in envoys.values():
            e.wait_ready()
            eb.sanity_check(e, token)
            eb.run_wrk(args.wrk, e.port, token, 2, args.connections)
        for r in range(args.rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                e = envoys[n]
                data = work / f"{n}-{r}.perf"
                perf = subprocess.Popen([args.perf, "record", "-q", "-e", "cpu-clock", "-F", str(args.frequency),
                                         "-p", str(e.proc.pid), "-o", str(data), "--", "sleep",
                                         str(args.seconds)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(0.2)
                before = e.stats()
                w = eb.run_wrk(args.wrk, e.port, token, args.seconds - 1, args.connections)
                eb.check_run(e, w, before, e.stats())
                _, err = perf.communicate(timeout=args.seconds + 30)
                if perf.returncode != 0:
                    raise eb.BenchError(f"perf record failed: {err.decode(errors='replace')}")
                # perf sampled `seconds`, wrk ran `seconds - 1` inside it: count the requests
                # Envoy served over perf's whole window instead of wrk's.
                served = e.stats().get("http.ingress.downstream_rq_2xx", 0) - before.get(
                    "http.ingress.downstream_rq_2xx", 0)
                groups, dsos = perf_split(data, args.perf)
                totals[n]["requests"] += served
                totals[n]["groups"] += groups
                totals[n]["dsos"] += dsos
                eb.log(f"profile round {r + 1}: {n}: {served} requests, {sum(groups.values())} samples")
    finally:
        for e in envoys.values():
            e.stop()
        if cp:
            cp.stop()
        shutil.rmtree(work, ignore_errors=True)
    order = ["envoy", "wasm/JIT", "kernel", "libc", "other"]
    us = {n: {g: t["groups"][g] / args.frequency / t["requests"] * 1e6 if t["requests"] else 0.0
              for g in order} for n, t in totals.items()}
    base = us.get("a")
    lines = [f"CPU µs per request of the Envoy process (1 worker, {args.connections} connections, "
             f"cpu-clock at {args.frequency} Hz, {args.rounds} × {args.seconds} s per setup; "
             "in brackets: the difference to (a)):", "",
             "| setup | requests | " + " | ".join(order) + " | total | total − (a) |",
             "|---|---|" + "---|" * (len(order) + 2)]
    for n in names:
        row = us[n]
        total = sum(row.values())
        delta = f"{total - sum(base.values()):+.1f}" if base else "—"
        cells = " | ".join(f"{row[g]:.1f}" + (f" ({row[g] - base[g]:+.1f})" if base and n != "a" else "")
                           for g in order)
        lines.append(f"| {SETUPS[n]['id']} | {totals[n]['requests']:,} | {cells} | {total:.1f} | {delta} |")
    lines += ["", "Top code objects by samples:", ""]
    for n in names:
        top = ", ".join(f"`{d}` {c:,}" for d, c in totals[n]["dsos"].most_common(6))
        lines.append(f"- {SETUPS[n]['id']}: {top}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(json.dumps({"markdown": text, "us_per_request": us, "totals": {
            n: {"requests": t["requests"], "groups": dict(t["groups"]), "dsos": dict(t["dsos"])}
            for n, t in totals.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except eb.BenchError as e:
        print(f"profile: {e}", file=sys.stderr)
        sys.exit(1)
