# synthvision developer tasks. Every target installs what it needs into the current Python.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1

.PHONY: install install-dev demo test test-fast lint bench clean

install:
	$(PIP) install -q -e .

install-dev:
	$(PIP) install -q -e ".[dev]"

## Build the quickstart dataset (no download, no GPU), validate it and print where it is.
demo: install
	$(PYTHON) -m synthvision build configs/quickstart.yaml --out outputs/quickstart
	$(PYTHON) -m synthvision validate outputs/quickstart

## The whole offline test suite (default + slow tiers; gpu tests skip without CUDA).
test: install-dev
	$(PYTHON) -m pytest -q -n 2 --dist loadfile

test-fast: install-dev
	$(PYTHON) -m pytest -q -n 2 --dist loadfile -m "not slow"

lint: install-dev
	$(PYTHON) -m ruff check synthvision tests benchmarks scripts
	$(PYTHON) -m ruff format --check synthvision tests benchmarks scripts
	$(PYTHON) -m mypy

bench: install-dev
	$(PYTHON) benchmarks/build_throughput.py

clean:
	rm -rf outputs .pytest_cache .mypy_cache .ruff_cache
