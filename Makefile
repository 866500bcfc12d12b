# qsmprep developer entry points.  Each target creates/updates its own virtualenv.
#   make demo   - simulate the demo dataset and run qsmprep on it (output in ./demo_out)
#   make test   - lint + the whole test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/python -m pip
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: demo test lint docs bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/bin/python pyproject.toml
	$(PIP) install --quiet -e '.[test,docs]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/qsmprep-demo $(DEMO_OUT)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check qsmprep tests benchmarks docs bids_app

test: lint
	$(VENV)/bin/python -m pytest -n 2 $(PYTEST_ARGS)

docs: $(VENV)/.installed-test
	$(VENV)/bin/sphinx-build -W -b html docs docs/_build/html

bench: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_numerics.py --out benchmarks/results/numerics.json

clean:
	rm -rf $(VENV) $(DEMO_OUT) docs/_build .pytest_cache .ruff_cache
