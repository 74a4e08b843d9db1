# The two commands of the README: `make run` and `make test`. Both do all set-up first.
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup run test lint unit integration e2e bench bench-quick clean

setup:
	@bash scripts/bootstrap.sh

run: setup
	$(PY) -m controller dev

lint: setup
	$(PY) -m ruff check controller tests bench scripts
	$(PY) -m ruff format --check controller tests bench scripts
	$(PY) -m mypy controller
	.venv/bin/lint-imports

test: lint
	$(PY) -m pytest tests -p no:cacheprovider -q --durations=15

unit: setup
	$(PY) -m pytest tests/unit -q

integration: setup
	$(PY) -m pytest tests/integration -q

e2e: setup
	$(PY) -m pytest tests/e2e -q

bench: setup
	$(PY) -m bench

bench-quick: setup
	$(PY) -m bench --quick

clean:
	-$(PY) -m controller sandbox down --purge
	rm -rf .venv .mypy_cache .ruff_cache
