# Every target sets up what it needs: a virtualenv in .venv with callgate
# installed in editable mode and the development tools.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench clean docs fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo offers the local SMS provider and eSIM catalogue, which need no
# network and deliver nothing.
run: $(STAMP)
	CALLGATE_LOCAL_PROVIDERS=$${CALLGATE_LOCAL_PROVIDERS:-true} $(BIN)/callgate serve --seed-demo

lint: $(STAMP)
	$(BIN)/ruff check engine agi api tests bench
	$(BIN)/ruff format --check engine agi api tests bench
	$(BIN)/mypy engine

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/callpath.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

docs: $(STAMP)
	$(BIN)/python bench/update_readme.py

fuzz: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,fuzz]'
	bench/fuzz_api.sh
