# Quick start: `make demo` runs the main job, `make test` runs the tests.
# Both create (or reuse) .venv inside the repository and install the pinned dependencies.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.10 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test install

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mtp-edge demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests
