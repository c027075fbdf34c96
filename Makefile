# `make demo` and `make test` each create .venv and install the project first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint check clean proto

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m core.demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -v tests

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Icore/images --python_out=core/images --pyi_out=core/images core/images/lazarus.proto
	$(PY) -m grpc_tools.protoc -Ipageserver --python_out=pageserver --pyi_out=pageserver pageserver/wire.proto

check: $(STAMP)
	$(VENV)/bin/lazarus check

clean:
	rm -rf $(VENV) build *.egg-info
