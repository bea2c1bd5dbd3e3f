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
.PHONY: help setup data test pytest lint update-reference notebooks-smoke reproduce notebooks stage lab bench clean-results paper slides \
        check-tex paper-test
TEX_PACKAGES := latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended texlive-science \
                texlive-bibtex-extra poppler-utils
LATEXMK := latexmk -pdf -interaction=nonstopmode -halt-on-error -file-line-error

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

$(DATA_STAMP): $(STAMP) data/SHA256SUMS lib/infra/data.py
	$(PY) -m lib.infra.data
	@touch $@

data: $(DATA_STAMP)  ## download or rebuild MNIST + Fashion-MNIST under data/ and verify sha256
	@$(PY) -c "import lib.infra.data as d; [d.verify(n) for n in d.DATASETS]" && echo "data verified"

pytest: setup data  ## run the unit tests only (makes its own smoke runs)
	$(PY) -m pytest -q -m "not paper"

lint: setup  ## ruff check of lib, tests, bench and notebooks
	$(VENV)/bin/ruff check lib tests bench notebooks

notebooks-smoke: setup data  ## run every notebook under the smoke profile
	$(PY) -m lib --profile smoke

paper-test:  ## check the built PDFs: key numbers equal the results, no "??"
	$(PY) -m pytest -q -m paper

test: setup data lint notebooks-smoke  ## lint, every notebook (smoke), unit tests, paper + slides + PDF checks
	SMOKE_RUN_A=results $(PY) -m pytest -q -m "not paper"
	$(MAKE) paper slides
	$(MAKE) paper-test

update-reference: setup  ## rewrite tests/reference/smoke.json from results/smoke (after an intended change)
	$(PY) tests/key_numbers.py --update

reproduce: setup data  ## run every notebook with PROFILE (default paper), then build the paper and the slides
	$(PY) -m lib --profile $(PROFILE) $(foreach s,$(SET),--set $(s))
	$(MAKE) paper slides

check-tex:
	@command -v latexmk >/dev/null || { echo "error: latexmk not found. Install TeX (Debian/Ubuntu):"; \
	  echo "  sudo apt-get install -y $(TEX_PACKAGES)"; exit 2; }

# PROFILE given on the command line: regenerate figures/numbers from that profile first (notebook 06);
# otherwise build from whatever profile was reproduced last (paper/generated/source.json says which).
define build_tex
	@if [ "$(origin PROFILE)" = "command line" ]; then $(PY) -m lib --profile $(PROFILE) --only 06_figures; fi
	@test -f paper/generated/numbers.tex || { echo "error: paper/generated/numbers.tex is missing: run 'make reproduce PROFILE=smoke' (or paper) first"; exit 2; }
	@$(PY) -m lib.outputs.registry --check >/dev/null
	cd $(1) && $(LATEXMK) main.tex >/dev/null || { tail -40 $(1)/main.log; exit 1; }
	@if grep -E "(Citation|Reference).*undefined|undefined references|Undefined control" $(1)/main.log; then \
	  echo "error: undefined references, citations or macros in $(1)/main.tex (see $(1)/main.log)"; exit 1; fi
	@echo "built $(1)/main.pdf from profile $$($(PY) -c "import json;print(json.load(open('paper/generated/source.json'))['profile'])")"
endef

paper: check-tex  ## build paper/main.pdf from the last reproduced profile (or PROFILE=...)
	$(call build_tex,paper)

slides: check-tex  ## build slides/main.pdf (Beamer) from the same figures and numbers
	$(call build_tex,slides)

stage: setup data  ## run one notebook: make stage STAGE=02_spectrum PROFILE=smoke [SET='key=value ...']
	@test -n "$(STAGE)" || { echo "usage: make stage STAGE=01_train [PROFILE=smoke] [SET='train.epochs=2']"; exit 2; }
	$(PY) -m lib --profile $(PROFILE) --only $(STAGE) $(foreach s,$(SET),--set $(s))

lab: setup  ## start JupyterLab; .py notebooks open as notebooks (jupytext pairing) with the .venv kernel
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) --MappingKernelManager.default_kernel_name=$(KERNEL)

bench: setup data  ## print the benchmark table (Hessian solvers, Monte-Carlo cost, memory)
	$(PY) -m bench

clean-results:  ## delete results/$(PROFILE)
	rm -rf results/$(PROFILE)
