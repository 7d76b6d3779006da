# Adafactor reproduction — the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A pin, not a wheel: this project's machines serve its CPU build from their package index; plain PyPI on
# Linux serves the CUDA build of the same pin, so a CPU-only machine adds
# TORCH_INDEX=https://download.pytorch.org/whl/cpu. A GPU user either installs their CUDA torch into $(VENV)
# first (it is kept: torch is only installed when missing) or passes TORCH='torch==X.Y.Z'.
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
STAMP  := $(VENV)/.installed

# Knobs of the data, training and reproduction targets.
SCALE       ?= $(shell [ -x $(PY) ] && $(PY) -c "import torch;print('gpu' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
DATA        ?=
DATA_DIR    ?=
EXPERIMENTS ?=
SWEEP       ?=
LAUNCHER    ?=
# runs at once: one per core at the cpu scale (each trains on one thread); empty = one per visible GPU
# (reproduce.py gives each its own CUDA_VISIBLE_DEVICES)
NPROC       := $(shell nproc 2>/dev/null || echo 1)
JOBS        ?= $(if $(filter cpu%,$(SCALE)),$(NPROC),)
ARGS        ?=

help: ## List the targets and their knobs
	@echo "Adafactor (Shazeer & Stern 2018) on WMT14 En-De — make targets:"
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'
	@echo
	@echo "Knobs: SCALE=cpu|gpu|cpu_prenorm|vaswani (auto: $(SCALE))  DATA=wmt14|wmt14_t2t|wmt14_local_dev|multi30k  DATA_DIR=<local copy>"
	@echo "       SWEEP=table2|table2_core|table3|paper  EXPERIMENTS=table2_A,table2_O  LAUNCHER=slurm  JOBS=$(or $(JOBS),<one per GPU>)"
	@echo "       RUN=<run directory> (make verify)  ARGS='<extra arguments>'"
	@echo "       VENV=$(VENV)  TORCH=$(TORCH)  TORCH_INDEX=<pip index for torch, e.g. its CPU wheels>"

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null && echo "torch already installed in $(VENV): keeping it" \
		|| $(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

install: $(STAMP) ## Create the venv (.venv) and install torch (CPU wheel unless present) and the package
	@$(PY) -c "import torch, adafactor_repro; print('torch', torch.__version__, '| cuda', torch.cuda.is_available())"

test: $(STAMP) ## Run the test suite (what CI runs)
	WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check src scripts tests

data: $(STAMP) ## Build data: DATA=multi30k (shipped in corpora/, offline) | DATA=wmt14 (hub) | DATA_DIR=<local copy>
	$(PY) scripts/prepare_data.py scale=$(SCALE) $(if $(DATA),data=$(DATA)) $(if $(DATA_DIR),data.local_dir=$(abspath $(DATA_DIR))) $(ARGS)

train: $(STAMP) ## One training run: make train ARGS='experiments=afx_adafactor schedule=no_warmup'
	$(PY) scripts/train.py scale=$(SCALE) $(if $(DATA_DIR),data.local_dir=$(abspath $(DATA_DIR))) $(ARGS)

evaluate: $(STAMP) ## BLEU of a run: make evaluate ARGS='run_dir=runs/cpu/afx_adam-warmup-s1'
	$(PY) scripts/evaluate.py $(ARGS)

reproduce: $(STAMP) ## The paper's Table 2 at SCALE (SWEEP=table2: every cell, 3 seeds), then tables and plots
	$(PY) scripts/reproduce.py --scale $(SCALE) $(if $(DATA_DIR),--data-dir $(abspath $(DATA_DIR))) \
		$(if $(SWEEP),--sweep $(SWEEP)) $(if $(EXPERIMENTS),--experiments $(EXPERIMENTS)) $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(JOBS),--jobs $(JOBS)) $(ARGS)

# The order declared in docs/cpu_scale.md: every table's seed 1 first (Table 2, Table 3, the pre-norm twin), then
# seed 2 (the twin's no-warmup rows A-P only), then seed 3; each call skips what results/<scale>/runs holds.
# one run per core even where SCALE defaults to gpu (a CUDA machine)
CPU_JOBS  := $(or $(JOBS),$(NPROC))
TWIN_ROWS := $(shell echo table2_{A,B,C,D,E,F,G,H,I,J,K,L,M,N,O,P} | tr ' ' ',')
reproduce-cpu-tables: $(STAMP) ## Every table of the paper at the cpu scale (Table 2, Table 3, pre-norm twin; 210 runs), resumable
	$(PY) scripts/reproduce.py --scale cpu --sweep table2 --seeds 1 --jobs $(CPU_JOBS) $(ARGS)
	$(PY) scripts/reproduce.py --scale cpu --sweep table3 --seeds 1 --jobs $(CPU_JOBS) $(ARGS)
	$(PY) scripts/reproduce.py --scale cpu_prenorm --sweep table2 --seeds 1 --jobs $(CPU_JOBS) $(ARGS)
	$(PY) scripts/reproduce.py --scale cpu --sweep table2 --seeds 2 --jobs $(CPU_JOBS) $(ARGS)
	$(PY) scripts/reproduce.py --scale cpu --sweep table3 --seeds 2 --jobs $(CPU_JOBS) $(ARGS)
	$(PY) scripts/reproduce.py --scale cpu_prenorm --sweep table2 --seeds 2 --schedules no_warmup --experiments $(TWIN_ROWS) --jobs $(CPU_JOBS) $(ARGS)
	$(PY) scripts/reproduce.py --scale cpu --sweep table2 --seeds 3 --jobs $(CPU_JOBS) $(ARGS)
	$(PY) scripts/reproduce.py --scale cpu --sweep table3 --seeds 3 --jobs $(CPU_JOBS) $(ARGS)
	$(PY) scripts/make_report.py --scale cpu_prenorm
	$(PY) scripts/make_report.py --scale cpu

tabulate: $(STAMP) ## Rebuild results/<scale>/ tables and plots from the committed runs (results/<scale>/runs)
	$(PY) scripts/make_report.py --scale $(SCALE) $(ARGS)

verify-sample: $(STAMP) ## Retrain SAMPLE (5) committed runs drawn with SEED (1) and compare them bit for bit
	$(PY) scripts/verify_run.py results/$(SCALE)/runs --sample $(or $(SAMPLE),5) --sample-seed $(or $(SEED),1) $(ARGS)

rescore: $(STAMP) ## Recompute every committed BLEU and chrF from the gzipped hypotheses; check bleu.json and the tables
	$(PY) scripts/rescore.py --scale $(SCALE) $(ARGS)

verify: $(STAMP) ## Retrain a committed run's first updates and compare its losses bit for bit: make verify RUN=results/cpu/runs/table2_A-no_warmup-s1
	$(PY) scripts/verify_run.py $(RUN) $(ARGS)

bench: bench-optim bench-data bench-train ## All benchmarks (project against its peers, ratios printed)

bench-optim: $(STAMP) ## Optimizer step time and state memory vs torch.optim / transformers
	$(PY) scripts/bench_optim.py $(ARGS)

bench-data: $(STAMP) ## Encode throughput, scaling, padding efficiency, peak memory
	$(PY) scripts/bench_data.py $(ARGS)

bench-train: $(STAMP) ## Training tokens/s and beam search vs a MarianMTModel of the same size
	$(PY) scripts/bench_train.py $(ARGS)

kernels: $(STAMP) ## Compile every Triton kernel for sm_80/90/100 without a GPU -> results/gpu/kernels.md (fails on errors, spills)
	$(PY) scripts/compile_kernels.py $(ARGS)

check-pins: ## The torch pin, the triton extra and requirements/torch-triton.txt agree (one triton, torch's)
	$(PY) -m pytest -q tests/test_pins.py

gpu-check: $(STAMP) ## One GPU, <= 8 min: optimizer step, tokens/s + MFU, host syncs, a short run + BLEU -> results/gpu/check.md
	$(PY) scripts/gpu_check.py $(ARGS)

clean: ## Remove caches (keeps .venv, data/ and runs/)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install test lint data train evaluate reproduce tabulate verify bench bench-optim bench-data bench-train kernels check-pins gpu-check clean
