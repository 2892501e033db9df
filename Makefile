# The README's commands. Each target bootstraps .venv from a clean clone first.
#   make serve   train and save the model if the store has none, then serve on $(PORT)
#   make test    lint, format check and the whole test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 3000
# Keep the model store inside the project unless the caller chose one.
export BENTOML_HOME ?= $(CURDIR)/.bentoml
# BentoML would otherwise ask a remote service about usage tracking.
export BENTOML_DO_NOT_TRACK ?= true

.PHONY: venv model serve test lint image run-image load-test load-test-image bench fixtures fuzz clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

model: venv
	$(BIN)/python train_and_save.py --if-missing

serve: model
	$(BIN)/bentoml serve service:OnnxModelService --port $(PORT)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint model
	$(BIN)/pytest

image: model
	bash scripts/build_image.sh

run-image: venv
	PORT=$(PORT) bash scripts/run_image.sh

load-test: model
	bash load_tests/run.sh serve

load-test-image: venv
	bash load_tests/run.sh image

bench: model
	bash benchmarks/run.sh

# The fuzzing tests, far longer than `make test` runs them (2,000 examples per property).
fuzz: model
	HYPOTHESIS_PROFILE=long $(BIN)/pytest tests/test_fuzz.py

# Remake the test models with the exporters users use (PyTorch, scikit-learn + skl2onnx).
# Not part of `make test`: the models and their expected outputs are committed.
fixtures: venv
	$(BIN)/pip install --quiet -e '.[dev,fixtures]'
	$(BIN)/python tests/fixtures/make_models.py

clean:
	rm -rf $(VENV) reports build *.egg-info
