# Loss-landscape convergence in a Hessian subspace: every command a researcher needs.
# `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
KERNEL := landscape-hessian
PROFILE ?= paper
DATA_STAMP := data/.verified

.DEFAULT_GOAL := help
.PHONY: help setup data test pytest notebooks-smoke reproduce notebooks stage lab bench clean-results

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=paper|smoke (default paper), STAGE=02_spectrum, SET='train.epochs=2'"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python ($(KERNEL))" >/dev/null
	@touch $@

setup: $(STAMP)  ## build .venv with the pinned packages and register its Jupyter kernel (no-op when done)

$(DATA_STAMP): $(STAMP) data/SHA256SUMS lib/data.py
	$(PY) -m lib.data
	@touch $@

data: $(DATA_STAMP)  ## download or rebuild MNIST + Fashion-MNIST under data/ and verify sha256
	@$(PY) -c "import lib.data as d; [d.verify(n) for n in d.DATASETS]" && echo "data verified"

pytest: setup data  ## run the unit tests only
	$(PY) -m pytest -q

notebooks-smoke: setup data  ## run every notebook under the smoke profile
	$(PY) -m lib.runner --profile smoke

test: pytest notebooks-smoke  ## setup, data, unit tests and every notebook under the smoke profile

reproduce: setup data  ## run every notebook with PROFILE (default paper) and write its results
	$(PY) -m lib.runner --profile $(PROFILE) $(foreach s,$(SET),--set $(s))

stage: setup data  ## run one notebook: make stage STAGE=02_spectrum PROFILE=smoke [SET='key=value ...']
	@test -n "$(STAGE)" || { echo "usage: make stage STAGE=01_train [PROFILE=smoke] [SET='train.epochs=2']"; exit 2; }
	$(PY) -m lib.runner --profile $(PROFILE) --only $(STAGE) $(foreach s,$(SET),--set $(s))

lab: setup  ## start JupyterLab; .py notebooks open as notebooks (jupytext pairing) with the .venv kernel
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) --MappingKernelManager.default_kernel_name=$(KERNEL)

bench: setup data  ## print the benchmark table (Hessian solvers, Monte-Carlo cost, memory)
	$(PY) -m bench

clean-results:  ## delete results/$(PROFILE)
	rm -rf results/$(PROFILE)
