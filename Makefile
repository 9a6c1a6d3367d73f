# Quick start: `make demo` then `make test`, from a fresh clone. Both create the virtualenv when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export SPIE_HUB_HOME ?= $(CURDIR)/.spie-hub
export PYTHONWARNINGS ?= ignore

.PHONY: install demo test bench bench-audit schema clean

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

# The audit at national scale (issue 10): rows and bytes per million people, share of run time, verify of 10 M
# decisions, a year of subject access (about 10 minutes on 2 cores; docs/performances.md).
bench-audit: install
	$(PY) benchmarks/bench_audit.py --foyers 2000 20000

schema: install
	$(PY) -m schemas.jsonschema

clean:
	rm -rf $(VENV) .spie-hub .pytest_cache *.egg-info
