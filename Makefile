# ctxgate: `make run` serves the demo gateway, `make test` runs every test.
# Both set up whatever a fresh clone lacks (scripts/bootstrap).

SHELL := /bin/bash
WASM_TARGET := wasm32-wasip1
WASM_DIR := target/$(WASM_TARGET)/wasm
export CARGO_TARGET_WASM32_WASIP1_RUNNER := node --no-warnings $(CURDIR)/scripts/wasi-run.mjs

.PHONY: all bootstrap build oci compose compose-down fleet run test test-unit test-wasm test-e2e lint fmt schema bench clean fuzz test-fuzz-corpus

all: build

bootstrap:
	@./scripts/bootstrap

## build: the pipeline on both engines: dist/ctxgate.wasm (wasm32-wasip1,
## release, LTO, panic=abort) and dist/libctxgate.so (the Envoy 1.40
## dynamic module, release)
build: bootstrap
	cargo build --profile wasm --target $(WASM_TARGET) -p ctxgate
	cargo build --release -p ctxgate-native
	@mkdir -p dist
	@# copy, then rename: an Envoy starting meanwhile never reads half a module
	@cp $(WASM_DIR)/ctxgate.wasm dist/.ctxgate.wasm.tmp && mv dist/.ctxgate.wasm.tmp dist/ctxgate.wasm
	@cp target/release/libctxgate.so dist/.libctxgate.so.tmp && mv dist/.libctxgate.so.tmp dist/libctxgate.so
	@rm -f dist/ctxgate_auth.wasm dist/ctxgate_ratelimit.wasm dist/ctxgate_tagging.wasm dist/ctxgate_breaker.wasm
	@ls -l dist/ctxgate.wasm dist/libctxgate.so

## run: the demo gateway on 127.0.0.1:10000 (admin 127.0.0.1:9901)
run: build
	./scripts/run

## compose: the demo stack in containers (deploy/compose/docker-compose.yaml):
## the Envoy config generated from envoy/demo.yaml (dist/compose/envoy.json),
## the demo keys, the services image ctxgate/services:dev, then `up`
## (Ctrl-C stops it; `make compose-down` removes it). COMPOSE_ARGS=--stand-ins
## also builds local stand-ins for the Envoy and Redis images (no registry).
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_ARGS ?=
compose: build
	cargo build --release -p ctxgate-demo -p ctxgate-rls -p ctxgate-audit
	cargo run -q --release -p ctxgate-e2e --bin ctxgate-compose -- $(COMPOSE_ARGS)
	$(COMPOSE) -f deploy/compose/docker-compose.yaml up

compose-down:
	$(COMPOSE) -f deploy/compose/docker-compose.yaml down --volumes

## fleet: three gateways, one RLS and Redis in containers, one tenant's
## load through each fault, one minute window per scenario: docs/fleet.md
## (about 9 minutes; a benchmark, not a test)
fleet: build
	cargo build --release -p ctxgate-demo -p ctxgate-rls -p ctxgate-audit
	cargo run --release -p ctxgate-e2e --bin ctxgate-fleet -- --out docs/fleet.md

## oci: the OCI image of dist/ctxgate.wasm for Istio's WasmPlugin (compat
## variant), without a container engine: dist/oci/layout and dist/oci/ctxgate-oci.tar
oci: build
	cargo run --release -p ctxgate-e2e --bin ctxgate-oci -- --wasm dist/ctxgate.wasm --out dist/oci

## test: formatting, lints, unit tests (native and wasm32-wasip1), end-to-end through Envoy
test: build lint test-unit test-wasm test-fuzz-corpus test-e2e

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo fmt --manifest-path fuzz/Cargo.toml --check
	cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings

test-unit:
	cargo test --workspace --exclude ctxgate-e2e

## the core logic compiled to wasm32-wasip1, run under Node's WASI
test-wasm: bootstrap
	cargo test --target $(WASM_TARGET) -p ctxgate-core

## Suites that run the gateway through Envoy run once per engine: every
## suite on wasm, then these on native (CTXGATE_ENGINE=native). The others
## hold no engine: Istio and its bundles (WasmPlugin loads wasm only),
## the compose stack and the fleet (containers of the wasm build), the
## schema, the OCI image and Envoy's own rate-limit filter.
NATIVE_SUITES := smoke auth tagging breaker ratelimit residency signature service_identity \
	mtls mcp mcp_peers paths shared_data rls_faults tracing audit observability alerts memory

test-e2e: build
	cargo build --release -p ctxgate-demo -p ctxgate-rls -p ctxgate-audit
	cargo build --profile wasm --target $(WASM_TARGET) -p ctxgate-wasm-floor
	cargo test -p ctxgate-e2e
	CTXGATE_ENGINE=native cargo test -p ctxgate-e2e $(addprefix --test ,$(NATIVE_SUITES))

fmt:
	cargo fmt --all

## schema: the configuration's JSON Schema (docs/ctxgate.schema.json) and
## the README's configuration reference, from the configuration types;
## `make test` fails while either is out of date
schema:
	cargo run -p ctxgate-e2e --bin ctxgate-schema

## fuzz: every cargo-fuzz target of fuzz/ for FUZZ_SECONDS each, one after
## the other (libFuzzer on stable Rust; FUZZ_SANITIZER=address needs
## RUSTC_BOOTSTRAP, set here). New inputs go to fuzz/target/corpus/, the
## committed seeds in fuzz/corpus/ are only read; crashes land in
## fuzz/artifacts/<target>/ and fail the run after every target has run.
FUZZ_SECONDS ?= 60
FUZZ_SANITIZER ?= none
FUZZ_ARGS ?=
FUZZ_TARGETS := token_inspect token_verify path query operation config records auth_request \
	mcp_request mcp_listing
FUZZ_CARGO := $(if $(filter none,$(FUZZ_SANITIZER)),,RUSTC_BOOTSTRAP=1) cargo fuzz
FUZZ_FLAGS := --sanitizer $(FUZZ_SANITIZER) \
	$(if $(filter none,$(FUZZ_SANITIZER)),,--target-dir fuzz/target/$(FUZZ_SANITIZER))
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	$(FUZZ_CARGO) build $(FUZZ_FLAGS)
	@failed=""; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/target/corpus/$$t; \
	  echo "== fuzz $$t: $(FUZZ_SECONDS) s"; \
	  $(FUZZ_CARGO) run $(FUZZ_FLAGS) $$t fuzz/target/corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
	    $(FUZZ_ARGS) || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashed:$$failed (inputs in fuzz/artifacts/)"; exit 1; fi

## test-fuzz-corpus: replay every committed fuzz corpus file (no libFuzzer)
test-fuzz-corpus:
	cargo test --manifest-path fuzz/Cargo.toml

## bench: throughput and latency against bare Envoy and native filters
bench: build
	cargo build --profile wasm --target $(WASM_TARGET) -p ctxgate-wasm-floor
	cargo build --release -p ctxgate-rls
	cargo run --release -p ctxgate-e2e --bin ctxgate-bench -- --out docs/benchmarks.md --readme README.md

clean:
	cargo clean
	rm -rf dist
