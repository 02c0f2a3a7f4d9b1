# torchgate: `make serve` serves the default model on 127.0.0.1:8000; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SERVE_STAMP := $(VENV)/.serve-$(HASH)
TEST_STAMP := $(VENV)/.test-$(HASH)
RUN_DIR ?= run
# torch: where no NVIDIA GPU answers, the CPU wheel of 2.13.0 (it lies on this machine kind's disk; a bare
# "torch" would pull a CUDA build of several GB); with one, pip picks the CUDA build in the supported range.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_PIN := $(if $(HAS_GPU),,torch==2.13.0)

.PHONY: install serve test lint typecheck unit bench bench-quick soak haproxy perf-analyzer clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# What serving needs: the gateway, the dispatcher and the workers (torch), nothing for tests.
$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(if $(TORCH_PIN),$(BIN)/pip install --quiet $(TORCH_PIN))
	$(BIN)/pip install --quiet -e '.[worker]'
	rm -f $(VENV)/.serve-*
	touch $@

# What testing needs on top: pytest, linters, type checker, the validators of the deployment files.
$(TEST_STAMP): $(SERVE_STAMP)
	$(BIN)/pip install --quiet -e '.[worker,test]'
	rm -f $(VENV)/.test-*
	touch $@

install: $(TEST_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/torchgate serve --run-dir $(RUN_DIR) $(SERVE_ARGS)

# The many-hosts test puts Debian's HAProxy in front of network namespaces; CI (root, apt-get) installs it,
# elsewhere the test says it skips.
haproxy:
	@command -v haproxy >/dev/null 2>&1 || test -x /usr/sbin/haproxy || { \
	  if [ "$$CI" = true ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; \
	  else echo "haproxy is not installed: the many-hosts test will skip (apt-get install haproxy)"; fi; }

# Triton's own load generator, perf_analyzer, which tests/test_perf_analyzer.py runs against torchgate: the
# binary and CUDA's runtime library it links from PyPI wheels (harness/perf_analyzer.py), libb64 from Debian.
# CI (root, apt-get) installs libb64; elsewhere the test says it skips without it.
perf-analyzer: $(TEST_STAMP)
	@test -x $(VENV)/perf_analyzer/perf_analyzer || $(BIN)/python -m harness.perf_analyzer install $(VENV)/perf_analyzer
	@/sbin/ldconfig -p 2>/dev/null | grep -q 'libb64.so.0d' || { \
	  if [ "$$CI" = true ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null; \
	  else echo "libb64 is not installed: the perf_analyzer test will skip (apt-get install libb64-0d)"; fi; }

lint: $(TEST_STAMP)
	$(BIN)/ruff check gateway inference_worker deploy harness tests benchmarks examples
	$(BIN)/ruff format --check gateway inference_worker deploy harness tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/hadolint deploy/container/Dockerfile

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# Two streams of tests (pytest-xdist), a file's tests in one stream: about 8 minutes on two cores, against 12
# one after another. TEST_JOBS=0 runs them in this process, one after another.
TEST_JOBS ?= 2
test: lint typecheck haproxy perf-analyzer
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadgroup $(PYTEST_ARGS)

# The tests that start no process (every process test is marked `processes`): seconds, not minutes.
unit: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m 'not processes and not soak' $(PYTEST_ARGS)

soak: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m soak $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(BIN)/pip install --quiet -e '.[worker,test,bench]'
	$(BIN)/python -m benchmarks.run

bench-quick: $(TEST_STAMP)
	$(BIN)/pip install --quiet -e '.[worker,test,bench]'
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(RUN_DIR) .pytest_cache .mypy_cache .ruff_cache
