# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
CONSTRAINTS := requirements/constraints.txt

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Stamp files record what has been installed, so repeated runs skip pip.
$(VENV)/.installed-base: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[demo]"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(CONSTRAINTS) requirements/test.txt | $(BIN)/python
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[test]" -r requirements/test.txt
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(CONSTRAINTS) requirements/bench.txt | $(BIN)/python
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[bench]" -r requirements/bench.txt
	touch $@

demo: $(VENV)/.installed-base
	$(BIN)/python -m softmaxce demo

# The suite twice: as installed, then as without numba (conftest.py: SOFTMAXCE_BLOCK_NUMBA),
# where "auto" must fall back to the NumPy core and the kernel tests skip (about a minute).
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	SOFTMAXCE_BLOCK_NUMBA=1 $(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src

bench: $(VENV)/.installed-bench
	$(BIN)/softmaxce bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
