#!/usr/bin/env bash
# CPU per request of an Envoy with and without the filter, split by code object (Envoy
# binary, the filter's JIT-compiled wasm, kernel, libc), sampled with perf: the
# `make bench-profile` entry point. See bench/profile.py.
#
# Knobs (environment): PROFILE_SETUPS=a,c0,c,b  PROFILE_SECONDS=5  PROFILE_ROUNDS=2
#   PROFILE_OUT=<file> (the results as JSON)  PORTCULLIS_ENVOY, PORTCULLIS_WASM
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ENVOY=${PORTCULLIS_ENVOY:-$ROOT/.venv/bin/envoy}
WASM=${PORTCULLIS_WASM:-$ROOT/target/wasm/wasm32-wasip1/release/portcullis_filter.wasm}
die() { printf 'profile: %s\n' "$*" >&2; exit 1; }
[[ -x $ENVOY ]] || die "Envoy not found at $ENVOY: run \`make setup\`"
[[ -f $WASM ]] || die "filter not built at $WASM: run \`make build\`"
command -v wrk >/dev/null || die "wrk not found: run \`make setup-bench\`"
PERF=$(command -v perf) || die "perf not found: run \`make setup-bench\` (Debian package linux-perf)"
# The .venv launcher is a Python script: perf must sample the real binary, which the
# launcher execs, so its pid is Envoy's.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CARGO_TARGET_DIR="$ROOT/target/bench" cargo build --quiet --release \
  --manifest-path bench/verify-bench/Cargo.toml --bin mint-bench-tokens
"$ROOT/target/bench/release/mint-bench-tokens" "$ROOT" "$WORK/input.json"
args=(--envoy "$ENVOY" --wasm "$WASM" --perf "$PERF" --input "$WORK/input.json"
  --setups "${PROFILE_SETUPS:-a,c0,c,b}" --seconds "${PROFILE_SECONDS:-5}" --rounds "${PROFILE_ROUNDS:-2}")
if [[ -n ${PROFILE_OUT:-} ]]; then args+=(--out "$PROFILE_OUT"); fi
# (d-lease) needs the control plane's release build (make bench builds it).
CP=${PORTCULLIS_CONTROL_PLANE:-$ROOT/target/bench-cp/release/portcullis-control-plane}
if [[ -x $CP ]]; then args+=(--control-plane "$CP"); fi
python3 bench/profile.py "${args[@]}"
