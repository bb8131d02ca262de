# The targets are the same commands CI runs (.ci/run).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: all install run test fuzz lint typecheck fmt migrate clean bench loadtest cluster-test

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		(echo "Python >= 3.11 is required (set PYTHON=...)"; exit 1)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# What a maintainer runs before pushing.
all: install lint typecheck test

run: install
	$(VENV)/bin/pollinator up

# Also measures branch coverage of app/ and workers/, the e2e tests' subprocesses included
# ([tool.coverage] in pyproject.toml): prints the total and writes .data/coverage/coverage.xml;
# `.venv/bin/coverage report` then lists the misses. .ci/run holds the total above a floor.
test: install
	@rm -rf .data/coverage && mkdir -p .data/coverage
	$(PY) -m pytest --cov --cov-report=xml:.data/coverage/coverage.xml --cov-report=
	@echo "coverage of app/ and workers/ (lines and branches): $$($(VENV)/bin/coverage report --format=total)%"

# Six emulated hosts (network namespaces; root), every chaos scenario, ~15 minutes.
# POLLINATOR_CLUSTER_SCENARIOS=a,b picks some; the table lands in .data/cluster/cluster.md.
cluster-test: install
	$(PY) -m pytest tests/cluster -m cluster -s -p no:cacheprovider

# Schemathesis over every operation of /openapi.json of a running API (tests/fuzz);
# `make test` runs the same with 10 fuzzing examples per operation (~1,100 cases).
FUZZ_EXAMPLES ?= 300
fuzz: install
	POLLINATOR_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/fuzz

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

migrate: install
	$(VENV)/bin/pollinator migrate

bench: install
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b --quick || exit 1; done

loadtest: install
	$(VENV)/bin/pollinator loadtest --instances 1000 --refresh-minutes 1 --duration 180 \
		--resources contacts,orders --changes-per-second 20 --provider-latency-ms 100 --out loadtest-out

clean:
	rm -rf $(VENV) .data .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
