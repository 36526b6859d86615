# Quick start: `make demo` runs the main job, `make test` runs the tests.
# Both create (or reuse) .venv inside the repository and install the pinned dependencies. --no-compile:
# pip would byte-compile every module of torch, executorch and the rest (85 s instead of 35 s here);
# Python compiles the ones a run imports, once, on first import.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.10 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

# Tests: `make test` is the full suite, what CI runs, on PYTEST_WORKERS pytest-xdist workers;
# --dist loadgroup keeps the tests of one shared export on one worker (tests/shared_exports.py) and
# --no-loadscope-reorder keeps tests/conftest.py's order, longest first. It prints the 15 slowest.
# `make test-fast` leaves out the tests marked slow (exports, long runs) or native (the C++ runner,
# the JNI bridge): the lane to run while working. `make test` first makes arm64-tools (apt-get, once):
# tests/test_native_arm64.py cross-builds the runner for aarch64 and runs it under qemu-aarch64.
PYTEST_WORKERS ?= 2
PYTEST_XDIST := -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

.PHONY: demo test test-fast install arm64-tools

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --no-compile -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# `mtp-edge validate --arch arm64` (and tests/test_native_arm64.py): the aarch64 cross compiler and
# qemu-aarch64, from Debian. Nothing to do (no apt-get) when they are there; installing needs root.
ARM64_PACKAGES := g++-12-aarch64-linux-gnu qemu-user
arm64-tools:
	@if command -v aarch64-linux-gnu-g++-12 >/dev/null && command -v qemu-aarch64 >/dev/null \
	    && test -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	    echo "installing $(ARM64_PACKAGES)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(ARM64_PACKAGES); \
	else \
	    echo "arm64-tools: run as root: apt-get update && apt-get install -y $(ARM64_PACKAGES)" >&2; exit 1; \
	fi

demo: $(STAMP)
	$(VENV)/bin/mtp-edge demo

test: $(STAMP) arm64-tools
	$(VENV)/bin/python -m pytest tests $(PYTEST_XDIST) --durations=15

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest tests -m "not slow and not native" $(PYTEST_XDIST) --durations=10
