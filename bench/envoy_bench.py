#!/usr/bin/env python3
"""Side-by-side Envoy benchmark: no auth filter, Envoy's native jwt_authn, the Portcullis
filter, Envoy's native local_ratelimit; one Envoy process per setup, all behind the same
`direct_response` route, loaded by wrk with the same token.

Called by bench/run.sh; standard library only. For each worker count it starts every
setup's Envoy (ports chosen by Envoy itself, so no port races; `--use-dynamic-base-id`),
checks that each one really verifies (good token 200, no token and a forged signature
401), warms each one up, then runs the measured rounds interleaved (round r runs every
setup once, in an order rotated each round) so that load from other processes on the
machine spreads over all setups instead of biasing one. After every wrk run it checks
that no request got anything but a 2xx, from wrk's own output and from the Envoy
counters (listener 2xx/4xx/5xx and the filter's allowed/denied counters).

Writes one JSON document (see `main`) and exits non-zero on any failed check.
"""

import argparse
import hashlib
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ALGS = ["HS256", "ES256", "RS256", "EdDSA"]
CACHE_SIZE = 4096  # Portcullis' default verifiedTokenCache capacity; jwt_authn gets the same.
STAT_PREFIX = "ingress"


class BenchError(Exception):
    pass


def log(msg):
    print(f"[envoy-bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------
# Setups and their Envoy bootstraps


def setups(algs):
    """Every setup: id, group letter, algorithm, cache flag."""
    out = [{"id": "a-none", "group": "a", "alg": None, "cached": None},
           # Diagnostic: the filter loaded, headers read, a rule matched, no token checked.
           {"id": "c0-portcullis-no-jwt", "group": "c0", "alg": None, "cached": None}]
    for alg in algs:
        for cached in (True, False):
            tag = "cached" if cached else "uncached"
            out.append({"id": f"b-jwt_authn-{alg}-{tag}", "group": "b", "alg": alg, "cached": cached})
            out.append({"id": f"c-portcullis-{alg}-{tag}", "group": "c", "alg": alg, "cached": cached})
    out.append({"id": "e-local_ratelimit", "group": "e", "alg": None, "cached": None})
    return out


def http_filters(setup, bench_input, wasm_path):
    if setup["group"] == "a":
        return []
    if setup["group"] == "e":
        return [{
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "bench_rl",
                # Never empties: a billion tokens refilled every second.
                "token_bucket": {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"},
                "filter_enabled": {"runtime_key": "bench_rl_enabled",
                                   "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
                "filter_enforced": {"runtime_key": "bench_rl_enforced",
                                    "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            },
        }]
    alg = setup["alg"] or bench_input["cases"][0]["alg"]
    case = next(c for c in bench_input["cases"] if c["alg"] == alg)
    jwks = {"keys": [case["jwk"]]}
    if setup["group"] == "b":
        provider = {
            "issuer": bench_input["issuer"],
            "audiences": [bench_input["audience"]],
            "local_jwks": {"inline_string": json.dumps(jwks)},
            # Portcullis forwards the token by default: keep the work the same.
            "forward": True,
        }
        if setup["cached"]:
            provider["jwt_cache_config"] = {"jwt_cache_size": CACHE_SIZE}
        return [{
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"bench": provider},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
            },
        }]
    plugin = {
        "realm": "bench",
        "providers": {"bench": {
            "issuer": bench_input["issuer"],
            "audiences": [bench_input["audience"]],
            "algorithms": [alg],
            "jwks": jwks,
        }},
        "rules": [{"name": "all", "match": {"pathPrefix": "/"},
                   "requires": "none" if setup["group"] == "c0" else {"provider": "bench"}}],
    }
    if not setup["cached"]:
        plugin["verifiedTokenCache"] = {"capacity": 0}
    return [{
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "portcullis",
                "root_id": "portcullis",
                "vm_config": {
                    "vm_id": "portcullis",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm_path)}},
                },
                "failure_policy": "FAIL_CLOSED",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(plugin),
                },
            },
        },
    }]


def bootstrap(setup, bench_input, wasm_path):
    filters = http_filters(setup, bench_input, wasm_path) + [{
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }]
    return {
        # Port 0 everywhere: Envoy binds free ports and reports them (no races).
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "bench",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": STAT_PREFIX,
                    "route_config": {"name": "r", "virtual_hosts": [{
                        "name": "all", "domains": ["*"],
                        # The upstream costs nothing: Envoy answers itself.
                        "routes": [{"match": {"prefix": "/"},
                                    "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}],
                    }]},
                    "http_filters": filters,
                },
            }]}],
        }]},
    }


# ---------------------------------------------------------------------------------
# Envoy processes


class Envoy:
    def __init__(self, setup, concurrency, workdir, envoy_bin, pid_dir, config):
        self.setup = setup
        self.concurrency = concurrency
        self.name = f"{setup['id']}-w{concurrency}"
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "envoy.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.admin_path = self.dir / "admin-address"
        self.log_path = self.dir / "envoy.log"
        self.cmd = [
            str(envoy_bin), "-c", str(self.config_path),
            "--concurrency", str(concurrency),
            "--use-dynamic-base-id", "--base-id-path", str(self.dir / "base-id"),
            "--admin-address-path", str(self.admin_path),
            "--log-level", "warn",
        ]
        self.pid_dir = pid_dir
        self.proc = None
        self.admin = None
        self.port = None

    def start(self):
        log_file = open(self.log_path, "wb")
        # Own session: run.sh's trap (and ours) can kill it by pid even if we die.
        self.proc = subprocess.Popen(self.cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log_file.close()
        (self.pid_dir / f"{self.proc.pid}.pid").write_text(str(self.proc.pid))

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name}: envoy exited with {self.proc.returncode}\n{self.log_tail()}")
            if self.admin is None and self.admin_path.exists():
                text = self.admin_path.read_text().strip()
                if text:
                    host, port = text.rsplit(":", 1)
                    self.admin = (host, int(port))
            if self.admin is not None:
                try:
                    status, _ = http_get(self.admin, "/ready")
                    if status == 200:
                        self.port = self.listener_port()
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise BenchError(f"{self.name}: not ready after {timeout}s\n{self.log_tail()}")

    def listener_port(self):
        _, body = http_get(self.admin, "/listeners?format=json")
        for listener in json.loads(body).get("listener_statuses", []):
            if listener.get("name") == "bench":
                return int(listener["local_address"]["socket_address"]["port_value"])
        raise BenchError(f"{self.name}: listener `bench` not reported by admin")

    def stats(self):
        """Every counter and gauge, by name."""
        _, body = http_get(self.admin, "/stats")
        out = {}
        for line in body.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().isdigit():
                out[name] = int(value)
        return out

    def rss_kb(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return None

    def log_tail(self, n=30):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        try:
            (self.pid_dir / f"{self.proc.pid}.pid").unlink()
        except OSError:
            pass


def http_get(addr, path, headers=None, timeout=5):
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


# ---------------------------------------------------------------------------------
# Checks


def forge(token):
    """Same header and payload, a different (wrong) signature."""
    head, payload, sig = token.split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    return f"{head}.{payload}.{flipped}"


def sanity_check(envoy, token):
    addr = ("127.0.0.1", envoy.port)
    status, _ = http_get(addr, "/bench", {"authorization": f"Bearer {token}"})
    if status != 200:
        raise BenchError(f"{envoy.name}: the bench token got {status}, not 200: this setup rejects it\n{envoy.log_tail()}")
    if envoy.setup["group"] in ("b", "c"):
        for what, headers in (("no token", {}), ("a forged signature", {"authorization": f"Bearer {forge(token)}"})):
            status, _ = http_get(addr, "/bench", headers)
            if status != 401:
                raise BenchError(f"{envoy.name}: {what} got {status}, not 401: the filter is not verifying")


def filter_counters(setup, delta):
    """(allowed, denied) as the setup's own filter counts them, or None for no filter."""
    group = setup["group"]
    if group == "b":
        return (delta.get(f"http.{STAT_PREFIX}.jwt_authn.allowed", 0),
                delta.get(f"http.{STAT_PREFIX}.jwt_authn.denied", 0))
    if group in ("c", "c0"):
        denied = sum(v for k, v in delta.items() if k.startswith("wasmcustom.portcullis.requests.denied."))
        return delta.get("wasmcustom.portcullis.requests.allowed", 0), denied
    if group == "e":
        return (delta.get("bench_rl.http_local_rate_limit.ok", 0),
                delta.get("bench_rl.http_local_rate_limit.rate_limited", 0))
    return None


def check_run(envoy, wrk, before, after):
    """Raises unless every request of the run was answered 2xx and, where there is a
    filter, allowed by it. Returns the counters worth recording."""
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    problems = []
    if wrk["non2xx"]:
        problems.append(f"wrk saw {wrk['non2xx']} non-2xx/3xx responses")
    if wrk["requests"] <= 0:
        problems.append("wrk completed no request")
    ok = delta.get(f"http.{STAT_PREFIX}.downstream_rq_2xx", 0)
    bad = sum(delta.get(f"http.{STAT_PREFIX}.downstream_rq_{c}", 0) for c in ("1xx", "3xx", "4xx", "5xx"))
    if bad:
        problems.append(f"Envoy answered {bad} requests with a non-2xx status")
    if ok < wrk["requests"]:
        problems.append(f"Envoy counted {ok} 2xx answers for {wrk['requests']} wrk requests")
    counted = filter_counters(envoy.setup, delta)
    if counted is not None:
        allowed, denied = counted
        if denied:
            problems.append(f"the filter denied {denied} requests")
        if allowed < wrk["requests"]:
            problems.append(f"the filter allowed {allowed} requests for {wrk['requests']} wrk requests")
    if problems:
        raise BenchError(f"{envoy.name}: " + "; ".join(problems) + f"\n{envoy.log_tail()}")
    keep = {k: v for k, v in delta.items()
            if k.startswith(("wasmcustom.", f"http.{STAT_PREFIX}.jwt_authn.", "bench_rl."))
            or k in (f"http.{STAT_PREFIX}.downstream_rq_2xx", f"http.{STAT_PREFIX}.downstream_rq_completed")}
    return keep


# ---------------------------------------------------------------------------------
# wrk

UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def parse_latency(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise BenchError(f"cannot parse wrk latency `{text}`")
    return float(m.group(1)) * UNIT_US[m.group(2)]


def run_wrk(wrk_bin, port, token, seconds, connections):
    cmd = [wrk_bin, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
           "-H", f"Authorization: Bearer {token}", f"http://127.0.0.1:{port}/bench"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    out = res.stdout
    if res.returncode != 0:
        raise BenchError(f"wrk failed ({res.returncode}): {res.stderr.strip()}")
    percentiles = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M))
    m_req = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", out, re.M)
    m_rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not (m_req and m_rps and "50" in percentiles and "99" in percentiles):
        raise BenchError(f"cannot parse wrk output:\n{out}\n{res.stderr}")
    m_non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    m_err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(m_rps.group(1)),
        "requests": int(m_req.group(1)),
        "p50_us": parse_latency(percentiles["50"]),
        "p99_us": parse_latency(percentiles["99"]),
        "non2xx": int(m_non2xx.group(1)) if m_non2xx else 0,
        "socket_errors": sum(int(x) for x in m_err.groups()) if m_err else 0,
    }


# ---------------------------------------------------------------------------------


def bench_concurrency(args, bench_input, concurrency, pid_dir):
    tokens = {c["alg"]: c["token"] for c in bench_input["cases"]}
    # Setups without a JWT check still receive a token (the first one's, HS256 unless
    # filtered), so every setup parses the same request.
    default_token = tokens[args.algs[0]]
    envoys = []
    results = {}
    try:
        for setup in setups(args.algs):
            cfg = bootstrap(setup, bench_input, args.wasm)
            envoys.append(Envoy(setup, concurrency, args.workdir, args.envoy, pid_dir, cfg))
        log(f"workers={concurrency}: starting {len(envoys)} Envoys")
        for e in envoys:
            e.start()
        for e in envoys:
            e.wait_ready()
        token_of = {e.name: tokens.get(e.setup["alg"], default_token) for e in envoys}
        for e in envoys:
            sanity_check(e, token_of[e.name])
        log(f"workers={concurrency}: all setups answer 200 to the token (and 401 without it / forged); warming up")
        for e in envoys:
            before = e.stats()
            w = run_wrk(args.wrk, e.port, token_of[e.name], args.warmup, args.connections)
            check_run(e, w, before, e.stats())
            results[e.name] = {"setup": e.setup, "concurrency": concurrency, "runs": [],
                               "rss_kb_after_warmup": e.rss_kb(), "base_id": read_text(e.dir / "base-id")}
        for r in range(args.runs):
            shift = (r * len(envoys)) // max(args.runs, 1)
            order = envoys[shift:] + envoys[:shift]
            log(f"workers={concurrency}: round {r + 1}/{args.runs} ({len(order)} setups x {args.duration}s)")
            for e in order:
                before = e.stats()
                w = run_wrk(args.wrk, e.port, token_of[e.name], args.duration, args.connections)
                w["counters"] = check_run(e, w, before, e.stats())
                w["round"] = r + 1
                results[e.name]["runs"].append(w)
        for e in envoys:
            res = results[e.name]
            res["rss_kb_end"] = e.rss_kb()
            runs = res["runs"]
            res["rps"] = statistics.median(x["rps"] for x in runs)
            res["p50_us"] = statistics.median(x["p50_us"] for x in runs)
            res["p99_us"] = statistics.median(x["p99_us"] for x in runs)
            res["socket_errors"] = sum(x["socket_errors"] for x in runs)
            final = e.stats()
            res["final_counters"] = {k: v for k, v in final.items()
                                     if k.startswith(("wasmcustom.portcullis.requests.", f"http.{STAT_PREFIX}.jwt_authn.",
                                                      "bench_rl.http_local_rate_limit."))}
            res["command"] = " ".join(e.cmd)
            res["wrk_command"] = (f"wrk -t1 -c{args.connections} -d{args.duration}s --latency "
                                  f"-H 'Authorization: Bearer <{e.setup['alg'] or args.algs[0]} token>' "
                                  f"http://127.0.0.1:<port>/bench")
    finally:
        for e in envoys:
            e.stop()
    return results


def read_text(path):
    try:
        return path.read_text().strip()
    except OSError:
        return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envoy", required=True, type=Path)
    p.add_argument("--wasm", required=True, type=Path)
    p.add_argument("--wrk", default="wrk")
    p.add_argument("--input", required=True, type=Path, help="bench input written by mint-bench-tokens")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--pid-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--concurrency", default="1,2")
    p.add_argument("--algs", default=",".join(ALGS))
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    args.algs = [a for a in args.algs.split(",") if a]
    unknown = [a for a in args.algs if a not in ALGS]
    if unknown:
        p.error(f"unknown algorithms {unknown}; choose from {ALGS}")
    bench_input = json.loads(args.input.read_text())
    args.pid_dir.mkdir(parents=True, exist_ok=True)

    # SIGTERM/SIGINT become exceptions so the finally blocks stop every Envoy.
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    # Other builds may replace the .wasm later: record what this run loaded.
    wasm_bytes = args.wasm.read_bytes()
    wasm_info = {"bytes": len(wasm_bytes), "sha256": hashlib.sha256(wasm_bytes).hexdigest()}
    started = time.time()
    all_results = {}
    try:
        for c in [int(x) for x in args.concurrency.split(",") if x]:
            all_results.update(bench_concurrency(args, bench_input, c, args.pid_dir))
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1
    doc = {
        "params": {"connections": args.connections, "duration_s": args.duration, "warmup_s": args.warmup,
                   "runs": args.runs, "concurrency": args.concurrency, "algs": args.algs,
                   "jwt_cache_size": CACHE_SIZE},
        "elapsed_s": round(time.time() - started, 1),
        "wasm": wasm_info,
        "results": all_results,
    }
    args.out.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
