# Everything runs from the local virtual environment .venv; ./run.sh installs system packages first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export PYTHONUNBUFFERED := 1

.PHONY: install test lint serve demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,onnx]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

test: install
	$(PY) -m ruff check service training tests
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check service training tests

demo: install
	$(PY) -m training demo

serve: install
	$(PY) -m training ensure-model
	$(VENV)/bin/tsm-serve

bench: install
	$(PY) -m tests.benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
