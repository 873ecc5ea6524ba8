# make train      - create .venv as for the tests, then train with the defaults (python -m semiseg_fast.train)
# make test       - create .venv, install the pinned dependencies, lint, build the extension, run the
#                   tests, then the ahead-of-time GPU check of every Triton kernel
# make lint       - ruff check and ruff format --check (make format applies ruff's fixes and formatting)
# make docs       - regenerate docs/training.md from the config (a test fails when it is stale)
# make gpu-check  - only the GPU check (compile for sm_80/sm_90, registers, spills)
# make bench      - the same environment, then the benchmarks (pytest benchmarks --benchmark-only)
# make results    - run the benchmarks and the GPU check and regenerate benchmarks/RESULTS.md
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUFF := $(VENV)/bin/ruff
DEPS := $(VENV)/.deps-installed
EXT := build/.ext-built
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h')

.PHONY: all install train test lint format docs gpu-check bench results clean

all: install

$(DEPS): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

$(EXT): $(DEPS) setup.py pyproject.toml $(CSRC)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	mkdir -p build && touch $@

install: $(EXT)

train: install
	$(PY) -m semiseg_fast.train

lint: $(DEPS)
	$(RUFF) check .
	$(RUFF) format --check .

format: $(DEPS)
	$(RUFF) check --fix .
	$(RUFF) format .

test: lint install
	$(PY) -m pytest tests -q
	$(PY) -m semiseg_fast.tools.gpu_check

docs: install
	$(PY) -m semiseg_fast.tools.config_docs

gpu-check: install
	$(PY) -m semiseg_fast.tools.gpu_check

bench: install
	$(PY) -m pytest benchmarks --benchmark-only

results: install
	$(PY) benchmarks/write_results.py
	$(PY) -m semiseg_fast.tools.gpu_check --write-results

clean:
	rm -rf build $(VENV) semiseg_fast/*.so *.egg-info
