# Tollgate: `make run` serves the demo, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export DEBUG ?= true

.PHONY: run test env lint bench clean

$(VENV)/.installed: pyproject.toml | .env
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q --upgrade pip
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

env: $(VENV)/.installed

# The demo's settings, where manage.py reads them too: every README command then works from
# any shell. Written once, never overwritten; the environment still wins over it.
.env:
	printf '# Written by make for the demo; see .env.example for production.\nDEBUG=true\n' > $@

run: env
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	$(PY) -m uvicorn gateway_portal.asgi:application --host 127.0.0.1 --port $(PORT) \
		--loop uvloop --http httptools --no-access-log

test: env
	$(PY) scripts/run_tests.py

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: env
	$(PY) bench/proxy_bench.py

clean:
	rm -rf $(VENV) var/db.sqlite3
