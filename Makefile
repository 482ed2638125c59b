# The two set-up commands of README.md: `make demo` (install + the SynthRef demo) and
# `make test` (install + the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pins that install from this project's build machines; override for yours,
# e.g. make test TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PLUGINS := $(wildcard plugins/*/pyproject.toml)
EDITABLES := -e ".[test]" $(foreach p,$(PLUGINS),-e $(dir $(p)))

.PHONY: install test test-all lint demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(PLUGINS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet $(EDITABLES)
	touch $@

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(VENV)/bin/ruff check refbench plugins tests benchmarks

demo: install
	$(VENV)/bin/refbench demo

bench: install
	$(PY) benchmarks/bench_eval.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
