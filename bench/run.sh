#!/usr/bin/env bash
# Portcullis benchmarks, the `make bench` entry point. Everything in one go:
#   1. builds the verify microbenchmark (bench/verify-bench) natively and for wasm32-wasip1
#      with the same compiler, and mints one token per algorithm with the fixture keys;
#   2. microbenchmark: Provider::verify per algorithm, native and under node's WASI (V8);
#   3. Envoy benchmark (bench/envoy_bench.py): no filter, native jwt_authn, Portcullis,
#      Portcullis with the revocation feed and a quota-lease limit against a real control
#      plane (release build, embedded store and Redis), native local_ratelimit, at 1 and 2
#      workers, wrk on loopback; then the control plane's own throughput (leases, feed);
#      then (g): a fresh Envoy syncing 100k revoked ids + 100k revoked users from Redis,
#      time and memory, beside an empty state;
#   4. writes bench/RESULTS.md (bench/report.py) and prints the table.
#
# Knobs (environment): BENCH_CONCURRENCY=1,2  BENCH_ALGS=HS256,ES256,RS256,EdDSA
#   BENCH_CONNECTIONS=16  BENCH_DURATION=3  BENCH_WARMUP=2  BENCH_RUNS=3
#   BENCH_MICRO_MS=500 (per case and round)  BENCH_RESULTS=bench/RESULTS.md
#   BENCH_CP_STORES=embedded,redis (stores for (d) and (f); empty: skip both and (g))
#   BENCH_SYNC_ENTRIES=100000 (revoked ids and users for (g); 0: skip (g), which also
#     needs redis-server)
#   BENCH_MEMORY_REQUESTS=10000000 (requests of the (m) memory cell over 100,000 distinct
#     tokens, VmRSS read after 100,000, 1 M and this many; 0: skip (m))
#   BENCH_GROUPS= (only these setup groups, comma-separated: a,c0,b,c,d,dr,dl,dm,dn,t,u,h,hj,e,
#     and f, g, m for the control plane's throughput, the feed sync and memory; empty: all.
#     For a quick look at one cell: BENCH_GROUPS=c,dm BENCH_ALGS=HS256 BENCH_CONCURRENCY=2)
#   BENCH_SHAPE=1 (also measure the headline rows at 4 wrk connections per worker; 0: skip)
#   BENCH_PROFILE=1 (profile (p): perf samples of (a), (c0), (c), (b), CPU per request by
#     code object; skipped without perf; 0: skip)
#   BENCH_KEEP=1 (keep the work directory with configs and Envoy logs)
#   PORTCULLIS_ENVOY, PORTCULLIS_WASM (as for the tests)
#   PORTCULLIS_CONTROL_PLANE (a control-plane binary to use instead of building
#     `cargo build --release -p portcullis-control-plane` into target/bench-cp)
set -euo pipefail

STARTED=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ENVOY=${PORTCULLIS_ENVOY:-$ROOT/.venv/bin/envoy}
WASM=${PORTCULLIS_WASM:-$ROOT/target/wasm/wasm32-wasip1/release/portcullis_filter.wasm}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/RESULTS.md}
CONCURRENCY=${BENCH_CONCURRENCY:-1,2}
ALGS=${BENCH_ALGS:-HS256,ES256,RS256,EdDSA}
CONNECTIONS=${BENCH_CONNECTIONS:-16}
DURATION=${BENCH_DURATION:-3}
WARMUP=${BENCH_WARMUP:-2}
RUNS=${BENCH_RUNS:-3}
MICRO_MS=${BENCH_MICRO_MS:-500}
CP_STORES=${BENCH_CP_STORES-embedded,redis}

say() { printf '[bench] %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# --- prerequisites --------------------------------------------------------------------
[[ -x $ENVOY ]] || die "Envoy not found at $ENVOY: run \`make setup\` (or set PORTCULLIS_ENVOY)"
[[ -f $WASM ]] || die "filter not built at $WASM: run \`make build\` (or \`make build-wasm\`)"
WRK=$(command -v wrk) || die "wrk not found: run \`make setup\` (Debian package wrk)"
command -v python3 >/dev/null || die "python3 not found"
NODE=$(command -v node) || die "node not found (node >= 20 runs the wasm microbenchmark): run \`make setup\`"
node -e 'require("node:wasi")' 2>/dev/null || die "this node ($(node --version)) has no node:wasi; node >= 20 is needed"
command -v cargo >/dev/null || die "cargo not found: run \`make setup\`"
REDIS=$(command -v redis-server || true)  # optional: without it (d)/(f) skip the Redis store

# Same choice as the Makefile: rustup's wasm32-wasip1 when installed, else Debian's Rust
# building std from source. The native microbenchmark uses the same compiler as the wasm
# one, so the wasm/native ratio compares code generation for two targets, not two rustcs.
if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  CARGO=(cargo); RUSTC_BIN=$(rustc --print sysroot)/bin/rustc
  WASM_ENV=(); BUILD_STD=(); WASM_LINK=()
else
  [[ -x /usr/bin/cargo && -x /usr/bin/rustc && -d /usr/lib/rustlib/src/rust/library && -d /usr/lib/wasm32-wasi ]] \
    || die "no wasm32-wasip1 Rust toolchain (Debian rustc-web, rust-web-src, wasi-libc): run \`make setup\`"
  CARGO=(/usr/bin/cargo); RUSTC_BIN=/usr/bin/rustc
  WASM_ENV=(RUSTC_BOOTSTRAP=1 "RUSTFLAGS=-L /usr/lib/wasm32-wasi -C link-self-contained=no")
  BUILD_STD=(-Z build-std=std,panic_abort)
  # Without the self-contained CRT a WASI *command* needs wasi-libc's start file (`_start`);
  # passed through `cargo rustc` so only the final link sees it (std's build is reused).
  WASM_LINK=(-- -C link-arg=/usr/lib/wasm32-wasi/crt1-command.o)
fi

# --- work directory and cleanup -------------------------------------------------------
mkdir -p "$ROOT/target"
WORK=$(mktemp -d "$ROOT/target/bench-run.XXXXXX")
PIDS=$WORK/pids
mkdir -p "$PIDS"
CHILD=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # The Python driver stops its Envoys itself; this is the backstop if it died first.
  if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  local f pid
  for f in "$PIDS"/*.pid; do
    [[ -e $f ]] || continue
    pid=$(<"$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      sleep 0.5
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  if [[ $rc -ne 0 ]]; then
    say "FAILED (exit $rc); configs and Envoy logs kept in $WORK"
  elif [[ ${BENCH_KEEP:-0} == 1 ]]; then
    say "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background so the traps can interrupt the wait.
run_child() {
  "$@" &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}

# --- 1. build the microbenchmark and mint tokens -------------------------------------
MANIFEST=$ROOT/bench/verify-bench/Cargo.toml
NATIVE_DIR=$ROOT/target/bench
WASM_DIR=$ROOT/target/wasm-bench
say "building bench/verify-bench (native, release) with $("$RUSTC_BIN" --version)"
run_child env CARGO_TARGET_DIR="$NATIVE_DIR" RUSTC="$RUSTC_BIN" "${CARGO[@]}" build --quiet --release \
  --manifest-path "$MANIFEST" --bins
say "building bench/verify-bench (wasm32-wasip1, release)"
run_child env CARGO_TARGET_DIR="$WASM_DIR" RUSTC="$RUSTC_BIN" "${WASM_ENV[@]}" "${CARGO[@]}" rustc --quiet --release \
  --manifest-path "$MANIFEST" --target wasm32-wasip1 "${BUILD_STD[@]}" --bin verify-bench "${WASM_LINK[@]}"
NATIVE_BENCH=$NATIVE_DIR/release/verify-bench
WASM_BENCH=$WASM_DIR/wasm32-wasip1/release/verify-bench.wasm
"$NATIVE_DIR/release/mint-bench-tokens" "$ROOT" "$WORK/input.json"

# The control plane for (d) and (f): a release build (a debug build would make (f) measure
# unoptimised code), in its own target directory so it never invalidates `make build`'s.
CP_ARGS=()
if [[ -n $CP_STORES ]]; then
  if [[ -n ${PORTCULLIS_CONTROL_PLANE:-} ]]; then
    CONTROL_PLANE=$PORTCULLIS_CONTROL_PLANE
  else
    say "building the control plane (release, target/bench-cp)"
    run_child env CARGO_TARGET_DIR="$ROOT/target/bench-cp" cargo build --quiet --release \
      -p portcullis-control-plane --bin portcullis-control-plane
    CONTROL_PLANE=$ROOT/target/bench-cp/release/portcullis-control-plane
  fi
  [[ -x $CONTROL_PLANE ]] || die "control plane not found at $CONTROL_PLANE"
  CP_ARGS=(--control-plane "$CONTROL_PLANE" --cp-stores "$CP_STORES" --sync-entries "${BENCH_SYNC_ENTRIES:-100000}")
  if [[ -n $REDIS ]]; then CP_ARGS+=(--redis-server "$REDIS"); fi
fi

# --- 2. microbenchmark: native and wasm, alternated -----------------------------------
say "microbenchmark: Provider::verify, native vs wasm (node $(node --version), V8), 2 rounds"
for round in 1 2; do
  run_child "$NATIVE_BENCH" "$WORK/input.json" "$MICRO_MS" >"$WORK/micro-native-$round.json"
  run_child "$NODE" --no-warnings "$ROOT/bench/verify-bench/run-wasi.mjs" "$WASM_BENCH" \
    "$WORK/input.json" "$MICRO_MS" >"$WORK/micro-wasm-$round.json"
done

# --- 3. Envoy benchmark ----------------------------------------------------------------
say "Envoy benchmark: workers {$CONCURRENCY}, wrk 1 thread x $CONNECTIONS connections," \
  "warm-up ${WARMUP}s, $RUNS x ${DURATION}s per setup (interleaved)"
run_child python3 "$ROOT/bench/envoy_bench.py" \
  --envoy "$ENVOY" --wasm "$WASM" --wrk "$WRK" --input "$WORK/input.json" \
  --workdir "$WORK/envoy" --pid-dir "$PIDS" --out "$WORK/envoy.json" \
  --concurrency "$CONCURRENCY" --algs "$ALGS" --connections "$CONNECTIONS" \
  --duration "$DURATION" --warmup "$WARMUP" --runs "$RUNS" \
  --memory-requests "${BENCH_MEMORY_REQUESTS:-10000000}" --groups "${BENCH_GROUPS:-}" \
  --shape "${BENCH_SHAPE:-1}" "${CP_ARGS[@]}"

# --- 3b. profile: CPU per request by code object (perf), when perf can sample -----------
PROFILE_ARGS=()
if [[ ${BENCH_PROFILE:-1} == 1 ]] && PERF=$(command -v perf) \
    && "$PERF" record -q -e cpu-clock -o "$WORK/perf-probe.data" -- true >/dev/null 2>&1; then
  say "profile (p): perf cpu-clock over (a), (c0), (c) HS256 cached, (b) HS256 cached (and (d-lease))"
  CP_PROFILE=()
  if [[ -n ${CONTROL_PLANE:-} ]]; then CP_PROFILE=(--control-plane "$CONTROL_PLANE"); fi
  run_child python3 "$ROOT/bench/profile.py" --envoy "$ENVOY" --wasm "$WASM" --wrk "$WRK" --perf "$PERF" \
    --input "$WORK/input.json" --connections "$CONNECTIONS" --out "$WORK/profile.json" "${CP_PROFILE[@]}" \
    >"$WORK/profile.txt"
  PROFILE_ARGS=(--profile "$WORK/profile.json")
else
  say "profile (p) skipped: perf missing or not allowed to sample (BENCH_PROFILE=0 skips it too)"
fi

# --- 4. report -------------------------------------------------------------------------
run_child python3 "$ROOT/bench/report.py" \
  --envoy-results "$WORK/envoy.json" --micro "$WORK"/micro-native-*.json "$WORK"/micro-wasm-*.json \
  --envoy "$ENVOY" --wasm "$WASM" --wasm-bench "$WASM_BENCH" --rustc "$RUSTC_BIN" --node "$NODE" \
  --started "$STARTED" --out "$RESULTS" --micro-ms "$MICRO_MS" \
  --analysis "$ROOT/bench/ANALYSIS.md" "${PROFILE_ARGS[@]}"
say "wrote ${RESULTS#"$ROOT"/} in $(( $(date +%s) - STARTED ))s"
