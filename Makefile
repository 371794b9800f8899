# Two commands on a fresh machine: `make serve` and `make test`. Both go through `make install`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install install-dev system-deps serve test lint bench clean

install: $(VENV)/.installed

# llama-cpp-python compiles for this machine (-march=native) but without llama.cpp's AMX
# kernels: where a host advertises AMX that the (virtual) machine does not grant, every
# decode crashed in ggml_backend_amx_mul_mat (SIGSEGV). Built once, about 7 minutes on 2
# cores, into WHEELS outside the clone, so fresh clones (CI) reuse it.
WHEELS ?= $(HOME)/.cache/inferplane/wheels
LLAMA_CPP := 0.3.36
LLAMA_WHEEL := $(WHEELS)/no-amx/llama_cpp_python-$(LLAMA_CPP)-py3-none-linux_x86_64.whl
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16

# torch first, pinned: its local CPU wheel. A bare `torch` would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml $(LLAMA_WHEEL)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --force-reinstall --no-deps $(LLAMA_WHEEL)
	$(BIN)/python -m pip install -q -e .
	touch $@

$(LLAMA_WHEEL):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	mkdir -p $(dir $@)
	CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" $(BIN)/python -m pip wheel -q --no-deps \
		--no-binary llama-cpp-python --no-cache-dir -w $(dir $@) llama-cpp-python==$(LLAMA_CPP)

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
	$(BIN)/lint-imports

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
