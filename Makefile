# Quick start: `make demo` then `make test`, from a fresh clone. Both create the virtualenv when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export SPIE_HUB_HOME ?= $(CURDIR)/.spie-hub
export PYTHONWARNINGS ?= ignore

.PHONY: install demo test bench schema clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/spie-hub demo

test: install
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/bench_caf_flow.py

schema: install
	$(PY) -m schemas.jsonschema

clean:
	rm -rf $(VENV) .spie-hub .pytest_cache *.egg-info
