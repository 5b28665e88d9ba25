# Tollgate: `make run` serves the demo, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export DEBUG ?= true

.PHONY: run test env check lint lock bench clean

# Dependencies come only from the hashed lock files (requirements/, written by `make lock`):
# `make run` installs the runtime lock, everything else adds the dev lock on top.
$(VENV)/.runtime: requirements/runtime.txt | .env
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q --require-hashes -r requirements/runtime.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed: requirements/dev.txt $(VENV)/.runtime
	$(PY) -m pip install --disable-pip-version-check -q --require-hashes -r requirements/dev.txt
	touch $@

env: $(VENV)/.installed

# The demo's settings, where manage.py reads them too: every README command then works from
# any shell. Written once, never overwritten; the environment still wins over it.
.env:
	printf '# Written by make for the demo; see .env.example for production.\nDEBUG=true\n' > $@

# The gateway and a Celery worker with beat (filesystem broker, log in var/log/celery.log).
run: $(VENV)/.runtime
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	$(PY) scripts/run_demo.py --port $(PORT)

test: env
	$(PY) scripts/run_tests.py

# The production process list (deploy/Procfile) on this machine: PostgreSQL, Redis (AOF),
# migrate and seed, two gateway instances, a Celery worker and beat, HAProxy on STACK_PORT.
STACK_PORT ?= 8080
.PHONY: stack
stack: $(VENV)/.runtime
	$(PY) scripts/run_stack.py --port $(STACK_PORT)

# What CI checks besides the tests: lint, formatting, types, migrations, the lock.
check: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) scripts/check_lock.py

lint: check

# Re-resolve the lock files after editing the dependencies in pyproject.toml.
LOCK_FLAGS := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links
lock: env
	$(PY) -m piptools compile $(LOCK_FLAGS) --build-deps-for editable \
		-o requirements/runtime.txt pyproject.toml
	$(PY) -m piptools compile $(LOCK_FLAGS) --build-deps-for editable --extra dev \
		-c requirements/runtime.txt -o requirements/dev.txt pyproject.toml
	$(PY) scripts/check_lock.py --stamp

bench: env
	$(PY) bench/proxy_bench.py

clean:
	rm -rf $(VENV) var/db.sqlite3
