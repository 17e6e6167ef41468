# Portcullis: make run (demo stack) and make test (everything) are all you need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT        := $(abspath .)
ENVOY       := $(ROOT)/.venv/bin/envoy
TOOLS       := $(ROOT)/.tools
WASM_TARGET_DIR := $(ROOT)/target/wasm
WASM        := $(WASM_TARGET_DIR)/wasm32-wasip1/release/portcullis_filter.wasm

# Build the wasm with rustup's target when it has one; otherwise with Debian's Rust,
# building std from source (see ../shared/TOOLCHAIN.md).
HAVE_RUSTUP_WASM := $(shell rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown && echo yes)
ifeq ($(HAVE_RUSTUP_WASM),yes)
WASM_CARGO  := cargo
WASM_PATH   := $(PATH)
WASIP1_ENV  :=
UNKNOWN_ENV :=
BUILD_STD   :=
else
WASM_CARGO  := /usr/bin/cargo
# Debian's cargo-clippy/clippy-driver must win over rustup's proxies for the wasm lint.
WASM_PATH   := /usr/bin:$(PATH)
WASIP1_ENV  := RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="-L /usr/lib/wasm32-wasi -C link-self-contained=no"
UNKNOWN_ENV := RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
BUILD_STD   := -Z build-std=std,panic_abort
endif

export PORTCULLIS_ENVOY := $(ENVOY)
export PORTCULLIS_WASM  := $(WASM)
export PORTCULLIS_BIN_DIR := $(ROOT)/target/debug

.PHONY: help setup build build-native build-wasm run test test-native test-wasm lint fmt bench clean

help:
	@echo "make run    start the demo stack (control plane + Envoy with the filter + demo upstream)"
	@echo "make test   run every test (installs what is missing first)"
	@echo "make bench  benchmarks beside native Envoy filters (writes bench/RESULTS.md)"
	@echo "make setup | build | lint | fmt | clean"

setup:
	@scripts/setup.sh

build: build-native build-wasm

build-native:
	cargo build --workspace --bins

build-wasm:
	CARGO_TARGET_DIR=$(WASM_TARGET_DIR) $(WASIP1_ENV) $(WASM_CARGO) build --release \
	  --target wasm32-wasip1 $(BUILD_STD) -p portcullis-filter
	@echo "filter: $(WASM) ($$(stat -c %s $(WASM)) bytes)"

run: setup build
	@scripts/run-demo.sh

# Unit tests, the store suite on every backend (real redis-server), manifests, and the
# end-to-end tests through a real Envoy loading the freshly built filter.
test: setup build test-native test-wasm
	@echo "all test suites passed"

test-native:
	@echo "real components: $$($(ENVOY) --version | grep -o 'version: [^ ]*' | head -n1 | sed 's/^/envoy /'), $$(redis-server --version | cut -d' ' -f1-3)"
	cargo test --workspace --no-fail-fast

# Core logic under wasm32-unknown-unknown with wasm-bindgen-test (run by node).
test-wasm:
	CARGO_TARGET_DIR=$(ROOT)/target/wasm-test $(UNKNOWN_ENV) \
	  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(TOOLS)/bin/wasm-bindgen-test-runner \
	  $(WASM_CARGO) test --target wasm32-unknown-unknown $(BUILD_STD) -p portcullis-core --tests

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	PATH="$(WASM_PATH)" CARGO_TARGET_DIR=$(ROOT)/target/wasm-clippy $(WASIP1_ENV) $(WASM_CARGO) clippy \
	  --target wasm32-wasip1 $(BUILD_STD) -p portcullis-core -p portcullis-filter -- -D warnings

fmt:
	cargo fmt --all

# Side-by-side benchmarks against native Envoy filters; regenerates bench/RESULTS.md.
bench: setup build
	bench/run.sh

clean:
	cargo clean
	rm -rf .run
