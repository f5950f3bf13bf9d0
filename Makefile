# particlescale — set-up and checks. Every target creates .venv when missing and installs
# what it needs; a second run reuses the venv and pip's wheel cache (llama-cpp-python is built
# from source once, ~3-5 min on 2 cores).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PS := $(VENV)/bin/particlescale
DEMO_QUESTION ?= Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?

.PHONY: demo test lint bench clean-venv
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

demo: $(VENV)/.demo-installed
	$(PS) models pull qwen2.5-0.5b
	$(PS) solve "$(DEMO_QUESTION)" --method pf --budget 8 --seed 0

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check src tests benchmarks

test: $(VENV)/.dev-installed /usr/bin/chromium
	$(VENV)/bin/ruff check src tests benchmarks
	$(PS) models pull smollm2-135m
	$(PS) models pull qwen2.5-0.5b
	$(PY) -m pytest -q -rs

bench: $(VENV)/.dev-installed
	$(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
