# `make demo` and `make test` each set up a fresh machine first (scripts/setup.sh skips what is there).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint

setup:
	./scripts/setup.sh

demo: setup
	$(VENV)/bin/sdpo solve examples/arithmetic.json --curve runs/demo-curve.svg

test: setup
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check .
