# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
CONSTRAINTS := requirements/constraints.txt

.PHONY: demo test docs lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Stamp files record what has been installed, so repeated runs skip pip.
$(VENV)/.installed-base: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[demo]"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(CONSTRAINTS) requirements/test.txt requirements/docs.txt | $(BIN)/python
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[test]" -r requirements/test.txt
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(CONSTRAINTS) requirements/bench.txt | $(BIN)/python
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[bench]" -r requirements/bench.txt
	touch $@

demo: $(VENV)/.installed-base
	$(BIN)/python -m softmaxce demo

# Material for MkDocs prints a banner about its successor on every build; the build is the same.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs

# The documentation site (mkdocs.yml) into site/.
docs: $(VENV)/.installed-test
	$(MKDOCS) build

# The site strictly (a broken link or anchor, or an API reference that does not resolve, fails
# the build: mkdocs.yml's `validation`; never with --quiet, which hides the warnings from
# --strict and lets a broken build pass), then the suite twice: as installed, then as without
# numba (conftest.py: SOFTMAXCE_BLOCK_NUMBA), where "auto" must fall back to the NumPy core and
# the kernel tests skip. Each pass runs in a few pytest processes in turn
# (scripts/run_tests.py), so that what one group compiles does not stay in memory for the next.
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(MKDOCS) build --strict
	$(BIN)/python scripts/run_tests.py
	SOFTMAXCE_BLOCK_NUMBA=1 $(BIN)/python scripts/run_tests.py -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src

bench: $(VENV)/.installed-bench
	$(BIN)/softmaxce bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis site
