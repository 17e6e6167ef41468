# Portcullis: make run (demo stack) and make test (everything) are all you need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT        := $(abspath .)
ENVOY       := $(ROOT)/.venv/bin/envoy
TOOLS       := $(ROOT)/.tools
WASM_TARGET_DIR := $(ROOT)/target/wasm
WASM        := $(WASM_TARGET_DIR)/wasm32-wasip1/release/portcullis_filter.wasm

# Where `make install` puts portcullis and portcullis-control-plane: $(DESTDIR)$(PREFIX)/bin.
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin

# Which toolchain builds the wasm: rustup's when it has both wasm targets, otherwise
# Debian's Rust building std from source. scripts/wasm-toolchain.sh decides, for this
# Makefile and for scripts/setup.sh alike (see ../shared/TOOLCHAIN.md).
WASM_TOOLCHAIN := $(shell scripts/wasm-toolchain.sh)
ifeq ($(WASM_TOOLCHAIN),rustup)
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

.PHONY: help setup setup-build setup-run setup-test setup-bench setup-fuzz fuzz build build-native build-wasm run test test-native test-wasm lint fmt bench bench-profile clean schema install

help:
	@echo "make run      start the demo stack (control plane + Envoy with the filter + demo upstream)"
	@echo "make test     run every test (installs what is missing first)"
	@echo "make bench    benchmarks beside native Envoy filters (writes bench/RESULTS.md)"
	@echo "make bench-profile  CPU per request with and without the filter, by code object (perf)"
	@echo "make install  portcullis and portcullis-control-plane into $(BINDIR) (set PREFIX to change)"
	@echo "make schema   regenerate docs/plugin-config.schema.json and docs/openapi.json"
	@echo "make fuzz     fuzz every parser of client bytes, FUZZ_SECONDS (60) per target (fuzz/README.md)"
	@echo "make setup | build | lint | fmt | clean"

# What each goal needs, installed when missing: `make run` does not install what only the
# tests need (redis-server, node, wasm-bindgen-cli), nor the tests what only bench needs (wrk);
# only `make fuzz` installs a nightly toolchain and cargo-fuzz.
setup: setup-test
setup-build setup-run setup-test setup-bench setup-fuzz:
	@scripts/setup.sh $(patsubst setup-%,%,$@)

build: build-native build-wasm

build-native:
	cargo build --workspace --bins

build-wasm:
	CARGO_TARGET_DIR=$(WASM_TARGET_DIR) $(WASIP1_ENV) $(WASM_CARGO) build --release \
	  --target wasm32-wasip1 $(BUILD_STD) -p portcullis-filter
	@echo "filter: $(WASM) ($$(stat -c %s $(WASM)) bytes)"

run: setup-run build
	@scripts/run-demo.sh

# Unit tests, the store suite on every backend (real redis-server), manifests, and the
# end-to-end tests through a real Envoy loading the freshly built filter.
test: setup-test build test-native test-wasm
	@echo "all test suites passed"

test-native:
	@echo "real components: $$($(ENVOY) --version | grep -o 'version: [^ ]*' | head -n1 | sed 's/^/envoy /'), $$(redis-server --version | cut -d' ' -f1-3)"
	cargo test --workspace --no-fail-fast

# Core logic under wasm32-unknown-unknown with wasm-bindgen-test (run by node).
test-wasm:
	CARGO_TARGET_DIR=$(ROOT)/target/wasm-test $(UNKNOWN_ENV) \
	  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(TOOLS)/bin/wasm-bindgen-test-runner \
	  $(WASM_CARGO) test --target wasm32-unknown-unknown $(BUILD_STD) -p portcullis-core --tests

lint: setup-build
	cargo fmt --all -- --check
	python3 scripts/code-shape.py
	cargo clippy --workspace --all-targets -- -D warnings
	PATH="$(WASM_PATH)" CARGO_TARGET_DIR=$(ROOT)/target/wasm-clippy $(WASIP1_ENV) $(WASM_CARGO) clippy \
	  --target wasm32-wasip1 $(BUILD_STD) -p portcullis-core -p portcullis-filter -- -D warnings

fmt:
	cargo fmt --all

# Coverage-guided fuzzing (libFuzzer via cargo-fuzz, nightly) of every parser that reads
# client or control-plane bytes: each target of fuzz/ for FUZZ_SECONDS, one after another;
# fails if any finds a crash. FUZZ_TARGETS="path_normalize authn" runs some. Not part of
# `make test` or CI (a minute per target); see fuzz/README.md.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= all
fuzz: setup-fuzz
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_TARGETS="$(FUZZ_TARGETS)" scripts/fuzz.sh

# Side-by-side benchmarks against native Envoy filters; regenerates bench/RESULTS.md.
bench: setup-bench build
	bench/run.sh

# Where Envoy's CPU goes per request with and without the filter (perf, cpu-clock).
bench-profile: setup-bench build
	bench/profile.sh

# The plugin configuration's JSON Schema, generated from the config types; a test fails
# when the committed copy is not what they generate.
schema:
	cargo run -q -p portcullis-control-plane --bin portcullis -- config schema > docs/plugin-config.schema.json.tmp
	mv docs/plugin-config.schema.json.tmp docs/plugin-config.schema.json
	cargo run -q -p portcullis-control-plane --bin portcullis -- openapi > docs/openapi.json.tmp
	mv docs/openapi.json.tmp docs/openapi.json

# Release builds of the server and the CLI (profile `server`: see Cargo.toml).
install:
	cargo build --locked --profile server -p portcullis-control-plane --bins
	install -d "$(DESTDIR)$(BINDIR)"
	install -m 0755 target/server/portcullis target/server/portcullis-control-plane "$(DESTDIR)$(BINDIR)/"
	@echo "installed portcullis and portcullis-control-plane into $(DESTDIR)$(BINDIR)"

clean:
	cargo clean
	rm -rf .run
