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

.PHONY: venv serving model serve test test-fast lint docs grpc-stubs image run-image load-test load-test-image bench bench-batch bench-memory bench-sweep bench-profile bench-models fixtures fuzz soak lock lock-upgrade lock-check sbom sbom-lock audit clean

# Two steps: `serving` is what `make serve` needs (the run-time packages, and onnx to make
# the demo model); `venv` adds the tools of the tests, benchmarks, load tests and Spark.
serving: $(VENV)/.serving
venv: $(VENV)/.installed

# The run-time packages come from requirements.lock with their hashes; the project and its
# dev tools are then installed with every locked package held at its pin.
LOCK_PINS = <(grep -E '^[A-Za-z0-9]' requirements.lock | sed 's/ .*//')

$(VENV)/.serving: pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet -e '.[train]' -c $(LOCK_PINS)
	@touch $@

# The signing extra's packages are held at requirements-signing.lock's pins (a superset).
SIGNING_PINS = <(grep -E '^[A-Za-z0-9]' requirements-signing.lock | sed 's/ .*//')

$(VENV)/.installed: $(VENV)/.serving requirements-signing.lock
	$(BIN)/pip install --quiet -e '.[train,dev,spark,convert,client,signing]' -c $(SIGNING_PINS)
	@touch $@

# requirements.lock: pyproject.toml's run-time dependencies and all of theirs, pinned with the
# SHA-256 of every file PyPI has for each version. The bento (and so the image) installs exactly it.
LOCK_FLAGS = pyproject.toml --generate-hashes --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --custom-compile-command "make lock"

# requirements-signing.lock: the same with the `signing` extra, every pin of requirements.lock
# kept; the image of a signed model installs it (scripts/build_image.sh).
SIGNING_FLAGS = $(LOCK_FLAGS) --extra signing -c requirements.lock

# Rewrites each lock only when it changes (its mtime triggers a venv reinstall).
lock lock-upgrade: venv
	@tmp=$$(mktemp) && cp requirements.lock $$tmp && \
	$(BIN)/uv pip compile $(LOCK_FLAGS) $(if $(filter lock-upgrade,$@),--upgrade) --quiet -o $$tmp && \
	{ cmp -s $$tmp requirements.lock && echo "requirements.lock unchanged" || \
	  { cp $$tmp requirements.lock && echo "requirements.lock updated"; }; }; rm -f $$tmp
	@tmp=$$(mktemp) && cp requirements-signing.lock $$tmp && \
	$(BIN)/uv pip compile $(SIGNING_FLAGS) $(if $(filter lock-upgrade,$@),--upgrade) --quiet -o $$tmp && \
	{ cmp -s $$tmp requirements-signing.lock && echo "requirements-signing.lock unchanged" || \
	  { cp $$tmp requirements-signing.lock && echo "requirements-signing.lock updated"; }; }; rm -f $$tmp

# Fails if pyproject.toml's dependencies changed without `make lock` (keeps the lock's pins;
# needs PyPI).
lock-check: venv
	@tmp=$$(mktemp) && cp requirements.lock $$tmp && \
	$(BIN)/uv pip compile $(LOCK_FLAGS) --quiet -o $$tmp && \
	{ diff -u requirements.lock $$tmp && rm -f $$tmp && echo "requirements.lock is up to date"; } || \
	{ rm -f $$tmp; echo "requirements.lock is stale: run make lock" >&2; exit 1; }
	@tmp=$$(mktemp) && cp requirements-signing.lock $$tmp && \
	$(BIN)/uv pip compile $(SIGNING_FLAGS) --quiet -o $$tmp && \
	{ diff -u requirements-signing.lock $$tmp && rm -f $$tmp && echo "requirements-signing.lock is up to date"; } || \
	{ rm -f $$tmp; echo "requirements-signing.lock is stale: run make lock" >&2; exit 1; }

# CycloneDX JSON SBOM of the Python packages inside an image (make image writes one beside
# every image it builds, in dist/images/); IMAGE=... for another.
IMAGE ?= onnx-serving:latest
sbom: venv
	bash scripts/sbom.sh $(IMAGE) reports/sbom.cdx.json

# Without an image: the SBOM of requirements.lock itself (hashes, no licenses or graph).
sbom-lock: venv
	mkdir -p reports
	$(BIN)/cyclonedx-py requirements --output-reproducible -o reports/sbom-lock.cdx.json requirements.lock

# Needs a vulnerability service (api.osv.dev); says so if none answers. --strict: a package
# the service could not look up fails the audit instead of being skipped.
audit: venv
	@err=$$(mktemp); rc=0; \
	$(BIN)/pip-audit -r requirements.lock --disable-pip --strict -s osv --timeout 15 \
		--progress-spinner off 2>$$err || rc=$$?; \
	if [ $$rc -ne 0 ] && grep -qE 'ConnectionError|Timeout|NameResolution|could not be audited' $$err; then \
		tail -n 1 $$err >&2; \
		echo "make audit: no vulnerability service reachable: nothing was audited" >&2; rc=2; \
	else cat $$err >&2; fi; rm -f $$err; exit $$rc

model: serving
	$(BIN)/python train_and_save.py --if-missing

serve: model
	$(BIN)/bentoml serve service:OnnxServing --port $(PORT)

# The documentation site from docs/ into site/; warnings (a broken link, say) are errors.
docs: venv
	$(BIN)/mkdocs build --strict --quiet

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every tier, the fast one first: unit (in-process), then service (real servers) and system
# (the image, replicas, Spark). tests/conftest.py assigns the tiers.
test: lint model
	$(BIN)/pytest -m unit -q
	$(BIN)/pytest -m "not unit" --durations=15

# The edit-test loop: lint and the unit tier, under a minute.
test-fast: lint
	$(BIN)/pytest -m unit -q

image: model venv
	bash scripts/build_image.sh

run-image: venv
	PORT=$(PORT) bash scripts/run_image.sh

load-test: model venv
	bash load_tests/run.sh serve

load-test-image: venv
	bash load_tests/run.sh image

bench: model venv
	bash benchmarks/run.sh
	@$(MAKE) --no-print-directory bench-batch

# Batch inference at 1 M and 10 M rows: in-process ONNX Runtime, /predict_file, the batch
# client and Spark local[2] (README, Batch inference). BATCH_ROWS=1000000 for a quicker run.
bench-batch: model venv
	bash scripts/java.sh
	$(BIN)/python -m benchmarks.batch_scale

# What one request can cost in memory: the worst body each route takes, RSS per body byte.
bench-memory: model venv
	$(BIN)/python -m benchmarks.memory

# Adaptive batching's max_batch_size x max_latency_ms against the bench models (README, Performance).
bench-sweep: model venv
	.venv/bin/python -m benchmarks.sweep

# The Python modules of the gRPC protocol, generated from its .proto (committed; a unit test
# fails when they no longer match it).
grpc-stubs: venv
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. \
		onnx_serving/protocols/grpc_stubs/open_inference.proto

# Where one /predict request's CPU goes, layer by layer, beside the FastAPI baseline (py-spy).
bench-profile: model venv
	$(BIN)/python -m benchmarks.profile

# Remake the bench models (benchmarks/models/*.onnx) with PyTorch and scikit-learn.
bench-models: venv
	$(BIN)/python benchmarks/models/make_models.py

# About 70 % of capacity for 10 minutes (SOAK_SECONDS): memory must stay flat, nothing fail.
SOAK_SECONDS ?= 600
soak: model venv
	$(BIN)/python -m load_tests.soak --seconds $(SOAK_SECONDS)

# The fuzzing tests, far longer than `make test` runs them (2,000 examples per property).
fuzz: model venv
	HYPOTHESIS_PROFILE=long $(BIN)/pytest tests/test_fuzz.py

# Remake the test models with the exporters users use (PyTorch, scikit-learn + skl2onnx).
# Not part of `make test`: the models and their expected outputs are committed.
fixtures: venv
	$(BIN)/python tests/fixtures/make_models.py

clean:
	rm -rf $(VENV) reports build *.egg-info
