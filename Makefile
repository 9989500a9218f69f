# cv_jax — common commands. `make install` once, then `make train` / `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/cifar10.py
WORKDIR ?= runs/cifar10
# pip extras: dev = pytest + ruff; torch = torchvision weight import and its tests
# (`make install EXTRAS=dev` skips torch, whose tests are then skipped).
EXTRAS ?= dev,torch

.PHONY: install train test lint evaluate clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

install: $(PY)
	$(PY) -m pip install -e ".[$(EXTRAS)]"

train: install
	$(PY) -m cv_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: install
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .

evaluate: install
	$(PY) -m cv_jax.evaluate --workdir=$(WORKDIR) --data=$(DATA) --split=test

clean:
	rm -rf runs .pytest_cache
