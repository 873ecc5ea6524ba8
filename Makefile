# make test   - create .venv, install the pinned dependencies, build the extension, run the tests
# make bench  - the same environment, then the benchmarks (pytest benchmarks --benchmark-only)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
EXT := build/.ext-built
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h')

.PHONY: all install test bench results clean

all: install

$(DEPS): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

$(EXT): $(DEPS) setup.py pyproject.toml $(CSRC)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	mkdir -p build && touch $@

install: $(EXT)

test: install
	$(PY) -m pytest tests -q

bench: install
	$(PY) -m pytest benchmarks --benchmark-only

results: install
	$(PY) benchmarks/write_results.py

clean:
	rm -rf build $(VENV) semiseg_fast/*.so *.egg-info
