#!/usr/bin/env bash
# Which toolchain builds the .wasm: the one answer the Makefile and scripts/setup.sh share.
#
#   rustup   rustup's toolchain has the standard library of both wasm targets:
#            wasm32-wasip1 (the filter) and wasm32-unknown-unknown (core's tests under
#            wasm-bindgen-test). `cargo` on PATH builds both.
#   debian   otherwise: Debian's Rust (/usr/bin/cargo, /usr/bin/rustc) builds std from
#            source (-Z build-std); scripts/setup.sh installs it (../shared/TOOLCHAIN.md).
set -euo pipefail
if command -v rustup >/dev/null 2>&1; then
  installed=$(rustup target list --installed 2>/dev/null || true)
  if grep -qx wasm32-wasip1 <<<"$installed" && grep -qx wasm32-unknown-unknown <<<"$installed"; then
    echo rustup
    exit 0
  fi
fi
echo debian
