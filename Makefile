# Ingot: `make dev` runs everything locally, `make test` checks everything.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Build caches live outside the checkout so clones and CI reruns share them.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ingot/target
VENV := .venv
PYTHON ?= python3
# The venv's tools (cargo-lambda, cfn-lint) come first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# The AWS emulator under make dev, the tests and the benchmarks: ministack
# (the default, chosen by tests/conformance.rs and the load test; see
# docs/local-cloud.md) or moto. Each has its own venv: their botocore pins clash.
EMULATOR ?= ministack
export INGOT_EMULATOR := $(EMULATOR)

.PHONY: help venv browser dev trigger test lint unit template-check iam-check package package-check arm64-toolchain bench bench-chat bench-floor loadtest fuzz deploy destroy redrive branch clean

# Stage for deploy/destroy/redrive: dev, staging, prod (samconfig.toml), or
# an ephemeral one such as pr-123. `local` is make dev's stack, in the emulator.
STAGE ?= local
# The stages with their own samconfig.toml environment; any other stage
# deploys with the `ephemeral` environment as stack ingot-<stage>.
NAMED_STAGES := dev staging prod

help:
	@echo "make dev      run the whole system locally (emulated AWS, all functions, event sources)"
	@echo "make test     fmt, clippy, unit + integration tests, template checks"
	@echo "make trigger FUNCTION=price-fetch   fire a scheduled function now (while make dev runs)"
	@echo "make package  the six arm64 functions, built by sam build as sam deploy ships them (.aws-sam/build)"
	@echo "make package-check [FUNCTION=rollup]    package, then boot each arm64 bootstrap under qemu with its sample event"
	@echo "make bench    binary sizes (x86_64 and arm64), cold init, peak RSS -> docs/perf.md"
	@echo "make bench-chat  the chat proxy's time to first byte alone -> docs/perf.md"
	@echo "make bench-floor the runtime's CPU floor per warm invocation -> docs/perf.md"
	@echo "make loadtest open-loop load against a running make dev (or a deployed stage), exact-count check -> docs/perf.md"
	@echo "make dev|test EMULATOR=moto   on moto instead of ministack (its conformance scaling case fails: docs/local-cloud.md)"
	@echo "make fuzz     schemathesis against a running make dev, from docs/openapi.yaml -> docs/reliability.md"
	@echo "make deploy STAGE=pr-123    sam build + deploy a stage (needs the SAM CLI and AWS credentials)"
	@echo "make destroy STAGE=pr-123   delete a stage's stack (never prod)"
	@echo "make redrive [STAGE=local]  move dead-lettered usage events back onto the queue"
	@echo "make branch FROM=prod TO=pr-123 [AT=2026-11-22T10:00:00Z]   restore one stage's tables into another's"

venv: $(VENV)/.installed .venv-$(EMULATOR)/.installed

$(VENV)/.installed: infra/requirements.txt infra/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/requirements.txt -c infra/constraints.txt
	touch $@

# Every package pinned (a pip freeze), so an emulator upgrade is a reviewed change.
.venv-%/.installed: infra/emulator-%.txt
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/pip install --quiet --disable-pip-version-check --no-deps -r $<
	touch $@

# RELEASE=1 serves optimised builds, the local cloud's own processes (poller,
# sandboxes) included (slower first build; what loadtest should measure).
LOCAL_PROFILE := $(if $(RELEASE),release,debug)
dev: venv
	cargo build --quiet $(if $(RELEASE),--release) -p ingot-infra
	INGOT_RELEASE=$(RELEASE) $(CARGO_TARGET_DIR)/$(LOCAL_PROFILE)/infra dev

trigger:
	cargo run --quiet -p ingot-infra -- trigger $(FUNCTION)

test: venv browser lint unit template-check iam-check

# The dashboard test renders the page in Debian's headless Chromium.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

# The integration tests note every AWS call each function's code makes
# (tests/support/calls.rs) for iam-check.
SDK_CALLS := $(CURDIR)/.local/sdk-calls
unit: venv browser
	rm -rf $(SDK_CALLS) && mkdir -p $(SDK_CALLS)
	INGOT_SDK_CALLS=$(SDK_CALLS) cargo test --workspace --locked

# Least privilege: each function's grants in template.yaml against the calls
# its code made under `make unit`, both ways.
iam-check: unit
	$(VENV)/bin/python infra/check_iam.py template.yaml $(SDK_CALLS)

template-check: venv
	$(VENV)/bin/python infra/check_template.py template.yaml
	SAM_CLI_TELEMETRY=0 $(VENV)/bin/sam validate --lint

# arm64 as `sam deploy` ships it: `sam build` (the template's
# rust-cargolambda build method, a beta feature) runs `cargo lambda build
# --release --arm64` per function into .aws-sam/build/<Function>/bootstrap.
# rustup's aarch64 target is used when installed; rustup here cannot download
# it, so otherwise Debian's toolchain with an arm64 std is installed and
# linked as rustup toolchain `deb` (infra/arm64-toolchain.sh).
# FUNCTION=rollup (binary names, space-separated) builds only those.
ARM64_TOOLCHAIN = $(shell rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu || echo deb)
# price-fetch -> PriceFetchFunction, the template's logical id.
LOGICAL_IDS = $(foreach f,$(FUNCTION),$(shell echo $(f) | sed -E 's/(^|-)([a-z])/\U\2/g')Function)
package: venv arm64-toolchain
	for id in $(or $(LOGICAL_IDS),all); do \
	  SAM_CLI_TELEMETRY=0 $(if $(ARM64_TOOLCHAIN),RUSTUP_TOOLCHAIN=$(ARM64_TOOLCHAIN)) \
	    $(VENV)/bin/sam build --beta-features $${id#all}; \
	done

arm64-toolchain:
	@[ -z "$(ARM64_TOOLCHAIN)" ] || bash infra/arm64-toolchain.sh

# Boots each packaged function under qemu-user (installed with the
# toolchain) against a private emulator and the upstream stubs.
package-check: package
	cargo run --quiet --locked -p ingot-infra -- package-check $(FUNCTION)

# Each function is built alone, as `sam build` does, so features of other
# workspace crates do not leak into its binary.
FUNCTIONS := prices price-fetch chat-stream ingest rollup usage
bench: venv package
	for f in $(FUNCTIONS); do cargo build --release --locked --quiet --bin $$f; done
	cargo run --quiet --locked --release -p ingot-infra -- bench

# The runtime's CPU floor alone: release ingest and rollup handed
# invocations that make no store call.
bench-floor:
	for f in ingest rollup; do cargo build --release --locked --quiet --bin $$f; done
	cargo run --quiet --locked --release -p ingot-infra -- bench floor

# The chat figures alone (release chat-stream through the Runtime API).
bench-chat:
	cargo build --release --locked --quiet --bin chat-stream
	cargo run --quiet --locked --release -p ingot-infra -- bench chat

# Needs `make dev` running (ideally `make dev RELEASE=1`, so CPU figures are
# of optimised code), or a deployed stage (LOADTEST_INGEST_URL,
# LOADTEST_USAGE_URL, LOADTEST_ADMIN_TOKEN). LOADTEST_RATE (330 req/s),
# LOADTEST_SECONDS (60), LOADTEST_EVENTS_PER_REQUEST (1), LOADTEST_MIX
# (seed | ingest), LOADTEST_TENANTS (20), LOADTEST_RESEND_PERCENT (10). The
# generator is an optimised build.
loadtest:
	cargo run --quiet --locked --release -p ingot-infra -- loadtest

# Needs `make dev` running. FUZZ_EXAMPLES (20) per operation and phase, FUZZ_SEED (1).
FUZZ_VENV := .venv-fuzz
$(FUZZ_VENV)/.installed: infra/fuzz-requirements.txt infra/fuzz-constraints.txt
	$(PYTHON) -m venv $(FUZZ_VENV)
	$(FUZZ_VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/fuzz-requirements.txt -c infra/fuzz-constraints.txt
	touch $@

fuzz: $(FUZZ_VENV)/.installed
	$(FUZZ_VENV)/bin/python infra/fuzz.py

deploy: venv
	@command -v sam >/dev/null || { echo "deploying needs the AWS SAM CLI (pip install aws-sam-cli) and AWS credentials"; exit 1; }
	@[ "$(STAGE)" != local ] || { echo "set STAGE (dev, staging, prod, or e.g. pr-123)"; exit 1; }
	sam build
	if [[ " $(NAMED_STAGES) " == *" $(STAGE) "* ]]; then \
	  sam deploy --config-env $(STAGE); \
	else \
	  sam deploy --config-env ephemeral --stack-name ingot-$(STAGE) --s3-prefix ingot-$(STAGE) \
	    --parameter-overrides Stage=$(STAGE) LogLevel=debug LogRetentionDays=7; \
	fi

# Prod's tables survive a stack deletion (DeletionPolicy Retain), but prod is
# not deleted from here at all.
destroy:
	@command -v sam >/dev/null || { echo "needs the AWS SAM CLI (pip install aws-sam-cli) and AWS credentials"; exit 1; }
	@[ "$(STAGE)" != local ] && [ "$(STAGE)" != prod ] || { echo "refusing to destroy stage '$(STAGE)'"; exit 1; }
	sam delete --stack-name ingot-$(STAGE) --no-prompts

redrive:
	cargo run --quiet --locked -p ingot-infra -- redrive $(STAGE)

branch:
	@[ -n "$(FROM)" ] && [ -n "$(TO)" ] || { echo "usage: make branch FROM=<stage> TO=<stage> [AT=<RFC 3339 time>]"; exit 1; }
	cargo run --quiet --locked -p ingot-infra -- branch $(FROM) $(TO) $(AT)

clean:
	rm -rf .local $(VENV) $(FUZZ_VENV) .venv-ministack .venv-moto
