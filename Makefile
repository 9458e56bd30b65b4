# mela: two commands matter.
#   make demo   set up a virtual environment and run the whole MeLa pipeline on the built-in glyphs (CPU, minutes)
#   make test   set up the environment with the dev extras and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MELA ?= $(BIN)/mela
# PyTorch is pinned here, not in the package: on these machines torch==2.13.0 is the CPU wheel on disk,
# while an unpinned torch pulls a multi-GB CUDA build. On a GPU machine, set TORCH to the build you want.
TORCH ?= torch==2.13.0
# The versions the test environment installs (what CI passed with; `make lock` rewrites it). CONSTRAINTS= to go without,
# e.g. with another TORCH.
CONSTRAINTS ?= constraints.txt
WORKSPACE ?= $(HOME)/mela-workspace
export WORKSPACE

.PHONY: demo test install install-dev initialize_workspace lint bench clean-venv lock wheel-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(MELA) pipeline

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q --durations=15

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks tools *.py

# Build the sdist and wheel, check their files, install the wheel into a fresh environment and run it (CI).
wheel-check: $(VENV)/.installed-dev
	$(BIN)/python tools/wheel_check.py --torch "$(TORCH)" --constraints "$(CONSTRAINTS)"

# Rewrite constraints.txt from a fresh environment: TORCH, then the newest '.[dev]' pip finds.
lock:
	$(PYTHON) tools/lock.py --torch "$(TORCH)" --out constraints.txt

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run_all.py

initialize_workspace: $(VENV)/.installed
	$(MELA) workspace init

clean-venv:
	rm -rf $(VENV)

include make/data.mk

# The data rules need the installed `mela` command.
download_all unpack_datasets check_datasets $(addprefix download_,$(DATA_ARCHIVES)): | $(VENV)/.installed
