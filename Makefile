# The two commands of the README: `make run` and `make test`. Both do all set-up first.
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup run test lint unit integration e2e bench bench-setup bench-quick clean

setup:
	@bash scripts/bootstrap.sh

run: setup
	$(PY) -m controller dev

lint: setup
	$(PY) -m ruff check controller devtools tests bench scripts
	$(PY) -m ruff format --check controller devtools tests bench scripts
	$(PY) -m mypy controller devtools bench
	.venv/bin/lint-imports

# The second pass runs the whole integration tier again with PostgreSQL reached through PgBouncer
# in transaction mode, as managed PostgreSQL often is (about two minutes). The Dockerfile's build
# steps use no database.
PGBOUNCER_PASS := tests/integration --deselect tests/integration/test_dockerfile_install.py

test: lint
	$(PY) -m pytest tests -p no:cacheprovider -q --durations=15
	RELAY_TEST_VIA_PGBOUNCER=1 $(PY) -m pytest -p no:cacheprovider -q $(PGBOUNCER_PASS)

unit: setup
	$(PY) -m pytest tests/unit -q

integration: setup
	$(PY) -m pytest tests/integration -q

e2e: setup
	$(PY) -m pytest tests/e2e -q

# Benchmarks are not tests: peers (arq, SAQ from PyPI; BullMQ from npm) are installed only here.
# The Python peers get a venv of their own: arq pins redis-py < 6, which must not replace the
# redis-py the operator is tested and measured with.
PEERS := bench/.work/peers-venv
BENCH_STAMP = .venv/.bench-$(shell sha256sum pyproject.toml bench/peers/requirements.txt bench/peers/bullmq/package-lock.json | sha256sum | cut -c1-16)

bench-setup: setup
	@test -f $(BENCH_STAMP) || { $(PY) -m pip install -q -e '.[bench]' \
		&& rm -rf $(PEERS) && python3 -m venv $(PEERS) \
		&& $(PEERS)/bin/pip install -q -r bench/peers/requirements.txt \
		&& (cd bench/peers/bullmq && npm ci --no-audit --no-fund --silent) \
		&& rm -f .venv/.bench-* && touch $(BENCH_STAMP); }

bench: bench-setup
	$(PY) -m bench

bench-quick: bench-setup
	$(PY) -m bench --quick

clean:
	-$(PY) -m controller sandbox down --purge
	rm -rf .venv .mypy_cache .ruff_cache
