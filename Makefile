# arena-distill: every stage is one target; ARGS passes Hydra overrides, e.g.
#   make data ARGS="data=competition data.train.path=../shared/data/preference/pandalm.csv"
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# The demo's overrides; `make demo DEMO_ARGS=...` adds more.
DEMO_ARGS ?=
DEMO := experiment=demo $(DEMO_ARGS)
# Launcher for the training stages: plain python, or e.g.
#   LAUNCH="accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml"
#   LAUNCH="torchrun --nproc_per_node 8"
LAUNCH ?= $(PY)
STAGE = $(PY) -m arena_distill
TRAIN_STAGE = $(LAUNCH) -m arena_distill
# MODEL=name narrows a multi-model target to one model config; FOLD=k to one fold.
MODEL ?=
FOLD ?=
config_value = $(shell $(PY) -m arena_distill.config $(1) $(2))
TEACHERS = $(or $(MODEL),$(call config_value,pipeline.teachers,$(ARGS)))
STUDENT = $(or $(MODEL),$(call config_value,pipeline.student,$(ARGS)))
PRETRAIN_MODELS = $(or $(MODEL),$(call config_value,pipeline.teachers,$(ARGS)) $(call config_value,pipeline.student,$(ARGS)))
FOLD_ARG = $(if $(FOLD),stages.teacher.folds=$(FOLD))
DISTILL_FOLD_ARG = $(if $(FOLD),stages.distill.folds=$(FOLD))

.PHONY: help setup test test-slow test-all lint format demo pipeline demo-data data tiny-models tokenize \
	pretrain train-teacher dump-logits pseudo-label distill full merge quantize predict predict-holdout baselines report plan kaggle-package clean \
	test-gpu test-kill \
	bench bench-gpu gpu-carry gpu-check

help:
	@echo "make setup      create $(VENV) and install the package with the dev extra"
	@echo "make test       the default test suite (what CI runs)"
	@echo "make test-slow  the slow-marked tests"
	@echo "make test-gpu   the CUDA tests (pytest -m gpu; skipped without a GPU)"
	@echo "make test-kill  the SIGKILL fault-injection tests (KILL_SWEEP=1: the slow sweep too)"
	@echo "make demo       the whole pipeline on the embedded demo (CPU, tiny models; one process)"
	@echo "make pipeline   the whole pipeline on your CSV: EXPERIMENT=cpu_real TRAIN=a.csv[,b.csv] OUT=dir"
	@echo "                [PRETRAIN=c.csv[,d.csv]] [ABLATE=1: also the student without teacher terms]"
	@echo "                [UNLABELLED=e.csv[,f.csv]: teacher-labelled pool, also trained on by the student]"
	@echo "                [FORCE=1: rerun every stage, also those whose outputs are fresh]"
	@echo "make lint       ruff"
	@echo "stages (ARGS=\"hydra overrides\"): demo-data data tiny-models tokenize"
	@echo "  pretrain train-teacher dump-logits pseudo-label distill (MODEL=name, FOLD=k, LAUNCH=\"accelerate launch ...\")"
	@echo "  full (the student on every row: pipeline.final=full) merge quantize predict ensemble"
	@echo "  predict-holdout baselines report kaggle-package"
	@echo "make test-stale the stale-input tests (fingerprints, refusals naming what changed)"
	@echo "make plan       projected prediction time on a device (stages.plan.*: lengths, rows, device)"
	@echo "make stack      level-2 LR over the student, baselines and length features (stages.stack.*)"
	@echo "make sweep      a small grid of Hydra values, one run per point, one results table (ARGS=\"--out DIR --grid k=v1,v2 ...\")"
	@echo "make bench      predict / training engines vs naive, limit and bare loops (CPU or GPU; bench/*.json)"
	@echo "                [BENCH_ARGS=\"--quick | --rows N --models a,b --override key=value\"]"
	@echo "make bench-gpu  full-size random-init shapes on one GPU through the engines (< 6 min; bench/gpu.json)"
	@echo "                [BENCH_GPU_ARGS=\"--dry-run | --preset levers | --points a,b --extra key=value\"]"
	@echo "make gpu-carry  .carry/: the wheels a GPU machine without a package index lacks (scripts/gpu_device.sh runs there)"
	@echo "make gpu-check  scripts/gpu_device.sh here at tiny shapes, cut to that machine's packages"

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -m "not slow and not gpu" -q

test-slow: setup
	$(PY) -m pytest -m "slow" -q

test-all: setup
	$(PY) -m pytest -q

# the CUDA tests (tests/gpu/: bf16/fp16 training and prediction, QLoRA, GPTQ on the GPU, the
# predict stage on one GPU); skipped without CUDA; a few minutes on one H100/H200
test-gpu: setup
	$(PY) -m pytest -m gpu -q

# the SIGKILL tests (tests/test_kill.py): a handful of kill points; KILL_SWEEP=1 adds the slow sweep
test-kill: setup
	$(PY) -m pytest tests/test_kill.py -q $(if $(KILL_SWEEP),,-m "not slow")

lint: setup
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

format: setup
	$(VENV)/bin/ruff check --fix src tests scripts
	$(VENV)/bin/ruff format src tests scripts

# --- stages -------------------------------------------------------------------------------
demo-data: setup
	$(STAGE) demo_data $(ARGS)

data: setup
	$(STAGE) data $(ARGS)

tiny-models: setup
	$(STAGE) tiny_models $(ARGS)

tokenize: setup
	$(STAGE) tokenize $(ARGS)

# post-pretraining for every model of the recipe (teachers and student), or MODEL=name
pretrain: setup
	for m in $(filter-out baseline/%,$(PRETRAIN_MODELS)); do $(TRAIN_STAGE) pretrain $(ARGS) model=$$m || exit 1; done

# every configured teacher over all folds (MODEL=name / FOLD=k to narrow); a classical teacher
# (baseline/<name>) has nothing to train: dump-logits fits it per fold
train-teacher: setup
	for m in $(filter-out baseline/%,$(TEACHERS)); do $(TRAIN_STAGE) teacher $(ARGS) model=$$m $(FOLD_ARG) || exit 1; done

dump-logits: setup
	for m in $(filter-out baseline/%,$(TEACHERS)); do $(TRAIN_STAGE) dump_logits $(ARGS) model=$$m || exit 1; done
	for m in $(patsubst baseline/%,%,$(filter baseline/%,$(TEACHERS))); do $(STAGE) dump_logits $(ARGS) \
		stages.dump_logits.baseline=$$m 'stages.dump_logits.out_dir=$${stages.distill.logits_dir}/baseline/'$$m || exit 1; done

# every teacher's soft labels on the unlabelled pool (data.unlabelled; UNLABELLED=a.csv[,b.csv])
# -> runs/<run>/pseudo; then `make distill ARGS="stages.distill.pseudo_dir=runs/<run>/pseudo"`
pseudo-label: setup
	$(STAGE) pseudo_label $(if $(UNLABELLED),'data.unlabelled=[$(UNLABELLED)]') $(ARGS)

# the student (pipeline.student) over all folds, distilled from every teacher's logits
distill: setup
	$(TRAIN_STAGE) distill $(ARGS) model=$(STUDENT) $(DISTILL_FOLD_ARG)

# pipeline.final=full: the student once more on every cv and extra row, the fold students'
# settings (runs/<run>/full); then merged alone and quantized: make merge ARGS="stages.merge.source=runs/<run>/full
# stages.merge.out_dir=runs/<run>/full_merged" (the pipeline's "merge full" / "quantize full" steps)
full: setup
	$(TRAIN_STAGE) full $(ARGS) model=$(STUDENT)

# the student's fold LoRAs -> one model (runs/<run>/merged)
merge: setup
	$(STAGE) merge $(ARGS) model=$(STUDENT)

# the merged model quantized, score head intact (runs/<run>/quantized): GPTQ 8-bit, or
# ARGS="stages.quantize.method=bnb_int8" (bitsandbytes LLM.int8) / method=none (fp16 copy)
quantize: setup
	$(STAGE) quantize $(ARGS) model=$(STUDENT)

# swap-TTA prediction of the test rows and submission.csv (runs/<run>/predictions)
predict: setup
	$(STAGE) predict $(ARGS) model=$(STUDENT)

# whole-data models scored on the labelled holdout: merged, quantized, and each fold's student
# (averaged by the report into folds_mean) -> runs/<run>/holdout/<name>/ (the pipeline's steps)
predict-holdout: setup
	$(STAGE) pipeline --only holdout --force $(ARGS)

# class prior, length LR, TF-IDF LR on the same rows and folds (runs/<run>/baselines/)
baselines: setup
	$(STAGE) baselines $(ARGS)

report: setup
	$(STAGE) report $(ARGS)

# the stacker (runs/<run>/stack): a level-2 LR over the fold students' OOF logits, the
# baselines and the length features, cross-fitted over the folds, applied to the final model
.PHONY: stack
stack: setup
	$(STAGE) stack $(ARGS) model=$(STUDENT)

# projected prediction time of the predict settings on a device (no GPU needed), e.g.
#   make plan ARGS="experiment=first_place stages.plan.lengths=../shared/gpu/lengths.json stages.plan.rows=25000"
plan: setup
	$(STAGE) plan $(ARGS)

# the model folder, the wheels and dataset-metadata.json for a Kaggle dataset, e.g.
#   make kaggle-package KAGGLE_ARGS="--run-dir runs/first_place --out dist/kaggle --kaggle-user me"
KAGGLE_ARGS ?=
kaggle-package: setup
	$(PY) scripts/package_kaggle.py $(KAGGLE_ARGS)

# --- the whole chain: `arena-distill pipeline` (the order lives in arena_distill/pipeline.py) ------
# One process runs every stage; a stage whose output is complete and fresh is skipped (rerun
# `make demo` after changing a setting: only what depends on it runs again). FORCE=1 reruns all.
FORCE ?=
PIPELINE = $(STAGE) pipeline $(if $(FORCE),--force)

demo: setup
	$(PIPELINE) $(DEMO)
	@echo
	@echo "submission:  runs/demo/predictions/submission.csv"
	@echo "OOF summary: runs/demo/report/report.md (and report.html, metrics.json)"

# the whole chain on any competition-format file(s):
#   make pipeline EXPERIMENT=cpu_real TRAIN=../shared/data/preference/llmeval2.csv OUT=runs/llmeval2
# TRAIN=a.csv,b.csv trains on the union of the files (ids must differ); PRETRAIN=c.csv[,d.csv]
# post-pretrains every model on those files first and starts teachers and student from that
# adapter; ABLATE=1 also trains the same student without teacher terms (kl = cos = 0) into
# students/<student>_ce_only, which the report shows beside the distilled one. ARGS adds overrides.
EXPERIMENT ?= cpu_real
TRAIN ?=
OUT ?=
PRETRAIN ?=
ABLATE ?=
UNLABELLED ?=
PIPE = experiment=$(EXPERIMENT) $(if $(TRAIN),'data.train.path=[$(TRAIN)]') $(if $(OUT),'run_dir=$(OUT)') \
	$(if $(PRETRAIN),'data.pretrain=[$(PRETRAIN)]' stages.teacher.init_from_pretrain=true stages.distill.init_from_pretrain=true) \
	$(if $(ABLATE),pipeline.ablate=true) $(if $(UNLABELLED),'data.unlabelled=[$(UNLABELLED)]') $(ARGS)
pipeline: setup
	$(PIPELINE) $(PIPE)

# the stale-input checks alone (input fingerprints, refusals naming what changed, overwrite=true)
.PHONY: test-stale
test-stale: setup
	$(PY) -m pytest -q -k stale tests/test_fingerprint.py tests/stages/test_stale_stage.py
# the pipeline (or --only some stages) over a small grid of Hydra values, one run folder per
# point and one results table (<out>/results.md, results.json), e.g.
#   make sweep ARGS="--out runs/sweep --grid stages.teacher.epochs=1,2 --only data,tokenize,teacher \
#     experiment=cpu_real data.train.path=[../shared/data/preference/llmeval2.csv]"
.PHONY: sweep
sweep: setup
	$(PY) scripts/sweep.py $(ARGS)

# pipeline.final=folds: every fold's student predicts the test rows (the pipeline's
# "predict fold_<k>" steps, into runs/<run>/fold_predictions/fold_<k>), averaged into
# runs/<run>/predictions (submission.csv)
.PHONY: ensemble
ensemble: setup
	$(STAGE) ensemble $(ARGS)

# --- benchmarks (scripts/bench*.py; what they measure: docs/ARCHITECTURE.md, "Benchmarks") -------
# the predict engine vs a naive loop and the unpadded limit, train.fit vs a bare torch loop, on
# tiny models and MiniLM with a real file's length mix -> bench/inference.json, bench/training.json
BENCH_ARGS ?=
bench: setup
	$(PY) scripts/bench.py $(BENCH_ARGS)

# Gemma-2-9B / Llama-3-70B / Qwen2-72B shapes (random init, no download) on one GPU: tokens/s,
# MFU, peak memory per grid point -> bench/gpu.json; BENCH_GPU_ARGS=--dry-run: tiny, on the CPU
BENCH_GPU_ARGS ?=
bench-gpu: setup
	$(PY) scripts/bench_gpu.py $(BENCH_GPU_ARGS)

# A GPU machine with no package index (e.g. a lent H200): .carry/ holds the wheels its image
# lacks and the real length mix; there `bash scripts/gpu_device.sh` runs bench-gpu, the levers
# grid and test-gpu in one command (< 10 min). gpu-check runs that command here at tiny shapes,
# in this environment cut to the image's packages (scripts/gpu_carry.py).
gpu-carry: setup
	$(PY) scripts/gpu_carry.py

gpu-check: gpu-carry
	rm -rf bench/device-check
	OUT=bench/device-check DRY_RUN=1 $(PY) scripts/gpu_carry.py --check --wheels -- bash scripts/gpu_device.sh
