# edgeroute: every target sets up what it needs (a virtual environment with the
# pinned, hashed dependencies of the dev profile, requirements/dev.lock) and then runs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
MODELS ?= models
export RAY_USAGE_STATS_ENABLED = 0

.PHONY: setup demo test lint typecheck bench lock secrets clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

PROFILES := client edge cloud tools
SECRETS ?= secrets

$(VENV)/.installed: requirements/dev.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip sync --python $(BIN)/python --require-hashes requirements/dev.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/edgeroute demo --models $(MODELS) --report demo-report.json

test: setup lint typecheck
	$(BIN)/python -m pytest -q --durations=15

lint: setup
	$(BIN)/ruff check router runtime edge_node cloud_service edgeroute tests benchmarks
	$(BIN)/ruff format --check router runtime edge_node cloud_service edgeroute tests benchmarks

typecheck: setup
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m benchmarks.run_all

# Re-pin every profile's lock after changing dependencies in pyproject.toml. The dev lock
# is resolved first and constrains the others, so a package has one version everywhere.
LOCK_ARGS := --python-version 3.11 --generate-hashes --quiet
lock: | $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra dev $(LOCK_ARGS) -o requirements/dev.lock
	for p in $(PROFILES); do \
	  $(BIN)/uv pip compile pyproject.toml --extra $$p -c requirements/dev.lock $(LOCK_ARGS) \
	    -o requirements/$$p.lock || exit 1; \
	done

# The files docker-compose.yml mounts as secrets, with fresh random tokens (never in git):
# the cloud's tokens file, the edge's cloud token and the Ray cluster's auth token.
secrets:
	$(PYTHON) -m edgeroute.compose_secrets $(SECRETS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
