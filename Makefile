# `make demo` and `make test` each set up a fresh machine first (scripts/setup.sh skips what is there).
VENV ?= .venv
PY := $(VENV)/bin/python
# `make demo DEMO_METHOD=sdpo`: the adapter alone, distilling from the first step (4 of 4 seeds at attempts 18-22;
# auto 4 of 4 at 25-38: docs/benchmarks.md, issue 21).
DEMO_METHOD ?= auto

.PHONY: setup demo test test-fast test-deploy test-images lint

setup:
	./scripts/setup.sh

# A problem whose checklist says what a person means (a tractor, on a farm, no talk about the task, 6-30 words):
# the default method against best-of-k, 4 seeds, each seed's solution and why; the adapters that learned are checked.
demo: setup
	$(VENV)/bin/sdpo solve examples/farm-tractor.json --method $(DEMO_METHOD) --seeds 4 --max-attempts 48 --attempts-per-step 8 --max-new-tokens 48 --baseline-attempts 128 --adapter-samples 16 --curve runs/demo-curve.svg

test: setup
	$(PY) -m pytest -q

# The unit tier: no Redis, no model, no sandbox processes (tests/conftest.py sets the tiers); about a minute here.
test-fast: setup
	$(PY) -m pytest -q -m unit

# Offline checks of the Dockerfile, compose file, Kubernetes manifests and dashboard (no Docker or cluster needed).
test-deploy: setup
	$(PY) -m pytest -q tests/test_deploy_*.py

# The images as deployed (docs/deploy.md, "Testing the images"): builds them with Docker, runs the stack from them
# on 127.0.0.1 and attacks it. Minutes, as root; not part of `make test`.
test-images: setup
	PYTHON=$(PY) ./deploy/test_images.sh

lint:
	$(VENV)/bin/ruff check .
