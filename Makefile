# Loss-landscape convergence in a Hessian subspace: every command a researcher needs.
# `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
KERNEL := landscape-hessian
PROFILE ?= paper
# FULL=1: the full specification of docs/specification.md section 7 (lib.infra.config.FULL_SPECIFICATION)
FULL ?= 0
RUN_ARGS = --profile $(PROFILE) $(if $(filter 1,$(FULL)),--full-specification) $(foreach s,$(SET),--set $(s))
DATA_STAMP := data/.verified
# extra flags of `make lab`, e.g. on a remote machine: make lab LAB_ARGS='--no-browser --ip=0.0.0.0 --port=8888'
LAB_ARGS ?=
# JupyterLab refuses to run as root without --allow-root (containers, CI, fresh cloud machines run as root)
ALLOW_ROOT = $(if $(filter 0,$(shell id -u)),--allow-root)
NOTEBOOKS = $(basename $(notdir $(wildcard notebooks/[0-9][0-9]_*.py)))
# Numerics: on x86-64 CPUs with AVX2, ATen, MKL and oneDNN run their AVX2 code paths whatever newer instructions the
# CPU has, so that an AVX-512 machine computes the same bits as an AVX2 one (same thread count; docs/reproducibility.md).
# Override one on the command line or in the environment (MKL_CBWR=COMPATIBLE), or all with NATIVE_NUMERICS=1.
ifeq ($(NATIVE_NUMERICS)$(if $(shell grep -m1 -ow avx2 /proc/cpuinfo 2>/dev/null),,no-avx2),)
export ATEN_CPU_CAPABILITY ?= avx2
export MKL_CBWR ?= AVX2
export ONEDNN_MAX_CPU_ISA ?= AVX2
endif
# the prerequisites of the goals on the command line (TeX, poppler, venv support, disk, browser; lib/infra/prereqs.py)
PREREQS = $(PYTHON) -m lib.infra.prereqs --venv $(VENV) --goals "$(or $(MAKECMDGOALS),prereqs)"

.DEFAULT_GOAL := help
.PHONY: help prereqs setup data test pytest lint readme-results update-reference notebooks-smoke reproduce notebooks stage \
        stage-args lab bench bench-curvlinops clean-results paper slides check-tex paper-test nbval report
LATEXMK := latexmk -pdf -interaction=nonstopmode -halt-on-error -file-line-error

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=paper|smoke (default paper), STAGE=02_spectrum, SET='train.epochs=2',"
	@echo "             FULL=1 (reproduce/stage at the full specification of docs/specification.md section 7)"
	@echo "             LAB_ARGS='--no-browser --ip=0.0.0.0 --port=8888', YES=1 (clean-results without asking)"
	@echo "             NATIVE_NUMERICS=1 (the CPU's newest instructions instead of the AVX2 paths; docs/reproducibility.md)"

prereqs:  ## check (as root with apt: install) TeX, poppler, venv support, disk, chromium; rebuild a broken .venv
	@$(PREREQS)

# order-only: the check runs first even when the stamp is up to date, and a .venv it removed is rebuilt
$(STAMP): requirements.txt pyproject.toml | prereqs
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "error: $(PYTHON) -m venv failed"; exit 2; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python ($(KERNEL))" >/dev/null
	@touch $@

setup: prereqs $(STAMP)  ## build .venv with the pinned packages and register its Jupyter kernel (no-op when done)

$(DATA_STAMP): $(STAMP) data/SHA256SUMS lib/infra/data.py
	$(PY) -m lib.infra.data
	@touch $@

data: $(DATA_STAMP)  ## download or rebuild MNIST + Fashion-MNIST under data/, verify sha256 (and of the sklearn digits)
	@$(PY) -c "import lib.infra.data as d; [d.verify(n) for n in d.DATASETS]" && echo "data verified"

# FAST=1 deselects the slow integration tests (marker slow: the tiny pipeline, notebooks, several processes)
pytest: setup data  ## run the unit tests only (makes its own smoke runs; FAST=1: the fast ones only)
	$(PY) -m pytest -q -m "$(if $(FAST),not slow and not paper,not paper)"

lint: setup  ## ruff check of lib, tests, bench and notebooks
	$(VENV)/bin/ruff check lib tests bench notebooks

notebooks-smoke: setup data  ## run every notebook under the smoke profile
	$(PY) -m lib --profile smoke

paper-test: prereqs  ## check the built PDFs of PROFILE: key numbers equal the results, no "??"
	PAPER_PROFILE=$(PROFILE) $(PY) -m pytest -q -m paper

# nbval re-executes each executed smoke notebook (results cached: ~45 s for all six) and compares the outputs of
# the cells tagged nbval-check-output (each notebook's last cell: its key numbers, fixed format); its kernels draw
# inline as the runner's did, so a checked cell that shows a figure has the same outputs (image bytes are not compared)
nbval: setup  ## re-run the executed smoke notebooks and compare their key-number cells (nbval)
	@ls results/smoke/notebooks/[0-9][0-9]_*.ipynb >/dev/null 2>&1 || { echo "error: no executed smoke notebooks: run make notebooks-smoke first"; exit 2; }
	MPLBACKEND=module://matplotlib_inline.backend_inline $(PY) -m pytest -q -p no:cacheprovider --nbval-lax \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg results/smoke/notebooks/[0-9][0-9]_*.ipynb

test: prereqs setup data lint notebooks-smoke  ## lint, every notebook (smoke), nbval, unit tests, paper + slides + PDF checks
	$(MAKE) nbval
	SMOKE_RUN_A=results $(PY) -m pytest -q -m "not paper"
	$(MAKE) paper slides report PROFILE=smoke REGEN=0
	$(MAKE) paper-test PROFILE=smoke

readme-results: setup  ## rewrite the README's results block from results/paper (after make reproduce)
	$(PY) -m lib.outputs.readme --profile paper --write

update-reference: setup  ## rewrite tests/reference/smoke.json from results/smoke (after an intended change)
	$(PY) tests/key_numbers.py --update

# the paper profile also runs the benchmark (make bench), whose table the paper prints
reproduce: prereqs setup data  ## run every notebook with PROFILE (default paper), the bench (paper), the paper and slides
	$(PY) -m lib $(RUN_ARGS)
	@if [ "$(PROFILE)" = "paper" ]; then $(PY) -m bench; fi
	$(MAKE) paper slides report PROFILE=$(PROFILE) REGEN=0

check-tex:
	@$(PYTHON) -m lib.infra.prereqs --goals check-tex

# Each profile has its own outputs: paper/generated/<profile>/, paper/figures/<profile>/ (notebook 06) and
# paper/build/<profile>/main.pdf, slides/build/<profile>/main.pdf (latexmk -outdir; main.tex reads the profile's
# folders through \outputprofile, default paper). PROFILE on the command line (or its outputs missing): regenerate
# them from its saved results first (notebook 06 only); REGEN=0 never does.
define build_tex
	@if [ "$(REGEN)" != 0 ] && { [ "$(origin PROFILE)" = "command line" ] || [ ! -f paper/generated/$(PROFILE)/numbers.tex ]; } \
	  && [ -d results/$(PROFILE) ]; then $(PY) -m lib --profile $(PROFILE) --only 06_figures; fi
	@test -f paper/generated/$(PROFILE)/numbers.tex || { echo "error: paper/generated/$(PROFILE)/numbers.tex is missing: run 'make reproduce PROFILE=$(PROFILE)' first"; exit 2; }
	@$(PY) -m lib.outputs.registry --check --profile $(PROFILE) >/dev/null
	@# auxiliary files of an in-place build (the layout before build/<profile>/) would shadow the outdir's main.bbl
	@cd $(1) && rm -f main.aux main.bbl main.blg main.out main.toc main.nav main.snm main.vrb main.fls main.fdb_latexmk
	cd $(1) && $(LATEXMK) -outdir=build/$(PROFILE) -usepretex='\def\outputprofile{$(PROFILE)}' main.tex >/dev/null \
	  || { tail -40 build/$(PROFILE)/main.log; exit 1; }
	@if grep -E "(Citation|Reference).*undefined|undefined references|Undefined control" $(1)/build/$(PROFILE)/main.log; then \
	  echo "error: undefined references, citations or macros in $(1)/main.tex (see $(1)/build/$(PROFILE)/main.log)"; exit 1; fi
	@echo "built $(1)/build/$(PROFILE)/main.pdf from profile $(PROFILE)"
endef

paper: check-tex  ## build paper/build/PROFILE/main.pdf (default paper; PROFILE=... regenerates its outputs first)
	$(call build_tex,paper)

slides: check-tex  ## build slides/build/PROFILE/main.pdf (Beamer) from the same figures and numbers
	$(call build_tex,slides)

report: setup  ## one HTML page of PROFILE's figures, tables and notebooks: paper/build/PROFILE/report.html
	$(PY) -m lib.outputs.html --profile $(PROFILE)

stage-args:
	@test -n "$(STAGE)" || { echo "usage: make stage STAGE=01_train [PROFILE=smoke] [SET='train.epochs=2']"; \
	  echo "  STAGE: one of $(NOTEBOOKS) (or its number or stage name, e.g. 01 or train)"; exit 2; }

stage: stage-args prereqs setup data  ## run one notebook: make stage STAGE=02_spectrum PROFILE=smoke [SET='key=value ...']
	$(PY) -m lib $(RUN_ARGS) --only $(STAGE)

# the kernels draw figures inline even when the shell exports MPLBACKEND=Agg (as CI does for headless runs)
lab: prereqs setup  ## start JupyterLab (.py notebooks open as notebooks, .venv kernel); remote: LAB_ARGS='...'
	MPLBACKEND=module://matplotlib_inline.backend_inline $(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) \
	  --MappingKernelManager.default_kernel_name=$(KERNEL) $(ALLOW_ROOT) $(LAB_ARGS)

bench: setup data  ## the benchmark table (costs, solvers, Monte Carlo, memory), read by the paper
	$(PY) -m bench

# curvlinops (and its dependencies) go to .bench-deps/, beside the project's .venv, never into it
CURVLINOPS := curvlinops-for-pytorch==3.0.1 backpack-for-pytorch einops einconv linear_operator opt-einsum jaxtyping \
              wadler-lindig mpmath
bench-curvlinops: setup data  ## the 11.4M-parameter product costs next to curvlinops 3.0.1 (installed for the bench only)
	@test -d .bench-deps/curvlinops || $(VENV)/bin/pip install -q --no-deps --target .bench-deps $(CURVLINOPS)
	PYTHONPATH=.bench-deps $(PY) -m bench.large_model --costs-only --rounds 3

# destructive: the profile must be named on the command line (no default), and the deletion confirmed (or YES=1)
clean-results:  ## delete one profile's results: make clean-results PROFILE=smoke [YES=1] (asks first)
	@if [ "$(origin PROFILE)" != "command line" ]; then \
	  echo "usage: make clean-results PROFILE=<profile> [YES=1]  (profiles with results: $$(ls results 2>/dev/null | tr '\n' ' '))"; \
	  exit 2; fi
	@case "$(PROFILE)" in ""|*/*|.*) echo "error: PROFILE='$(PROFILE)' must be a plain name such as smoke"; exit 2;; esac
	@if [ ! -e "results/$(PROFILE)" ]; then echo "nothing to delete: results/$(PROFILE) does not exist"; exit 0; fi; \
	if [ "$(YES)" != 1 ]; then \
	  if [ ! -t 0 ]; then echo "error: not deleting results/$(PROFILE) without confirmation: run make clean-results PROFILE=$(PROFILE) YES=1"; exit 2; fi; \
	  read -r -p "delete results/$(PROFILE) ($$(find results/$(PROFILE) -type f | wc -l) files, $$(du -sh results/$(PROFILE) | cut -f1))? [y/N] " answer; \
	  case "$$answer" in y|Y|yes) ;; *) echo "kept results/$(PROFILE)"; exit 1;; esac; fi; \
	rm -rf "results/$(PROFILE)" && echo "deleted results/$(PROFILE)"
