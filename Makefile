# Everything runs from the local virtual environment .venv; ./run.sh installs system packages first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONSTRAINTS := constraints.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | cksum | cut -d' ' -f1)
export PYTHONUNBUFFERED := 1

.PHONY: install test lint serve demo bench lock clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,onnx]'
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

# The newest versions pyproject.toml's ranges allow, resolved in a throw-away venv, become the new constraints
# (review the diff, then `make test`: the suite is what makes them "tested").
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet '.[dev,onnx]'
	{ sed -n '/^#/p' $(CONSTRAINTS); .lock-venv/bin/pip freeze --exclude-editable | grep -v '^tsm-serving'; } \
		> $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
