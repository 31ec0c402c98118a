# Everything runs from a local .venv that `make` creates on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint venv clean bench

venv: $(STAMP)

# Re-install only when the project metadata changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "jobq needs Python >= 3.11; found " + sys.version.split()[0] + " (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The whole system in one process: API, dashboard and a worker with example jobs.
run: $(STAMP)
	$(BIN)/jobq up

# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: $(STAMP)
	@rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

# Benchmarks (not run by CI): `make bench`, or `make bench BENCH_ARGS=--quick`.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Chaos soak (not run by CI; tests/soak runs a small one): `make soak` runs 100,000
# jobs through 3 worker processes while workers are killed, backends terminated,
# PostgreSQL restarted and jobs cancelled; `make soak SOAK_ARGS='--jobs 20000 --seed 7'`.
# Writes soak/results/<date>.md; exits 1 if a job was lost, completed twice or stuck.
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python -m soak $(SOAK_ARGS)

# Long schemathesis run against the API (CI runs 40 derandomized examples per
# operation): `make fuzz-api`, or `make fuzz-api FUZZ_EXAMPLES=500 FUZZ_SEED=7`
# (FUZZ_SEED=random draws a seed and prints it; the summary line gives examples,
# calls, answers by status and seconds).
FUZZ_EXAMPLES ?= 1000
FUZZ_SEED ?= random
.PHONY: fuzz-api
fuzz-api: $(STAMP)
	JOBQ_SCHEMATHESIS_EXAMPLES=$(FUZZ_EXAMPLES) JOBQ_SCHEMATHESIS_SEED=$(FUZZ_SEED) \
		$(BIN)/pytest tests/api/test_schemathesis.py -s --timeout 0 $(PYTEST_ARGS)

# Sustained mixed load at the API (not run by CI; tests/soak runs a small one):
# `make load` drives 50 users for 10 minutes against a real `jobq serve` and a
# worker; `make load LOAD_ARGS='--users 20 --duration 60'`. Writes
# soak/results/load-<date>.md (and .json); exits 1 on any 5xx or transport error.
.PHONY: load
load: $(STAMP)
	$(BIN)/python -m soak.api_load $(LOAD_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench soak
	$(BIN)/ruff format --check src tests bench soak
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_pg .pytest_cache .mypy_cache .ruff_cache
