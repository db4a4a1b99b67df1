# Ingot: `make dev` runs everything locally, `make test` checks everything.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Build caches live outside the checkout so clones and CI reruns share them.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ingot/target
VENV := .venv
PYTHON ?= python3
# The venv's tools (moto_server, cargo-lambda, cfn-lint) come first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv browser dev trigger test lint unit template-check bench loadtest clean

help:
	@echo "make dev      run the whole system locally (emulated AWS, all functions, event sources)"
	@echo "make test     fmt, clippy, unit + integration tests, template checks"
	@echo "make trigger FUNCTION=price-fetch   fire a scheduled function now (while make dev runs)"
	@echo "make bench    binary sizes, cold init, peak RSS -> docs/perf.md"
	@echo "make loadtest load against a running make dev, exact-count check -> docs/perf.md"

venv: $(VENV)/.installed

$(VENV)/.installed: infra/requirements.txt infra/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/requirements.txt -c infra/constraints.txt
	touch $@

# RELEASE=1 serves optimised builds (slower first build; what loadtest should measure).
dev: venv
	cargo build --quiet -p ingot-local
	INGOT_RELEASE=$(RELEASE) $(CARGO_TARGET_DIR)/debug/ingot-local dev

trigger:
	cargo run --quiet -p ingot-local -- trigger $(FUNCTION)

test: venv browser lint unit template-check

# The dashboard test renders the page in Debian's headless Chromium.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

unit: venv browser
	cargo test --workspace --locked

template-check: venv
	$(VENV)/bin/python infra/check_template.py template.yaml

# Each function is built alone, as `sam build` does, so features of other
# workspace crates do not leak into its binary.
FUNCTIONS := prices price-fetch chat-stream ingest rollup usage
bench: venv
	for f in $(FUNCTIONS); do cargo build --release --locked --quiet --bin $$f; done
	cargo run --quiet --locked -p ingot-local -- bench

# Needs `make dev` running (ideally `make dev RELEASE=1`, so CPU figures are
# of optimised code). Rate, duration and tenants: LOADTEST_RATE,
# LOADTEST_SECONDS, LOADTEST_TENANTS, LOADTEST_EVENTS_PER_REQUEST.
loadtest:
	cargo run --quiet --locked -p ingot-local -- loadtest

clean:
	rm -rf .local $(VENV)
