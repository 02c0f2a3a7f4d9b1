# torchgate: `make serve` serves the default model on 127.0.0.1:8000; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
RUN_DIR ?= run

.PHONY: install serve test lint typecheck unit bench bench-quick soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/torchgate serve --run-dir $(RUN_DIR) $(SERVE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway inference_worker deploy tests benchmarks examples
	$(BIN)/ruff format --check gateway inference_worker deploy tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

soak: $(STAMP)
	$(BIN)/python -m pytest -q -m soak $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks.run

bench-quick: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(RUN_DIR) .pytest_cache .mypy_cache .ruff_cache
