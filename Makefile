# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv, installs Kiln from this checkout with an extra, then runs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The demo and tests need no GPU: a CPU build of torch keeps the install small.
# On a GPU machine: make demo TORCH=torch
TORCH ?= torch==2.13.0

.PHONY: demo test install-demo install-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# constraints.txt pins the versions the tests pass with (pip resolves in seconds, without backtracking).
install-demo: $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[demo]"

install-test: $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"

demo: install-demo
	$(BIN)/kiln run configs/demo.toml

test: install-test
	$(BIN)/ruff check .
	$(BIN)/pyright --pythonpath $(BIN)/python
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25
