# Every target sets up what it needs on first use: a virtual environment with
# the pinned packages (requirements-dev.lock) and the Kafka broker's jars
# (Maven Central, cached under ~/.cache/gr-s2s-consumer).
#
#   make demo          the whole flow on this machine
#   make test          lint, types, schema drift, unit + integration + fault (CI size) + deploy checks
#   make deploy-check  the deploy checks alone: chart lint/render/validate/scan, alerts
#                      under promtool, the image built and run (buildah/podman), the
#                      chart installed, upgraded and uninstalled on a real API server,
#                      its pods run on a real node (root; see README, Deploying, for
#                      the times measured cold and warm)
#   make bench         the benchmarks (long; not part of test)

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup kafka-jars lint test test-fast test-full demo bench bench-drain deploy-check clean

setup: $(STAMP)

$(STAMP): requirements-dev.lock pyproject.toml devtools/pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps -e . -e ./devtools
	@touch $@

kafka-jars: setup
	$(BIN)/python -m gr_devtools.kafka_local fetch

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m consumer.schema_export --check

# The README's test command; .ci/run calls exactly this. tests/deploy runs inside
# deploy-check.sh, which first builds the tools, the image and the cluster.
test: lint kafka-jars
	$(BIN)/pytest --ignore=tests/deploy --durations=15
	bash scripts/deploy-check.sh

# Quick loop while coding: no broker, no deploy tools.
test-fast: setup
	$(BIN)/pytest -m "not integration and not fault"

# The fault suite at full size (see README: Faults).
test-full: setup kafka-jars
	GR_FAULT_SCALE=full $(BIN)/pytest -m "fault" -s

demo: setup kafka-jars
	$(BIN)/gr-consumer demo

bench: setup kafka-jars
	$(BIN)/python -m bench

# One scenario: a realistic backlog drained at a rate-limited key's limit (about 4 min).
bench-drain: setup kafka-jars
	$(BIN)/python -m bench --only drain

deploy-check: setup kafka-jars
	bash scripts/deploy-check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
