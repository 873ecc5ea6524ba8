# make train      - create .venv as for the tests, then train with the defaults (python -m semiseg_fast.train)
# make test       - create .venv, install the pinned dependencies, build the extension, run the
#                   tests, then the ahead-of-time GPU check of every Triton kernel
# make gpu-check  - only the GPU check (compile for sm_80/sm_90, registers, spills)
# make bench      - the same environment, then the benchmarks (pytest benchmarks --benchmark-only)
# make results    - run the benchmarks and the GPU check and regenerate benchmarks/RESULTS.md
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
EXT := build/.ext-built
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h')

.PHONY: all install train test gpu-check bench results clean

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

test: install
	$(PY) -m pytest tests -q
	$(PY) -m semiseg_fast.gpu_check

gpu-check: install
	$(PY) -m semiseg_fast.gpu_check

bench: install
	$(PY) -m pytest benchmarks --benchmark-only

results: install
	$(PY) benchmarks/write_results.py
	$(PY) -m semiseg_fast.gpu_check --write-results

clean:
	rm -rf build $(VENV) semiseg_fast/*.so *.egg-info
