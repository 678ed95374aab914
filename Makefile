# The reproduction book. Two commands do all the set-up: `make book` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= cpu
JOBS ?= 1

.PHONY: book test install run status lint lock clean smoke unit browser-deps

$(STAMP): requirements.lock pyproject.toml
	@echo "==> bootstrapping $(VENV) from requirements.lock"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

install: $(STAMP)

## make book: run what is missing or stale (cpu profile by default), then build the site
book: $(STAMP)
	$(BIN)/repro run --all --profile $(PROFILE) --jobs $(JOBS)
	$(BIN)/repro book

run: $(STAMP)
	$(BIN)/repro run --all --profile $(PROFILE) --jobs $(JOBS)

status: $(STAMP)
	$(BIN)/repro status

## make test: everything CI runs (unit, repository checks, runner, notebooks in smoke, site + browser)
test: $(STAMP) browser-deps
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q --timeout 900 tests
	$(BIN)/python tools/smoke_notebooks.py --out build/smoke
	$(BIN)/python -m pytest -n 2 --dist loadfile -q --nbval-lax --timeout 120 -p no:cacheprovider build/smoke

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not browser" tests

## Debian's chromium + chromedriver for the real-browser test of the site (installed when missing)
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "==> installing Debian's chromium and chromium-driver"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "!! could not install chromium: the browser test will fail"; \
	  else \
	    echo "!! chromium/chromedriver missing and not root: install Debian's chromium and chromium-driver"; \
	  fi; \
	fi

lock:
	rm -rf build/lockenv && $(PYTHON) -m venv build/lockenv
	build/lockenv/bin/pip install --quiet ".[dev]"
	{ head -2 requirements.lock; build/lockenv/bin/pip freeze --all --exclude-editable | grep -v '^pip==' \
	  | grep -v '^repro' | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf _build build
