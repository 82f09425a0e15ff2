# Two commands do all the set-up on a fresh Debian machine with Python 3:
#   make run    start the daemon on embedded defaults (SQLite journal, local state dir)
#   make test   run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: run test lint typecheck check bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/palyra daemon run $(ARGS)

test: $(STAMP)
	$(BIN)/pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python bench/ingress.py $(ARGS)

# Bounded fuzzing (fuzz/README.md): installs atheris into the venv if it can, else skips.
fuzz: $(STAMP)
	$(BIN)/python fuzz/run_ci.py $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
