# textgen-operator: GPT-2 text generation on Ray Serve, deployed on KubeRay by a kopf operator.
# `make run` serves the app locally; `make test` sets everything up and runs the whole suite.
# Area targets live in mk/*.mk (serve, cluster, operator, deploy, bench); `make help` lists them all.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
PYTHON ?= python3
VENV ?= $(ROOT)/.venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CACHE := $(ROOT)/.cache
BIN := $(CACHE)/bin
export PATH := $(BIN):$(VENV)/bin:$(PATH)

# The tests' own Ray sessions: on loopback, no auth (`make run` turns Ray token auth on itself, see
# serve_app/run_local.py), quiet about usage stats.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_DISABLE_TELEMETRY ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK ?= 1

PYTEST_ARGS ?=

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z0-9_.-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: venv
venv: $(VENV)/.installed ## Create or update the Python virtualenv (.venv), reusing pip's cache.

# The project's three distributions, editable: the serving contract, the operator, the serve app with the bench and
# dev extras (one pip run, so the operator's and the app's textgen-contract is ./contract, never an index's).
# Versions come from constraints.txt (`make constraints`), as in the images.
$(VENV)/.installed: pyproject.toml operator/pyproject.toml contract/pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade 'pip>=24' >/dev/null
	$(PIP) install -c constraints.txt -e ./contract -e ./operator -e '.[bench,dev]'
	@# A checkout from before the split has the one distribution's metadata at the root, where pytest's path would
	@# find it before the operator's own (operator/textgen_operator.egg-info).
	@rm -rf textgen_operator.egg-info
	@touch $@

.PHONY: test
test: venv model cluster-build tools chart-tools ## Set everything up and run the whole test suite, then the end-to-end run on a local node.
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) e2e-local PYTEST_ARGS=

.PHONY: test-unit
test-unit: venv ## Run only the fast tests (no Ray, no cluster).
	$(PY) -m pytest -m "not ray and not cluster" $(PYTEST_ARGS)

.PHONY: lint
lint: venv lint-chart ## Lint Python (ruff, if installed) and the Helm chart.
	@if $(VENV)/bin/python -m ruff --version >/dev/null 2>&1; then $(PY) -m ruff check serve_app operator contract tests bench tools hack; fi

.PHONY: clean
clean: ## Remove build outputs (keeps .venv, .cache and .models).
	rm -rf build dist *.egg-info operator/*.egg-info contract/*.egg-info .pytest_cache

include $(sort $(wildcard mk/*.mk))
