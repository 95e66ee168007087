# agenttest-operator. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KUBECONFIG_LINK := .agenttest/kubeconfig

.PHONY: help
help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@# The development kit (operator/agenttest_dev) is not in the wheel; name the
	@# source root on the venv's path so every python of the venv imports it,
	@# children with a scrubbed environment included (no PYTHONPATH to pass on).
	echo "$(CURDIR)/operator" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/agenttest-dev.pth"
	touch $@

.PHONY: venv
venv: $(STAMP) ## Create .venv with the project and its dev tools

.PHONY: tools
tools: $(STAMP) ## Install etcd (Debian etcd-server, as root) and build/cache the Kubernetes binaries
	@if ! command -v etcd >/dev/null && [ ! -x /usr/bin/etcd ] && [ -z "$$KUBEBUILDER_ASSETS" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing etcd-server (Debian package)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; \
	  else \
	    echo "error: etcd is missing: install the Debian package etcd-server (sudo apt-get install etcd-server) or set KUBEBUILDER_ASSETS" >&2; exit 1; \
	  fi; \
	fi
	$(BIN)/python -m agenttest_dev.devcluster build

.PHONY: crds
crds: $(STAMP) ## Regenerate crds/ from the pydantic models
	$(BIN)/python -m agenttest.crdgen crds

.PHONY: lint
lint: $(STAMP) ## ruff, mypy --strict, import contracts, and a check that crds/ is up to date
	$(BIN)/ruff check operator tests
	$(BIN)/ruff format --check operator tests
	$(BIN)/mypy operator/agenttest operator/agenttest_dev
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m agenttest.crdgen --check crds

.PHONY: test
test: tools ## Unit, integration and end-to-end tests (starts its own control plane)
	$(BIN)/python -m pytest tests

.PHONY: test-unit
test-unit: $(STAMP) ## Unit tests only (no I/O, seconds)
	$(BIN)/python -m pytest tests/unit

.PHONY: demo
demo: tools ## Control plane + scripted model + operator; one sample AgentTest watched to Succeeded
	$(BIN)/python -m agenttest_dev.demo

.PHONY: cluster
cluster: tools ## Start a local control plane with the CRDs until Ctrl-C; prints the kubeconfig path
	$(BIN)/python -m agenttest_dev.devcluster up --crds crds --kubeconfig-link $(KUBECONFIG_LINK)

.PHONY: run
run: $(STAMP) ## Run the operator against the current KUBECONFIG with the local backend enabled
	AGENTTEST_OPERATOR_NAMESPACE=$${AGENTTEST_OPERATOR_NAMESPACE:-default} \
	  $(BIN)/agenttest run --enable-local-backend --default-backend local

.PHONY: bench
bench: tools ## Benchmark: start latency, log-tail latency, API writes, memory (prints JSON)
	$(BIN)/python tests/bench/run.py

.PHONY: infra-synth
infra-synth: $(STAMP) ## Synthesize the AWS CDK app in infrastructure/ into cdk.out (no AWS account needed)
	cd infrastructure && ../$(BIN)/python app.py

.PHONY: clean
clean: ## Remove the virtualenv and caches (not the cached Kubernetes binaries)
	rm -rf $(VENV) .agenttest .mypy_cache .ruff_cache .pytest_cache
