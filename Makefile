# Quick start: `make demo` runs the main job, `make test` runs the tests.
# Both create (or reuse) .venv inside the repository and install the pinned dependencies.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.10 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

# Tests: `make test` is the full suite, what CI runs, on PYTEST_WORKERS pytest-xdist workers;
# --dist loadgroup keeps the tests of one shared export on one worker (tests/shared_exports.py) and
# --no-loadscope-reorder keeps tests/conftest.py's order, longest first. It prints the 15 slowest.
# `make test-fast` leaves out the tests marked slow (exports, long runs) or native (the C++ runner,
# the JNI bridge): the lane to run while working.
PYTEST_WORKERS ?= 2
PYTEST_XDIST := -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

.PHONY: demo test test-fast install

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mtp-edge demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests $(PYTEST_XDIST) --durations=15

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest tests -m "not slow and not native" $(PYTEST_XDIST) --durations=10
