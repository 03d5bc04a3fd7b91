# edgeroute: every target sets up what it needs (a virtual environment with the
# pinned dependencies from requirements.lock) and then runs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
MODELS ?= models
export RAY_USAGE_STATS_ENABLED = 0

.PHONY: setup demo test lint typecheck bench lock clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip sync --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/edgeroute demo --models $(MODELS) --report demo-report.json

test: setup lint typecheck
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check router runtime edge_node cloud_service edgeroute tests benchmarks
	$(BIN)/ruff format --check router runtime edge_node cloud_service edgeroute tests benchmarks

typecheck: setup
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m benchmarks.run_all

# Regenerate the lock file after changing dependencies in pyproject.toml.
lock: | $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
