# Two commands on a fresh machine: `make serve` and `make test`. Both go through `make install`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install install-dev system-deps serve test lint bench clean

install: $(VENV)/.installed

# torch first, pinned: its local CPU wheel. A bare `torch` would pull a multi-GB CUDA build.
# llama-cpp-python compiles on first install (about 7 minutes on 2 cores); pip caches it.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .
	touch $@

install-dev: $(VENV)/.installed-dev

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

serve: install
	$(BIN)/inferplane serve $(ARGS)

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# The scale-out tests start real PostgreSQL 15 and Redis servers (Debian packages).
system-deps:
	@command -v redis-server >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq redis-server)
	@test -x /usr/lib/postgresql/15/bin/initdb || \
		(apt-get update -qq && apt-get install -y -qq postgresql-15)

test: lint system-deps
	$(BIN)/pytest

bench: install-dev
	$(BIN)/python bench/llm_stream.py
	$(BIN)/python bench/embeddings.py
	$(BIN)/python bench/admission.py
	$(BIN)/python bench/batching.py
	$(BIN)/python bench/prefix_cache.py
	$(BIN)/python bench/gateway_overhead.py $(if $(LITELLM_BIN),--litellm-bin $(LITELLM_BIN))

clean:
	rm -rf $(VENV) .inferplane .pytest_cache .mypy_cache .ruff_cache
