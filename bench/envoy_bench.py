#!/usr/bin/env python3
"""Side-by-side Envoy benchmark: no auth filter, Envoy's native jwt_authn, the Portcullis
filter, Portcullis with the revocation feed and a quota-lease rate limit (against a real
control plane, per store), Envoy's native local_ratelimit; one Envoy process per setup,
all behind the same `direct_response` route, loaded by wrk with the same token. Then the
control plane's own throughput (`POST /v1/ratelimit`, `GET /v1/feed` beside `GET /healthz`
of the same process), per store. Then (g): the time and memory a fresh Envoy takes to sync
a large revocation state from a control plane on Redis, beside an empty one.

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
import base64
import copy
import hashlib
import hmac
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
CP_CLUSTER = "portcullis_control_plane"
# Test-only values, as in tests/src/lib.rs (a throwaway control plane on loopback).
CP_ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
CP_FLEET_CREDENTIAL = "bench-fleet-credential-0123456789abcdef"
# Envoy passes this variable of its own environment to the filter's VM (host_env_keys).
FLEET_ENV = "PORTCULLIS_FLEET_CREDENTIAL"
CONTROL_PLANE_SECTION = {"cluster": CP_CLUSTER, "authority": "control-plane", "timeoutMs": 500,
                         "credential": {"env": FLEET_ENV}}
CP_MASTER_KEY = "ZTJlLXRlc3Qtb25seS1tYXN0ZXIta2V5LTMyYnl0ZXM="


class BenchError(Exception):
    pass


def log(msg):
    print(f"[envoy-bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------
# Setups and their Envoy bootstraps


# (d): the limit never refuses (10^8 per second) and lease sizes are capped at 1000 units.
D_LIMIT = {"name": "bench", "limit": 100000000, "unit": "second", "descriptors": ["claim:sub"], "maxLease": 1000}
D_ALG = "ES256"  # (d) uses this algorithm when it is benchmarked, else the first one
MANY_SUBJECTS = 1000  # (d-many): distinct subjects, each its own counter of the lease limit
DM_REWARM_S = 1  # (d-many): unmeasured load right before each measured run
# (d-near): one subject whose limit wrk's paced load keeps at about 90 %: every connection
# waits NEAR_DELAY_MS before each request, so the offered load is at most
# connections x 1000 / NEAR_DELAY_MS per second (16 x 1000 / 8 = 2000 = 0.9 x 2222); the
# load reached is measured and reported beside the calls per request.
NEAR_LIMIT = {"name": "bench", "limit": 2222, "unit": "second", "descriptors": ["claim:sub"], "maxLease": 1000}
NEAR_DELAY_MS = 8
# The load-shape cell: the headline rows again with this many wrk connections per worker
# (4 at 1 worker, 8 at 2), so their ratios are not an artefact of 16 connections.
SHAPE_CONNECTIONS_PER_WORKER = 4
SHAPE_ALGS = ("HS256", "ES256")


def d_alg(algs):
    return D_ALG if D_ALG in algs else algs[0]


def setups(algs, stores=()):
    """Every setup: id, group letter, algorithm, cache flag (and store for (d))."""
    out = [{"id": "a-none", "group": "a", "alg": None, "cached": None},
           # Diagnostic: the filter loaded, headers read, a rule matched, no token checked.
           {"id": "c0-portcullis-no-jwt", "group": "c0", "alg": None, "cached": None}]
    for alg in algs:
        for cached in (True, False):
            tag = "cached" if cached else "uncached"
            out.append({"id": f"b-jwt_authn-{alg}-{tag}", "group": "b", "alg": alg, "cached": cached})
            out.append({"id": f"c-portcullis-{alg}-{tag}", "group": "c", "alg": alg, "cached": cached})
    for store in stores:
        alg = d_alg(algs)
        out.append({"id": f"d-portcullis-{alg}-cached-rl-{store}", "group": "d", "alg": alg, "cached": True,
                    "store": store})
    if stores:
        # Diagnostics splitting (c) -> (d): the feed alone, the lease limit alone (first store).
        alg = d_alg(algs)
        out.append({"id": f"dr-portcullis-{alg}-cached-feed-{stores[0]}", "group": "dr", "alg": alg,
                    "cached": True, "store": stores[0]})
        out.append({"id": f"dl-portcullis-{alg}-cached-lease-{stores[0]}", "group": "dl", "alg": alg,
                    "cached": True, "store": stores[0]})
        # (d-many): the lease limit alone with wrk cycling over MANY_SUBJECTS subjects (one
        # counter each), so leases are many and small; HS256 tokens, minted here.
        if "HS256" in algs:
            out.append({"id": f"dm-portcullis-HS256-cached-lease-{MANY_SUBJECTS}-subjects-{stores[0]}",
                        "group": "dm", "alg": "HS256", "cached": True, "store": stores[0]})
        # (d-near): the lease limit alone, one subject, the load paced at ~90 % of its limit
        # (leases shrink as the limit nears; a few 429s are expected and counted).
        out.append({"id": f"dn-portcullis-{alg}-cached-lease-near-limit-{stores[0]}", "group": "dn", "alg": alg,
                    "cached": True, "store": stores[0]})
        # (t): an API token from the filter's shared replica, in the same run as (c)'s
        # cached JWT path of the same algorithm, which it is compared with.
        out.append({"id": f"t-portcullis-apitoken-{stores[0]}", "group": "t", "alg": alg,
                    "cached": True, "store": stores[0]})
        # (u): (c) cached plus the audit log at its default sampling (every allow decided,
        # one in a thousand recorded and batched to the control plane), compared with (c)
        # of the same run; the target is at least 0.95x.
        out.append({"id": f"u-portcullis-{alg}-cached-audit-{stores[0]}", "group": "u", "alg": alg,
                    "cached": True, "store": stores[0]})
    out += hmac_setups(algs)
    out.append({"id": "e-local_ratelimit", "group": "e", "alg": None, "cached": None})
    return out


def headline(setup, stores):
    """The rows the load-shape cell measures again: (a), (c0), (b) and (c) cached for
    HS256 and ES256, and (d) on the first store."""
    g = setup["group"]
    return (g in ("a", "c0")
            or (g in ("b", "c") and setup["cached"] and setup["alg"] in SHAPE_ALGS)
            or (g == "d" and stores and setup.get("store") == stores[0]))


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
    if setup["group"] == "h":
        hmac_plugin(plugin)
    if setup["group"] == "t":
        plugin["controlPlane"] = dict(CONTROL_PLANE_SECTION)
        plugin["apiTokens"] = {}
        plugin["rules"] = [{"name": "all", "match": {"pathPrefix": "/"}, "acceptApiTokens": True}]
    if setup["group"] == "u":
        plugin["controlPlane"] = dict(CONTROL_PLANE_SECTION)
        plugin["audit"] = {}
    if setup["group"] in ("d", "dl", "dm", "dn", "dr"):
        plugin["controlPlane"] = dict(CONTROL_PLANE_SECTION)
    if setup["group"] in ("d", "dl", "dm"):
        plugin["rateLimits"] = [dict(D_LIMIT)]
    if setup["group"] == "dn":
        plugin["rateLimits"] = [dict(NEAR_LIMIT)]
    if setup["group"] in ("d", "dr"):
        plugin["revocation"] = {}
    filters = [wasm_filter(plugin, wasm_path)]
    if hmac_group(setup):
        # The filter reads the body before the headers go on (see hmac_setups).
        filters[0]["typed_config"]["config"]["allow_on_headers_stop_iteration"] = True
    return filters


def wasm_filter(plugin, wasm_path):
    """The Portcullis filter with this configuration; the fleet credential comes from
    Envoy's environment (every bench Envoy gets FLEET_ENV)."""
    return {
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
                    "environment_variables": {"host_env_keys": [FLEET_ENV]},
                },
                "failure_policy": "FAIL_CLOSED",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(plugin),
                },
            },
        },
    }


# What the filter relies on from the connection manager: the client address is the TCP
# peer, paths are normalised, escaped slashes and header names with '_' are refused.
HARDENED_CONNECTION_MANAGER = {
    "use_remote_address": True,
    "xff_num_trusted_hops": 0,
    "normalize_path": True,
    "merge_slashes": True,
    "path_with_escaped_slashes_action": "REJECT_REQUEST",
    "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
}


def bootstrap(setup, bench_input, wasm_path, cp_port=None, filters=None):
    """`cp_port`: the control plane's internal listener; `filters`: instead of the
    setup's."""
    filters = (filters if filters is not None else http_filters(setup, bench_input, wasm_path)) + [{
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }]
    clusters = []
    if cp_port is not None:
        clusters.append({
            "name": CP_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": CP_CLUSTER, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": cp_port}}}}]}]},
        })
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
                    # The settings every shipped configuration uses (docs/plugin-config.md,
                    # "Security model"), for every setup alike, so the comparison is fair.
                    **HARDENED_CONNECTION_MANAGER,
                    "route_config": {"name": "r", "virtual_hosts": [{
                        "name": "all", "domains": ["*"],
                        # The upstream costs nothing: Envoy answers itself.
                        "routes": [{"match": {"prefix": "/"},
                                    "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}],
                    }]},
                    "http_filters": filters,
                },
            }]}],
        }], "clusters": clusters},
    }


# ---------------------------------------------------------------------------------
# (h): a signed POST with a 1 KiB body (RFC 9421 hmac-sha256 over @method,
# @target-uri, @authority and content-digest, the digest checked against the body),
# against (hj): the same POST through the cached JWT path (c) of the same algorithm, in
# the same run. The request is signed once: the rule has `replay: none` and a day of
# tolerance, so wrk may send it again and again (the replay guard is not measured).
# Both Envoys set `allow_on_headers_stop_iteration` (as signed routes must, and as the
# other cells do not: their filter never holds the headers).

HMAC_SECRET = bytes(range(32))
HMAC_BODY = b'{"bench":"' + b"x" * 1011 + b'"}'  # 1024 bytes
HMAC_COMPONENTS = ["@method", "@target-uri", "@authority", "content-digest"]


def hmac_setups(algs):
    alg = d_alg(algs)
    return [{"id": "h-portcullis-hmac-post", "group": "h", "alg": alg, "cached": None},
            {"id": f"hj-portcullis-{alg}-cached-post", "group": "hj", "alg": alg, "cached": True}]


def hmac_plugin(plugin):
    import base64
    plugin["signatureKeys"] = [{"id": "bench", "secrets": [{"secret": base64.b64encode(HMAC_SECRET).decode()}]}]
    plugin["rules"] = [{"name": "all", "match": {"pathPrefix": "/"}, "requires": "none",
                        "signatures": {"schemes": ["httpMessageSignatures"], "components": HMAC_COMPONENTS,
                                       "replay": "none", "toleranceSeconds": 86400, "maxBodyBytes": 4096}}]


def hmac_headers(port, secret=HMAC_SECRET):
    """The headers of the signed POST to the Envoy on `port` (signed now)."""
    import base64
    import hmac as hmac_mod
    authority = f"127.0.0.1:{port}"
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(HMAC_BODY).digest()).decode() + ":"
    values = {"@method": "POST", "@target-uri": f"http://{authority}/bench", "@authority": authority,
              "content-digest": digest}
    params = "(" + " ".join(f'"{c}"' for c in HMAC_COMPONENTS) + f');created={int(time.time())};keyid="bench"'
    base = "".join(f'"{c}": {values[c]}\n' for c in HMAC_COMPONENTS) + f'"@signature-params": {params}'
    mac = base64.b64encode(hmac_mod.new(secret, base.encode(), hashlib.sha256).digest()).decode()
    return {"Host": authority, "content-type": "application/json", "content-digest": digest,
            "signature-input": f"sig1={params}", "signature": f"sig1=:{mac}:"}


def hmac_group(setup):
    return setup["group"] in ("h", "hj")


def hmac_request_headers(envoy, token):
    if envoy.setup["group"] == "h":
        return hmac_headers(envoy.port)
    return {"Host": f"127.0.0.1:{envoy.port}", "content-type": "application/json",
            "authorization": f"Bearer {token}"}


def hmac_sanity_check(envoy, token):
    """200 for the signed (or bearer) POST; 401 unsigned, with a wrong secret, or a
    changed body."""
    addr = ("127.0.0.1", envoy.port)
    headers = hmac_request_headers(envoy, token)
    status, _ = http_request(addr, "POST", "/bench", HMAC_BODY, headers)
    if status != 200:
        raise BenchError(f"{envoy.name}: the bench POST got {status}, not 200\n{envoy.log_tail()}")
    bad = [("no credentials", {"content-type": "application/json"}, HMAC_BODY)]
    if envoy.setup["group"] == "h":
        bad += [("a wrong secret", hmac_headers(envoy.port, bytes(32)), HMAC_BODY),
                ("a changed body", headers, HMAC_BODY[:-2] + b"!}")]
    for what, h, body in bad:
        status, _ = http_request(addr, "POST", "/bench", body, h)
        if status != 401:
            raise BenchError(f"{envoy.name}: {what} got {status}, not 401: the filter is not checking")


def hmac_wrk(args, envoy, token, seconds):
    """wrk sending the POST (a script: method, headers, 1 KiB body)."""
    script = args.workdir / f"{envoy.setup['id']}.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(HMAC_BODY.decode())}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in hmac_request_headers(envoy, token).items()]
    script.write_text("\n".join(lines) + "\n")
    return run_wrk_url(args.wrk, f"http://127.0.0.1:{envoy.port}/bench", seconds, args.connections, script=script)


# ---------------------------------------------------------------------------------
# Envoy processes


class Envoy:
    def __init__(self, setup, concurrency, workdir, envoy_bin, pid_dir, config, tag=""):
        self.setup = setup
        self.concurrency = concurrency
        self.name = f"{setup['id']}-w{concurrency}{tag}"
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
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=dict(os.environ, **{FLEET_ENV: CP_FLEET_CREDENTIAL}))
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


class Service:
    """A helper process (redis-server or the control plane) on a free loopback port,
    started in its own session and registered in the pid directory like the Envoys."""

    def __init__(self, name, workdir, pid_dir):
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "log"
        self.pid_dir = pid_dir
        self.proc = None
        self.port = None

    def spawn(self, cmd, env=None):
        log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env, cwd=self.dir)
        log_file.close()
        (self.pid_dir / f"{self.proc.pid}.pid").write_text(str(self.proc.pid))

    def start(self, attempts=5, timeout=30):
        """Tries a few free ports: another process may take the one picked first."""
        for _ in range(attempts):
            self.port = free_port()
            self.spawn(*self.command(self.port))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.ready():
                    return
                time.sleep(0.1)
            if self.proc.poll() is None:
                self.stop()
                raise BenchError(f"{self.name}: not ready after {timeout}s\n{self.log_tail()}")
            self.forget()
        raise BenchError(f"{self.name}: exited at start {attempts} times\n{self.log_tail()}")

    def log_tail(self, n=20):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def rss_kb(self):
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def forget(self):
        try:
            (self.pid_dir / f"{self.proc.pid}.pid").unlink()
        except OSError:
            pass

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.forget()


class Redis(Service):
    def __init__(self, redis_bin, workdir, pid_dir):
        super().__init__("redis", workdir, pid_dir)
        self.bin = redis_bin

    def command(self, port):
        return ([str(self.bin), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],)

    def ready(self):
        try:
            import socket
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def version(self):
        res = subprocess.run([str(self.bin), "--version"], capture_output=True, text=True)
        return res.stdout.strip()


class ControlPlane(Service):
    """`portcullis-control-plane` as tests/src/lib.rs starts it (`ControlPlane::try_start_with`):
    default log level (info), throwaway data directory, test master key. `port` is the
    admin listener, `internal_port` the internal one (what Envoys call, with the fleet
    credential)."""

    def __init__(self, cp_bin, store, workdir, pid_dir, redis_url=None, name=None):
        super().__init__(name or f"control-plane-{store}", workdir, pid_dir)
        self.bin = cp_bin
        self.store = store
        self.redis_url = redis_url
        self.internal_port = None
        self.head = None
        self._api_token = None

    def api_token(self):
        """One API token (created once, through the admin API) for the (t) setup."""
        if self._api_token is None:
            body = json.dumps({"user": "bench", "name": "bench", "scopes": ["bench"], "expiresIn": 86400})
            status, text = http_request(("127.0.0.1", self.port), "POST", "/admin/v1/api-tokens", body=body,
                                        headers={"content-type": "application/json",
                                                 "authorization": f"Bearer {CP_ADMIN_TOKEN}"})
            if status not in (200, 201):
                raise BenchError(f"{self.name}: creating an API token answered {status}: {text[:300]}")
            self._api_token = json.loads(text)["token"]
        return self._api_token

    def internal(self, path, timeout=30):
        """A GET on the internal listener, with the fleet credential."""
        return http_get(("127.0.0.1", self.internal_port), path,
                        {"authorization": f"Bearer {CP_FLEET_CREDENTIAL}"}, timeout=timeout)

    def seed(self):
        """One revoked token id (not the bench tokens'), so the replica and the snapshot are
        not empty; then follows the feed to its end, so `head` is a cursor for the delta poll."""
        addr = ("127.0.0.1", self.port)
        body = json.dumps({"jti": "bench-revoked-jti-1", "exp": int(time.time()) + 86400})
        status, text = http_request(addr, "POST", "/admin/v1/revocations", body=body,
                                    headers={"content-type": "application/json",
                                             "authorization": f"Bearer {CP_ADMIN_TOKEN}"})
        if status != 200:
            raise BenchError(f"{self.name}: seeding a revocation answered {status}: {text[:300]}")
        path = "/v1/feed"
        for _ in range(10):
            status, text = self.internal(path)
            if status != 200:
                raise BenchError(f"{self.name}: {path} answered {status}: {text[:300]}")
            page = json.loads(text)
            if not page["more"]:
                self.head = page["cursor"]
                return
            path = f"/v1/feed?cursor={page['cursor']}"
        raise BenchError(f"{self.name}: the feed of one revocation did not end in 10 pages")

    def command(self, port):
        self.internal_port = free_port()
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        env.update({
            "PORTCULLIS_ADMIN_LISTEN": f"127.0.0.1:{port}",
            "PORTCULLIS_INTERNAL_LISTEN": f"127.0.0.1:{self.internal_port}",
            "PORTCULLIS_FLEET_CREDENTIAL": CP_FLEET_CREDENTIAL,
            "PORTCULLIS_ADMIN_TOKEN": CP_ADMIN_TOKEN,
            "PORTCULLIS_DATA_DIR": str(self.dir / "data"),
            "PORTCULLIS_MASTER_KEY": CP_MASTER_KEY,
            "PORTCULLIS_STORE": self.store,
        })
        if self.redis_url:
            env["PORTCULLIS_REDIS_URL"] = self.redis_url
        return [str(self.bin)], env

    def ready(self):
        try:
            return http_get(("127.0.0.1", self.port), "/readyz", timeout=2)[0] == 200
        except OSError:
            return False

    def metrics(self):
        """OpenMetrics samples without labels folded: `name{labels}` -> value."""
        _, body = http_get(("127.0.0.1", self.port), "/metrics")
        out = {}
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_request(addr, method, path, body=None, headers=None, timeout=5):
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


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


def forge_api_token(token):
    """The same token with its last character changed (the checksum no longer matches)."""
    return token[:-1] + ("A" if token[-1] != "A" else "B")


def sanity_check(envoy, token):
    addr = ("127.0.0.1", envoy.port)
    if envoy.setup["group"] == "t":
        # The filter's replica syncs within a poll interval of the Envoy's start.
        deadline = time.time() + 15
        while http_get(addr, "/bench", {"authorization": f"Bearer {token}"})[0] != 200 and time.time() < deadline:
            time.sleep(0.2)
        for what, headers in (("no token", {}), ("a forged API token",
                                                 {"authorization": f"Bearer {forge_api_token(token)}"})):
            status, _ = http_get(addr, "/bench", headers)
            if status != 401:
                raise BenchError(f"{envoy.name}: {what} got {status}, not 401: the filter is not checking")
    status, _ = http_get(addr, "/bench", {"authorization": f"Bearer {token}"})
    if status != 200:
        raise BenchError(f"{envoy.name}: the bench token got {status}, not 200: this setup rejects it\n{envoy.log_tail()}")
    if envoy.setup["group"] in ("b", "c", "d", "dr", "dl", "dm", "dn"):
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
    if group in ("c", "c0", "d", "dr", "dl", "dm", "dn", "t", "u", "h", "hj"):
        denied = sum(v for k, v in delta.items() if k.startswith("wasmcustom.portcullis.requests.denied."))
        return delta.get("wasmcustom.portcullis.requests.allowed", 0), denied
    if group == "e":
        return (delta.get("bench_rl.http_local_rate_limit.ok", 0),
                delta.get("bench_rl.http_local_rate_limit.rate_limited", 0))
    return None


def check_rate_limit(delta, near=False):
    """(d): every request the filter allowed went through the lease limit (spent a leased
    unit), none was refused (except in (d-near), which runs close to its limit) or let
    through because the control plane failed."""
    name = D_LIMIT["name"]
    allowed = delta.get("wasmcustom.portcullis.requests.allowed", 0)
    rl_allowed = delta.get(f"wasmcustom.portcullis.ratelimit.{name}.allowed", 0)
    problems = []
    if rl_allowed != allowed:
        problems.append(f"the limit `{name}` allowed {rl_allowed} requests but the filter allowed {allowed}")
    for what in ("shadow_denied", "unavailable_allowed", "unavailable_denied") + (() if near else ("denied",)):
        n = delta.get(f"wasmcustom.portcullis.ratelimit.{name}.{what}", 0)
        if n:
            problems.append(f"ratelimit.{name}.{what} = {n}")
    return problems


def check_audit(delta, wrk):
    """(u): every allowed request went through the audit log's sampling (recorded, or
    counted as sampled out; the last requests' records may still be on their way when
    the counters are read, one per connection at most) and nothing was dropped."""
    allowed = delta.get("wasmcustom.portcullis.requests.allowed", 0)
    seen = (delta.get("wasmcustom.portcullis.audit.recorded", 0)
            + delta.get("wasmcustom.portcullis.audit.sampled_out", 0))
    problems = []
    if abs(allowed - seen) > wrk.get("connections", 0) + 16:
        problems.append(f"the audit log saw {seen} of {allowed} allowed requests")
    dropped = delta.get("wasmcustom.portcullis.audit.dropped", 0)
    if dropped:
        problems.append(f"the audit log dropped {dropped} records")
    return problems


def check_run(envoy, wrk, before, after):
    """Raises unless every request of the run was answered 2xx and, where there is a
    filter, allowed by it. Returns the counters worth recording."""
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    problems = []
    # (d-near) runs close to its limit: its refusals (429s, and only those) are expected
    # and reported, as long as they stay a small share.
    near = envoy.setup["group"] == "dn"
    limited = delta.get(f"wasmcustom.portcullis.ratelimit.{NEAR_LIMIT['name']}.denied", 0) if near else 0
    if wrk["non2xx"] > limited:
        problems.append(f"wrk saw {wrk['non2xx']} non-2xx/3xx responses ({limited} refused by the limit)")
    if wrk["requests"] <= 0:
        problems.append("wrk completed no request")
    ok = delta.get(f"http.{STAT_PREFIX}.downstream_rq_2xx", 0)
    bad = sum(delta.get(f"http.{STAT_PREFIX}.downstream_rq_{c}", 0) for c in ("1xx", "3xx", "4xx", "5xx"))
    if bad > limited:
        problems.append(f"Envoy answered {bad} requests with a non-2xx status ({limited} refused by the limit)")
    if ok + limited < wrk["requests"]:
        problems.append(f"Envoy counted {ok} 2xx answers for {wrk['requests']} wrk requests")
    if limited > wrk["requests"] * 0.05:
        problems.append(f"the limit refused {limited} of {wrk['requests']} requests: the load is not below it")
    counted = filter_counters(envoy.setup, delta)
    if counted is not None:
        allowed, denied = counted
        if denied > limited:
            problems.append(f"the filter denied {denied} requests ({limited} by the limit)")
        if allowed + limited < wrk["requests"]:
            problems.append(f"the filter allowed {allowed} requests for {wrk['requests']} wrk requests")
    if envoy.setup["group"] in ("d", "dl", "dm", "dn"):
        problems += check_rate_limit(delta, near)
    if envoy.setup["group"] == "u":
        problems += check_audit(delta, wrk)
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


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def subject_tokens(case, n):
    """`n` HS256 tokens with the claims of `case`'s token and subjects bench-subject-0000..,
    signed with its key (the JWK's `k`)."""
    head, payload, _ = case["token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    key = base64.urlsafe_b64decode(case["jwk"]["k"] + "=" * (-len(case["jwk"]["k"]) % 4))
    out = []
    for i in range(n):
        body = b64url(json.dumps({**claims, "sub": f"bench-subject-{i:04d}"}, separators=(",", ":")).encode())
        mac = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        out.append(f"{head}.{body}.{b64url(mac)}")
    return out


SUBJECTS_SCRIPT = """-- GET /bench cycling over %(n)d bearer tokens, one subject each (bench/envoy_bench.py).
local tokens = {%(tokens)s}
local reqs = {}
local i = 0
function init(args)
  for k = 1, #tokens do
    reqs[k] = wrk.format("GET", "/bench", {["Authorization"] = "Bearer " .. tokens[k]})
  end
end
function request()
  i = i %% #reqs + 1
  return reqs[i]
end
"""


NEAR_SCRIPT = """-- GET /bench with one bearer token, each connection waiting %(delay)d ms before each
-- request (bench/envoy_bench.py, (d-near)).
local req
function init(args)
  req = wrk.format("GET", "/bench", {["Authorization"] = "Bearer %(token)s"})
end
function delay()
  return %(delay)d
end
function request()
  return req
end
"""


def near_script(workdir, token):
    path = workdir / "near-limit.lua"
    path.write_text(NEAR_SCRIPT % {"delay": NEAR_DELAY_MS, "token": token})
    return path


def subjects_script(workdir, tokens):
    path = workdir / "subjects.lua"
    path.write_text(SUBJECTS_SCRIPT % {"n": len(tokens), "tokens": ",".join(f'"{t}"' for t in tokens)})
    return path


def run_wrk(wrk_bin, port, token, seconds, connections, script=None):
    if script is not None:
        return run_wrk_url(wrk_bin, f"http://127.0.0.1:{port}/bench", seconds, connections, script=script)
    return run_wrk_url(wrk_bin, f"http://127.0.0.1:{port}/bench", seconds, connections,
                       headers=[f"Authorization: Bearer {token}"])


def run_wrk_url(wrk_bin, url, seconds, connections, headers=(), script=None):
    cmd = [wrk_bin, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
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


def bench_concurrency(args, bench_input, concurrency, pid_dir, cps, keep=None, tag=""):
    """Every setup `keep` accepts (all by default) at `concurrency` workers, with
    `args.connections` wrk connections; `tag` tells the Envoys' work directories apart."""
    tokens = {c["alg"]: c["token"] for c in bench_input["cases"]}
    # Setups without a JWT check still receive a token (the first one's, HS256 unless
    # filtered), so every setup parses the same request.
    default_token = tokens[args.algs[0]]
    envoys = []
    results = {}
    try:
        for setup in setups(args.algs, list(cps)):
            if (args.groups and setup["group"] not in args.groups) or (keep and not keep(setup)):
                continue
            cp = cps[setup["store"]] if setup.get("store") else None
            cfg = bootstrap(setup, bench_input, args.wasm, cp.internal_port if cp else None)
            envoys.append(Envoy(setup, concurrency, args.workdir, args.envoy, pid_dir, cfg, tag))
        log(f"workers={concurrency}: starting {len(envoys)} Envoys")
        for e in envoys:
            e.start()
        for e in envoys:
            e.wait_ready()
        token_of = {e.name: (cps[e.setup["store"]].api_token() if e.setup["group"] == "t"
                             else tokens.get(e.setup["alg"], default_token)) for e in envoys}
        many = next((subject_tokens(c, MANY_SUBJECTS) for c in bench_input["cases"] if c["alg"] == "HS256"), None)
        script_of = {e.name: subjects_script(args.workdir, many) for e in envoys if e.setup["group"] == "dm"}
        script_of.update({e.name: near_script(args.workdir, token_of[e.name])
                          for e in envoys if e.setup["group"] == "dn"})
        for e in envoys:
            if e.setup["group"] == "dm":
                token_of[e.name] = many[0]
        for e in envoys:
            (hmac_sanity_check if hmac_group(e.setup) else sanity_check)(e, token_of[e.name])
        log(f"workers={concurrency}: all setups answer 200 to the token (and 401 without it / forged); warming up")
        for e in envoys:
            before = e.stats()
            w = (hmac_wrk(args, e, token_of[e.name], args.warmup) if hmac_group(e.setup)
                 else run_wrk(args.wrk, e.port, token_of[e.name], args.warmup, args.connections,
                              script_of.get(e.name)))
            check_run(e, w, before, e.stats())
            if e.setup["group"] in ("d", "dr"):
                check_feed_synced(e)
            results[e.name] = {"setup": e.setup, "concurrency": concurrency, "runs": [],
                               "rss_kb_after_warmup": e.rss_kb(), "base_id": read_text(e.dir / "base-id")}
        for r in range(args.runs):
            shift = (r * len(envoys)) // max(args.runs, 1)
            order = envoys[shift:] + envoys[:shift]
            log(f"workers={concurrency}: round {r + 1}/{args.runs} ({len(order)} setups x {args.duration}s)")
            for e in order:
                if e.setup["group"] == "dm":
                    # Its 1,000 leases were released while the other setups ran: one
                    # second of load takes them again, so the run measures the steady
                    # state (renewals), not each subject's first lease.
                    run_wrk(args.wrk, e.port, token_of[e.name], DM_REWARM_S, args.connections, script_of.get(e.name))
                before = e.stats()
                w = (hmac_wrk(args, e, token_of[e.name], args.duration) if hmac_group(e.setup)
                     else run_wrk(args.wrk, e.port, token_of[e.name], args.duration, args.connections,
                                  script_of.get(e.name)))
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
                                                      "bench_rl.http_local_rate_limit.",
                                                      "wasmcustom.portcullis.ratelimit.",
                                                      "wasmcustom.portcullis.revocation.",
                                                      "wasmcustom.portcullis.api_tokens.",
                                                      "wasmcustom.portcullis.audit.",
                                                      "wasmcustom.portcullis.guard."))}
            res["command"] = " ".join(e.cmd)
            res["wrk_command"] = (f"wrk -t1 -c{args.connections} -d{args.duration}s --latency "
                                  f"-H 'Authorization: Bearer <{e.setup['alg'] or args.algs[0]} token>' "
                                  f"http://127.0.0.1:<port>/bench")
    finally:
        for e in envoys:
            e.stop()
    return results


def check_feed_synced(envoy, timeout=10):
    """(d): the revocation replica must have been fetched from the control plane."""
    deadline = time.monotonic() + timeout
    while True:
        st = envoy.stats()
        if st.get("wasmcustom.portcullis.revocation.poll_ok", 0) > 0:
            return
        if time.monotonic() > deadline:
            found = {k: v for k, v in st.items() if k.startswith("wasmcustom.portcullis.revocation.")}
            raise BenchError(f"{envoy.name}: no successful revocation feed poll after the warm-up: {found}\n"
                             f"{envoy.log_tail()}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------
# (m) memory over a long run: many distinct tokens, the verified-token cache at capacity

MEMORY_TOKENS = 100_000  # distinct HS256 tokens (subjects), far above the cache's CACHE_SIZE
MEMORY_SCRIPT = """-- GET /bench cycling over the bearer tokens of %(path)s, one per line, from a random
-- start (bench/envoy_bench.py, (m)).
local reqs = {}
local i = 0
function init(args)
  for token in io.lines("%(path)s") do
    reqs[#reqs + 1] = wrk.format("GET", "/bench", {["Authorization"] = "Bearer " .. token})
  end
  math.randomseed(os.time())
  i = math.random(#reqs)
end
function request()
  i = i %% #reqs + 1
  return reqs[i]
end
"""


def memory_checkpoints(total):
    """Request counts after which VmRSS is read: the cache just full, 1 M, then `total`."""
    return sorted({c for c in (MEMORY_TOKENS, 1_000_000, total) if c <= total})


def bench_memory(args, bench_input):
    """(m): one Envoy (1 worker) with the (c) cached HS256 configuration (cache capacity
    CACHE_SIZE) under wrk cycling over MEMORY_TOKENS distinct tokens, in runs of at most
    60 s until `args.memory_requests` requests; VmRSS after the warm-up and at each
    checkpoint. Every run is checked like the interleaved cells (all 2xx, all allowed)."""
    case = next((c for c in bench_input["cases"] if c["alg"] == "HS256"), None)
    if case is None:
        return None
    tokens_path = args.workdir / "memory-tokens.txt"
    tokens_path.write_text("\n".join(subject_tokens(case, MEMORY_TOKENS)) + "\n")
    script = args.workdir / "memory.lua"
    script.write_text(MEMORY_SCRIPT % {"path": tokens_path})
    setup = {"id": "m-portcullis-HS256-cached-100k-tokens", "group": "m", "alg": "HS256", "cached": True}
    envoy = Envoy(setup, 1, args.workdir, args.envoy, args.pid_dir, bootstrap(setup, bench_input, args.wasm))
    checkpoints = memory_checkpoints(args.memory_requests)
    samples = []
    try:
        envoy.start()
        envoy.wait_ready()
        sanity_check(envoy, case["token"])
        before = envoy.stats()
        w = run_wrk(args.wrk, envoy.port, None, args.warmup, args.connections, script)
        check_run(envoy, w, before, envoy.stats())
        samples.append({"requests": 0, "rss_kb": envoy.rss_kb(), "what": "after a warm-up"})
        done, rps, t0 = 0, max(w["rps"], 1000.0), time.monotonic()
        log(f"(m) memory: {MEMORY_TOKENS:,} distinct tokens, checkpoints {checkpoints}")
        for cp in checkpoints:
            while done < cp:
                seconds = int(min(60, max(3, (cp - done) / rps + 1)))
                before = envoy.stats()
                w = run_wrk(args.wrk, envoy.port, None, seconds, args.connections, script)
                check_run(envoy, w, before, envoy.stats())
                done += w["requests"]
                rps = max(w["rps"], 1000.0)
            samples.append({"requests": done, "rss_kb": envoy.rss_kb(), "what": f"checkpoint {cp:,}",
                            "elapsed_s": round(time.monotonic() - t0, 1)})
            log(f"(m) {done:,} requests: VmRSS {samples[-1]['rss_kb']:,} kB")
        final = envoy.stats()
    finally:
        envoy.stop()
    return {"tokens": MEMORY_TOKENS, "cache_capacity": CACHE_SIZE, "workers": 1, "samples": samples,
            "counters": {k: v for k, v in final.items() if k.startswith("wasmcustom.portcullis.")}}


# ---------------------------------------------------------------------------------
# (f) control-plane throughput

LEASE_KEYS = 4
LEASE_SCRIPT = """-- POST /v1/ratelimit with one lease ask, cycling over %(n)d counter keys (bench/envoy_bench.py).
local reqs = {}
local i = 0
function init(args)
  for k = 1, %(n)d do
    local body = '{"asks":[{"key":"bench-k' .. k .. '","limit":100000000,"unit":"second","op":"lease",'
      .. '"maxLease":100,"holders":4,"ttlMs":2000}]}'
    reqs[k] = wrk.format("POST", "/v1/ratelimit", {["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer %(credential)s"}, body)
  end
end
function request()
  i = i %% #reqs + 1
  return reqs[i]
end
""" % {"n": LEASE_KEYS, "credential": CP_FLEET_CREDENTIAL}
LEASE_BODY = ('{"asks":[{"key":"bench-k1","limit":100000000,"unit":"second","op":"lease",'
              '"maxLease":100,"holders":4,"ttlMs":2000}]}')

CP_ENDPOINTS = [
    # id, method, path ({head}: a cursor at the feed's head after seeding), the route label
    # in the metrics; all on the internal listener, with the fleet credential.
    ("healthz", "GET", "/healthz", "/healthz"),
    ("lease", "POST", "/v1/ratelimit", "/v1/ratelimit"),
    # A snapshot's first part (here the whole state): what a new follower asks first.
    ("feed", "GET", "/v1/feed", "/v1/feed"),
    # A follower at the head: the filter's steady-state poll when nothing changed.
    ("feed_delta", "GET", "/v1/feed?cursor={head}", "/v1/feed"),
]


def route_counts(metrics, route, method):
    """(2xx, other) answers the control plane counted for the route."""
    ok = bad = 0
    for k, v in metrics.items():
        if k.startswith("portcullis_http_requests_total{") and f'route="{route}"' in k and f'method="{method}"' in k:
            if 'status="2' in k:
                ok += v
            else:
                bad += v
    return ok, bad


def check_cp_run(cp, ep, w, before, after):
    _, method, _, route = ep
    d = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    problems = []
    if w["non2xx"]:
        problems.append(f"wrk saw {w['non2xx']} non-2xx/3xx responses")
    if w["requests"] <= 0:
        problems.append("wrk completed no request")
    ok, bad = route_counts(d, route, method)
    if bad:
        problems.append(f"the control plane answered {bad:.0f} {route} requests with a non-2xx status")
    if ok < w["requests"]:
        problems.append(f"the control plane counted {ok:.0f} 2xx {route} answers for {w['requests']} wrk requests")
    granted = refused = None
    if ep[0] == "lease":
        granted = d.get('portcullis_rate_limit_decisions_total{op="lease",result="granted"}', 0)
        refused = d.get('portcullis_rate_limit_decisions_total{op="lease",result="refused"}', 0)
        if refused:
            problems.append(f"{refused:.0f} lease asks refused")
        if granted < w["requests"]:
            problems.append(f"{granted:.0f} leases granted for {w['requests']} wrk requests")
    if problems:
        raise BenchError(f"{cp.name} {route}: " + "; ".join(problems) + f"\n{cp.log_tail()}")
    return {"answered_2xx": int(ok), "leases_granted": None if granted is None else int(granted)}


def bench_control_plane(args, cps):
    script = args.workdir / "lease.lua"
    script.write_text(LEASE_SCRIPT)
    cells = [(store, ep) for store in cps for ep in CP_ENDPOINTS]
    results = {}

    def run(store, ep, seconds):
        cp = cps[store]
        before = cp.metrics()
        w = run_wrk_url(args.wrk, f"http://127.0.0.1:{cp.internal_port}{ep[2].format(head=cp.head)}", seconds,
                        args.connections, headers=[f"Authorization: Bearer {CP_FLEET_CREDENTIAL}"],
                        script=script if ep[0] == "lease" else None)
        w["counters"] = check_cp_run(cp, ep, w, before, cp.metrics())
        return w

    for store, ep in cells:
        cp = cps[store]
        headers = {"authorization": f"Bearer {CP_FLEET_CREDENTIAL}"}
        if ep[1] == "POST":
            headers["content-type"] = "application/json"
        status, body = http_request(("127.0.0.1", cp.internal_port), ep[1], ep[2].format(head=cp.head),
                                    body=LEASE_BODY if ep[1] == "POST" else None, headers=headers)
        if status != 200:
            raise BenchError(f"{cp.name}: {ep[1]} {ep[2]} answered {status}: {body[:300]}")
        if ep[0] == "lease" and json.loads(body)["results"][0]["granted"] <= 0:
            raise BenchError(f"{cp.name}: the lease ask was refused: {body[:300]}")
    log(f"control plane ({', '.join(cps)}): {len(cells)} cells answer 200; warming up")
    for store, ep in cells:
        run(store, ep, args.warmup)
        results[f"{store}-{ep[0]}"] = {"store": store, "endpoint": ep[0], "method": ep[1],
                                       "path": ep[2].format(head=cp.head), "runs": []}
    for r in range(args.runs):
        shift = (r * len(cells)) // max(args.runs, 1)
        order = cells[shift:] + cells[:shift]
        log(f"control plane: round {r + 1}/{args.runs} ({len(order)} cells x {args.duration}s)")
        for store, ep in order:
            w = run(store, ep, args.duration)
            w["round"] = r + 1
            results[f"{store}-{ep[0]}"]["runs"].append(w)
    for res in results.values():
        runs = res["runs"]
        res["rps"] = statistics.median(x["rps"] for x in runs)
        res["p50_us"] = statistics.median(x["p50_us"] for x in runs)
        res["p99_us"] = statistics.median(x["p99_us"] for x in runs)
        res["socket_errors"] = sum(x["socket_errors"] for x in runs)
        res["rss_kb_end"] = cps[res["store"]].rss_kb()
    return {
        "wrk_command": f"wrk -t1 -c{args.connections} -d{args.duration}s --latency "
                       f"-H 'Authorization: Bearer <fleet credential>' [-s lease.lua] "
                       f"http://127.0.0.1:<internal port><path>",
        "lease_script": LEASE_SCRIPT,
        "results": results,
    }


# ---------------------------------------------------------------------------------
# (g) a fresh Envoy syncing a large revocation state

# Index members never expire (the control plane's NEVER_MS, the year 9999).
NEVER_MS = 253_402_300_799_000


def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
    return b"".join(out)


def seed_redis(port, db, revoked, users, exp):
    """Writes `revoked` revoked token ids and `users` users with minimum version 2 into
    Redis database `db`, laid out as the control plane keeps them (docs/control-plane.md,
    "Redis key layout"), with pipelined commands: the bulk path, no feed entries."""
    import socket
    commands = [resp("SELECT", db)]
    for start in range(0, revoked, 1000):
        args = ["ZADD", "portcullis:{set:revoked-jtis}"]
        for i in range(start, min(start + 1000, revoked)):
            args += [exp * 1000, f"bench-jti-{i:06d}"]
        commands.append(resp(*args))
    for start in range(0, users, 1000):
        args = ["ZADD", "portcullis:{set:user-min-versions}"]
        for i in range(start, min(start + 1000, users)):
            args += [NEVER_MS, f"bench-user-{i:06d}@example.com\x1f2"]
        commands.append(resp(*args))
    for i in range(users):
        commands.append(resp("HSET", f"portcullis:{{record:user-min-version/bench-user-{i:06d}@example.com}}", "v", 2))
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        reader = sock.makefile("rb")
        for start in range(0, len(commands), 2000):
            batch = commands[start:start + 2000]
            sock.sendall(b"".join(batch))
            for _ in batch:
                line = reader.readline()
                if not line.startswith((b":", b"+")):
                    raise BenchError(f"seeding redis: {line!r}")


def sync_plugin(bench_input):
    """The (c) cached configuration plus the revocation feed, one poll a second, pages
    allowed 5 s (a large snapshot is built by the control plane while the machine is busy)."""
    case = bench_input["cases"][0]
    return {
        "realm": "bench",
        "providers": {"bench": {"issuer": bench_input["issuer"], "audiences": [bench_input["audience"]],
                                "algorithms": [case["alg"]], "jwks": {"keys": [case["jwk"]]}}},
        "rules": [{"name": "all", "match": {"pathPrefix": "/"}, "requires": {"provider": "bench"}}],
        "controlPlane": dict(CONTROL_PLANE_SECTION),
        "revocation": {"pollIntervalMs": 1000, "timeoutMs": 5000, "maxStalenessSeconds": 600},
    }


def bench_feed_sync(args, bench_input, redis_bin):
    """For an empty state and one of `args.sync_entries` revoked ids + as many revoked
    users, on Redis: start a fresh Envoy (2 workers) and time it until its filter has
    published the replica (counter `revocation.snapshots_assembled`), then read its RSS.
    Cases interleaved per round; each run is a new Envoy against the same control plane."""
    n = args.sync_entries
    cases = {"empty": (0, 0), "large": (n, n)}
    redis = Redis(redis_bin, args.workdir / "sync", args.pid_dir)
    cps = {}
    results = {name: {"revoked": r, "users": u, "runs": []} for name, (r, u) in cases.items()}
    try:
        redis.start()
        for db, (name, (revoked, users)) in enumerate(cases.items()):
            t0 = time.monotonic()
            seed_redis(redis.port, db, revoked, users, int(time.time()) + 86400)
            results[name]["seed_s"] = round(time.monotonic() - t0, 2)
            cp = ControlPlane(args.control_plane, "redis", args.workdir / "sync", args.pid_dir,
                              redis_url=f"redis://127.0.0.1:{redis.port}/{db}", name=f"control-plane-{name}")
            cp.start()
            cps[name] = cp
        log(f"(g) feed sync: empty and {n} + {n} entries seeded; {args.runs} rounds")
        names = list(cases)
        for r in range(args.runs):
            order = names[r % 2:] + names[:r % 2]
            for name in order:
                results[name]["runs"].append(sync_once(args, bench_input, cps[name], name, r, cases[name]))
        for name, res in results.items():
            runs = res["runs"]
            for key in ("from_start_s", "from_ready_s", "rss_kb", "pages"):
                res[key] = statistics.median(x[key] for x in runs)
            res["cp_rss_kb_end"] = cps[name].rss_kb()
    finally:
        for cp in cps.values():
            cp.stop()
        redis.stop()
    return {"entries": n, "workers": 2, "plugin": sync_plugin(bench_input), "results": results}


def sync_once(args, bench_input, cp, name, round_no, expected):
    setup = {"id": f"g-sync-{name}-r{round_no + 1}", "group": "g", "alg": None, "cached": True}
    cfg = bootstrap(setup, bench_input, args.wasm, cp.internal_port,
                    filters=[wasm_filter(sync_plugin(bench_input), args.wasm)])
    envoy = Envoy(setup, 2, args.workdir / "sync", args.envoy, args.pid_dir, cfg)
    try:
        started = time.monotonic()
        envoy.start()
        envoy.wait_ready()
        ready = time.monotonic()
        deadline = ready + 300
        while True:
            st = envoy.stats()
            # The gauges are set right after the counter: wait for both.
            if (st.get("wasmcustom.portcullis.revocation.snapshots_assembled", 0) >= 1
                    and (st.get("wasmcustom.portcullis.revocation.revoked_entries"),
                         st.get("wasmcustom.portcullis.revocation.user_entries")) == expected):
                synced = time.monotonic()
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{envoy.name}: no replica after 300 s: "
                                 f"{ {k: v for k, v in st.items() if 'revocation' in k} }\n{envoy.log_tail()}")
            time.sleep(0.02)
        got = (st.get("wasmcustom.portcullis.revocation.revoked_entries"),
               st.get("wasmcustom.portcullis.revocation.user_entries"))
        if got != expected:
            raise BenchError(f"{envoy.name}: the replica holds {got} entries, expected {expected}")
        return {"round": round_no + 1, "from_start_s": round(synced - started, 3),
                "from_ready_s": round(synced - ready, 3), "rss_kb": envoy.rss_kb(),
                "pages": st.get("wasmcustom.portcullis.revocation.snapshot_pages", 0),
                "failed_polls": st.get("wasmcustom.portcullis.revocation.poll_failed", 0)}
    finally:
        envoy.stop()


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
    p.add_argument("--control-plane", type=Path,
                   help="portcullis-control-plane binary: enables (d) and (f); without it both are skipped")
    p.add_argument("--redis-server", type=Path, help="redis-server binary: adds the Redis store to (d) and (f)")
    p.add_argument("--cp-stores", default="embedded,redis", help="control-plane stores for (d) and (f)")
    p.add_argument("--sync-entries", type=int, default=100000,
                   help="(g): revoked ids and revoked users a fresh Envoy syncs (0: skip (g))")
    p.add_argument("--memory-requests", type=int, default=10_000_000,
                   help="(m): requests over 100,000 distinct tokens before the last VmRSS reading (0: skip (m))")
    p.add_argument("--groups", default="",
                   help="only these setup groups (comma-separated letters: a,c0,b,c,d,dr,dl,dm,dn,t,u,h,hj,e; "
                        "f, g, m for the control plane's throughput, the feed sync, memory); empty: all")
    p.add_argument("--shape", type=int, default=1,
                   help=f"1: also measure the headline rows at {SHAPE_CONNECTIONS_PER_WORKER} connections per worker")
    args = p.parse_args()
    args.groups = {g for g in args.groups.split(",") if g}

    def wanted(group):
        return not args.groups or group in args.groups
    args.algs = [a for a in args.algs.split(",") if a]
    unknown = [a for a in args.algs if a not in ALGS]
    if unknown:
        p.error(f"unknown algorithms {unknown}; choose from {ALGS}")
    bench_input = json.loads(args.input.read_text())
    if args.control_plane:
        args.control_plane = Path(os.path.abspath(args.control_plane))
    if args.redis_server:
        args.redis_server = Path(os.path.abspath(args.redis_server))
    args.workdir = Path(os.path.abspath(args.workdir))
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
    cps, redis, cp_doc, sync_doc, memory_doc = {}, None, None, None, None
    stores = [x for x in args.cp_stores.split(",") if x] if args.control_plane else []
    skipped = {}
    if "redis" in stores and not (args.redis_server and args.redis_server.exists()):
        stores.remove("redis")
        skipped["redis"] = "redis-server not found"
    try:
        if stores:
            if "redis" in stores:
                redis = Redis(args.redis_server, args.workdir, args.pid_dir)
                redis.start()
            for store in stores:
                cp = ControlPlane(args.control_plane, store, args.workdir, args.pid_dir,
                                  redis_url=f"redis://127.0.0.1:{redis.port}/" if store == "redis" else None)
                cps[store] = cp
                cp.start()
                cp.seed()
            log(f"control plane `{args.control_plane}` on stores {', '.join(f'{s}:{c.port}' for s, c in cps.items())}")
        concurrencies = [int(x) for x in args.concurrency.split(",") if x]
        for c in concurrencies:
            all_results.update(bench_concurrency(args, bench_input, c, args.pid_dir, cps))
        shape_results = {}
        if args.shape:
            for c in concurrencies:
                shape_args = copy.copy(args)
                shape_args.connections = SHAPE_CONNECTIONS_PER_WORKER * c
                log(f"load shape: workers={c}, {shape_args.connections} connections")
                shape_results.update(bench_concurrency(shape_args, bench_input, c, args.pid_dir, cps,
                                                       keep=lambda s: headline(s, list(cps)), tag="-shape"))
        if cps and wanted("f"):
            t0 = time.time()
            cp_doc = bench_control_plane(args, cps)
            cp_doc["elapsed_s"] = round(time.time() - t0, 1)
            cp_doc["binary"] = str(args.control_plane)
            cp_doc["redis_version"] = redis.version() if redis else None
            cp_doc["skipped"] = skipped
        if (wanted("g") and args.control_plane and args.sync_entries > 0 and args.redis_server
                and args.redis_server.exists()):
            t0 = time.time()
            sync_doc = bench_feed_sync(args, bench_input, args.redis_server)
            sync_doc["elapsed_s"] = round(time.time() - t0, 1)
        if wanted("m") and args.memory_requests > 0 and "HS256" in args.algs:
            t0 = time.time()
            memory_doc = bench_memory(args, bench_input)
            memory_doc["elapsed_s"] = round(time.time() - t0, 1)
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        for cp in cps.values():
            cp.stop()
        if redis:
            redis.stop()
    doc = {
        "params": {"connections": args.connections, "duration_s": args.duration, "warmup_s": args.warmup,
                   "runs": args.runs, "concurrency": args.concurrency, "algs": args.algs,
                   "jwt_cache_size": CACHE_SIZE, "d_limit": D_LIMIT, "near_limit": NEAR_LIMIT,
                   "near_delay_ms": NEAR_DELAY_MS, "cp_stores": list(cps), "groups": sorted(args.groups),
                   "cp_skipped": skipped},
        "elapsed_s": round(time.time() - started, 1),
        "wasm": wasm_info,
        "results": all_results,
        "shape": {"connections_per_worker": SHAPE_CONNECTIONS_PER_WORKER, "results": shape_results}
        if args.shape else None,
        "control_plane": cp_doc,
        "feed_sync": sync_doc,
        "memory": memory_doc,
    }
    args.out.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
