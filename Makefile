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

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_pg .pytest_cache .mypy_cache .ruff_cache
