# Two commands do everything on a fresh machine: `make demo` and `make test`.
# The interpreter: PYTHON=... or the first of python3.11, python3.12 (the DGL route:
# torch 2.10.0 + dgl 2.1.0), python3.13 (the torch route: newest torch, no DGL; pyproject.toml)
# on PATH that runs (a pyenv shim of a version not selected does not).
SUPPORTED_PYTHONS := 3.11 3.12 3.13
PYTHON ?= $(firstword $(foreach v,$(SUPPORTED_PYTHONS),$(shell python$(v) -c 'import sys' >/dev/null 2>&1 && echo python$(v))) $(shell python3 -c 'import sys; print("python3" if (3, 11) <= sys.version_info[:2] <= (3, 13) else "")' 2>/dev/null))
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= $(shell nproc)
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install clean-demo help gpu-check slurm-demo bench-ablation

help:
	@echo "make demo   - install into $(VENV) (if needed) and run the whole workflow on the synthetic demo cohort"
	@echo "make test   - install into $(VENV) (if needed) and run the test suite"
	@echo "make lint   - ruff + snakemake --lint"
	@echo "make slurm-demo - the demo through a real single-node SLURM (root, Debian), compared with a local run"
	@echo "make gpu-check  - training speed and memory on a CUDA GPU"
	@echo "make bench-ablation - every variant on 5 synthetic cohorts (~1.5 h)"
	@echo "make bench-repeats  - repeated CV x training seeds on one cohort: seed and split noise"

$(BIN)/python:
	@if [ -z "$(PYTHON)" ]; then \
	  echo "mmfusion needs Python 3.11, 3.12 or 3.13 and found none (python3.11, python3.12, python3.13 or python3 on PATH): install one (e.g. apt install python3.11-venv, pyenv install 3.11, conda create -n mmf python=3.11) or give its path: make PYTHON=/path/to/python3.11 ..."; exit 1; fi
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; ok = (3, 11) <= v <= (3, 13); ok or print(f"$(PYTHON) is Python {v[0]}.{v[1]}; mmfusion needs 3.11, 3.12 or 3.13 (make PYTHON=/path/to/python3.11 ...)"); sys.exit(0 if ok else 1)'
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list changes; `pip install -e` keeps code edits live.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The venv's bin goes first on PATH so the rules' `python` is the venv's.
demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --configfile config.yaml
	$(BIN)/snakemake --configfile config.yaml --report results/report/report.html
	@echo
	@echo "Demo finished. Results are in $$(pwd)/results/ (cohort in results/demo_cohort/)."
	@echo "Summary: results/report/summary.md   Report: results/report/report.html"

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The one lint command (CI runs it too): ruff over all Python, and snakemake --lint, which
# fails on any lint it reports (it exits 0 on lints by itself).
lint: $(STAMP)
	$(BIN)/ruff check mmfusion tests bench
	@out=$$($(BIN)/snakemake --lint 2>&1) || { echo "$$out"; exit 1; }; echo "$$out"; \
	if echo "$$out" | grep -qiE "lints for|warning"; then \
	  echo "snakemake --lint reported problems"; exit 1; fi

clean-demo:
	rm -rf results .snakemake

# Training on a CUDA GPU: mmfusion in each graph mode (torch / DGL hybrid / DGL on the GPU),
# samples/s, graph copy share, memory, amp bf16/fp16 (README); JSON in bench_results/. Not
# part of CI. Without a GPU it prints one line and exits 3, which is not a failure here.
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py || [ $$? -eq 3 ]

# The workflow through a real SLURM scheduler: a single-node Slurm on this machine (root,
# Debian; workflow/scripts/slurm-local.sh up|down), a 40-patient demo with every job submitted
# by sbatch (--profile workflow/profiles/slurm), compared with a local run of the same config
# (identical predictions and metrics), the cluster down again whatever happened.
# SLURM_DEMO_ARGS: e.g. --patients 12 --epochs 3. Results in results/slurm-demo/.
slurm-demo: $(STAMP)
	$(BIN)/python workflow/scripts/slurm_demo.py $(SLURM_DEMO_ARGS)

# Ablation benchmark (not a test): every variant, plus mmfusion on masked CT, through the
# real workflow on 5 synthetic demo cohorts; ~1.5 h on 2 cores, resumable. Results in
# bench_results/ablation/ (summary.md, summary.csv, ablation.png). ABLATION_ARGS: more options.
bench-ablation: $(STAMP)
	$(BIN)/python bench/bench_ablation.py --cores $(CORES) --resume $(ABLATION_ARGS)

# Repeated CV x training seeds on one synthetic cohort through the real workflow
# (--config 'folds={repeats: R}' 'train={seeds: S}'): how much of the variants' differences
# is seed and split noise. Results in bench_results/repeats/ (summary.md). REPEATS_ARGS: e.g.
# --repeats 3 --seeds 3 --n-patients 120 --epochs 40 --variants base1 base2 base3 mmfusion.
.PHONY: bench-repeats
bench-repeats: $(STAMP)
	$(BIN)/python bench/bench_repeats.py --cores $(CORES) $(REPEATS_ARGS)

# DICOM ingestion benchmark: mmfusion convert vs plastimatch convert on LUNG1-001.
.PHONY: bench-ingest
bench-ingest: $(STAMP)
	$(BIN)/python bench/bench_ingest.py

# Radiomics benchmark: our per-patient job vs a bare PyRadiomics execute(), interleaved.
.PHONY: bench-radiomics
bench-radiomics: $(STAMP)
	$(BIN)/python bench/bench_radiomics.py --size demo
	$(BIN)/python bench/bench_radiomics.py --size lung --repeats 5

# Training benchmark: our batched pipeline vs a naive per-sample (reference-style) one, at
# demo and paper shapes, plus the frozen-backbone (cached feature maps) step.
.PHONY: bench-train
bench-train: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/bench_train.py --shapes both
	$(BIN)/python bench/bench_frozen.py
