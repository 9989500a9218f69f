# cv_jax — common commands. `make install` once, then `make train` / `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/cifar10.py
WORKDIR ?= runs/cifar10
# `make install` installs what training needs and nothing more. The pip extras: dev = pytest,
# ruff, import-linter and wandb (for its tests); torch = torchvision weight import, its tests
# and the PyTorch side of `make bench`; wandb = Weights & Biases logging; onnx = jax2onnx and
# onnxruntime for `python -m cv_jax.export --format=onnx`. `make install-dev` (used by test and
# lint) adds dev and torch; `make test-onnx` tests the export in a venv of its own (.venv-onnx),
# since jax2onnx pins an older orbax-checkpoint.
EXTRAS ?=
DEV_EXTRAS ?= dev,torch

.PHONY: install install-dev train test test-onnx lint evaluate clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

install: $(PY)
	$(PY) -m pip install -e ".$(if $(EXTRAS),[$(EXTRAS)])"

install-dev: $(PY)
	$(PY) -m pip install -e ".[$(DEV_EXTRAS)]"

train: install
	$(PY) -m cv_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

# The suite runs in TEST_WORKERS processes (pytest-xdist), one test file per worker at a time
# (compiling is single-threaded, so two processes use both cores of a small CI machine).
TEST_WORKERS ?= 2
test: install-dev
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# The ONNX export's tests, in their own venv: jax2onnx pins orbax-checkpoint below the version the
# main venv gets, so the main suite (where those tests skip) keeps testing the newest one.
ONNX_VENV ?= .venv-onnx
test-onnx:
	test -x $(ONNX_VENV)/bin/python || $(PYTHON) -m venv $(ONNX_VENV)
	$(ONNX_VENV)/bin/python -m pip install -q -e ".[dev,onnx]"
	$(ONNX_VENV)/bin/python -m pytest -q tests/test_export.py

# Style, and the layering of the packages (import-linter contracts in pyproject.toml).
lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

evaluate: install
	$(PY) -m cv_jax.tools.evaluate --workdir=$(WORKDIR) --data=$(DATA) --split=test

clean:
	rm -rf runs .pytest_cache

# Workflows of several runs; CONFIG may be a config file or an experiments/ definition (whose
# crossval / ensemble / pseudo_label section sets the defaults that K, MEMBERS, ... override).
# Results go to runs/<target>/<config file name>/ unless WORKDIR is given.
.PHONY: cv ensemble pseudo-label
# A config's name: its file's, plus its ':arg' (experiments/x.py:cpu,epochs=1.6 -> x_cpu_epochs=1.6).
comma := ,
CONFIG_FILE = $(firstword $(subst :, ,$(CONFIG)))
CONFIG_ARG = $(word 2,$(subst :, ,$(CONFIG)))
CONFIG_NAME = $(basename $(notdir $(CONFIG_FILE)))$(if $(CONFIG_ARG),_$(subst $(comma),_,$(CONFIG_ARG)))
# An ensemble trained as one program (VECTORIZED=vmap|unroll) is kept apart from separate runs.
WORKFLOW_NAME = $(CONFIG_NAME)$(if $(VECTORIZED),_$(VECTORIZED))
WORKFLOW_DIR = $(if $(filter file,$(origin WORKDIR)),runs/$@/$(WORKFLOW_NAME),$(WORKDIR))

# The markdown report of a workflow, copied to experiments/results/<workflow name>.md (committed).
keep_result = mkdir -p experiments/results && \
	cp $(WORKFLOW_DIR)/$(1).md experiments/results/$(WORKFLOW_NAME).md

cv: install
	$(PY) -m cv_jax.workflows.crossval --config=$(CONFIG) --workdir=$(WORKFLOW_DIR) $(if $(K),--folds=$(K))
	$(call keep_result,crossval)

ensemble: install
	$(PY) -m cv_jax.workflows.ensemble --config=$(CONFIG) --workdir=$(WORKFLOW_DIR) \
		$(if $(METHOD),--method=$(METHOD)) $(if $(MEMBERS),--members=$(MEMBERS)) \
		$(if $(VECTORIZED),--vectorized=$(VECTORIZED))
	$(call keep_result,ensemble)

pseudo-label: install
	$(PY) -m cv_jax.workflows.pseudo_label --config=$(CONFIG) --workdir=$(WORKFLOW_DIR) \
		$(if $(ROUNDS),--rounds=$(ROUNDS)) $(if $(THRESHOLD),--threshold=$(THRESHOLD)) \
		$(if $(TOP_K),--top_k=$(TOP_K))
	$(call keep_result,pseudo_label)

# Sweeps and ablations: each point of an experiments/ definition in its own workdir under
# runs/sweeps/<name>/ (finished runs are skipped, unfinished ones resume), then the report in
# runs/sweeps/<name>/report/. PARALLEL=N runs N at a time. LAUNCHER=slurm submits each run as a
# SLURM job (installs the slurm extra; PARTITION, GPUS, TIME=minutes set the jobs' resources)
# and waits for them. Reports over any run folders:
# make report RUNS="runs/a runs/b" [REPORT_DIR=runs/report].
.PHONY: sweep ablation report
PARALLEL ?=
LAUNCHER ?= local
REPORT_DIR ?= runs/report
SWEEP_FLAGS = $(if $(PARALLEL),--parallel=$(PARALLEL)) --launcher=$(LAUNCHER) \
	$(if $(PARTITION),--slurm_partition=$(PARTITION)) $(if $(GPUS),--slurm_gpus_per_job=$(GPUS)) \
	$(if $(TIME),--slurm_time_min=$(TIME))
sweep ablation: override EXTRAS := $(strip $(EXTRAS)$(if $(filter slurm,$(LAUNCHER)),$(if $(EXTRAS),$(comma))slurm))

sweep: install
	$(PY) -m cv_jax.analysis.sweep --sweep=$(SWEEP) $(SWEEP_FLAGS)

ablation: install
	$(PY) -m cv_jax.analysis.sweep --sweep=$(ABLATION) $(SWEEP_FLAGS)

report: install
	$(PY) -m cv_jax.analysis.report $(RUNS) --out=$(REPORT_DIR)

# Studies whose second stage starts from the first stage's runs; SIZE=cpu|full. The reports
# are copied to experiments/results/ (committed).
.PHONY: transfer-study distill-study
SIZE ?= cpu

transfer-study: install
	$(PY) -m cv_jax.analysis.sweep --sweep=experiments/transfer_source.py:$(SIZE)
	$(PY) -m cv_jax.analysis.sweep --sweep=experiments/transfer.py:$(SIZE)
	mkdir -p experiments/results && rm -rf experiments/results/transfer_$(SIZE)
	cp -r runs/sweeps/transfer_$(SIZE)/report experiments/results/transfer_$(SIZE)

# One study of experiments/ (optimizers, schedules, batch_size, regularization, architectures):
# make study STUDY=optimizers SIZE=cpu; its report is copied to experiments/results/<STUDY>_<SIZE>.
.PHONY: study
study: install
	$(PY) -m cv_jax.analysis.sweep --sweep=experiments/$(STUDY).py:$(SIZE) $(if $(PARALLEL),--parallel=$(PARALLEL))
	mkdir -p experiments/results && rm -rf experiments/results/$(STUDY)_$(SIZE)
	cp -r runs/sweeps/$(STUDY)_$(SIZE)/report experiments/results/$(STUDY)_$(SIZE)

distill-study: install
	$(PY) -m cv_jax.analysis.sweep --sweep=experiments/distill_teacher.py:$(SIZE)
	$(PY) -m cv_jax.analysis.sweep --sweep=experiments/distill.py:$(SIZE)
	mkdir -p experiments/results && rm -rf experiments/results/distill_$(SIZE)
	cp -r runs/sweeps/distill_$(SIZE)/report experiments/results/distill_$(SIZE)

# Several seeds, and hyper-parameters that keep the shapes, trained as one program, then the
# report over its members (runs/vectorized/<config name>/report/ unless WORKDIR is given), e.g.
# make vectorized CONFIG=configs/cifar10.py:cpu SEED_LIST=0,1,2 MODE=unroll \
#     VARY="optimizer.learning_rate=0.2,0.4 loss.label_smoothing=0.1,0.2"
.PHONY: vectorized
SEED_LIST ?= 0,1,2,3
MODE ?= vmap
VECTORIZED_DIR = $(if $(filter file,$(origin WORKDIR)),runs/vectorized/$(CONFIG_NAME),$(WORKDIR))

vectorized: install
	$(PY) -m cv_jax.workflows.vectorized --config=$(CONFIG) --workdir=$(VECTORIZED_DIR) \
		--seeds=$(SEED_LIST) --mode=$(MODE) $(foreach v,$(VARY),--vary=$(v))
	$(PY) -m cv_jax.analysis.report $(VECTORIZED_DIR) --out=$(VECTORIZED_DIR)/report \
		--title="$(CONFIG): seeds $(SEED_LIST)$(if $(VARY), x $(VARY))"

# Speed: the train-step throughput table against PyTorch (make bench MODELS=resnet20,resnet50
# BATCH=256 DTYPE=bfloat16 BENCH_FLAGS=--torch_compile), and the headline recipe timed over
# seeds (make speedrun SEEDS=25), whose report goes to runs/speedrun/speedrun.md.
.PHONY: bench speedrun
MODELS ?= resnet20
BATCH ?= 128
DTYPE ?= float32
SEEDS ?= 25
SPEEDRUN_CONFIG ?= configs/cifar10.py:headline

bench: EXTRAS = torch
bench: install
	$(PY) -m cv_jax.tools.bench --models=$(MODELS) --batch_size=$(BATCH) --dtype=$(DTYPE) --torch \
		$(BENCH_FLAGS)

speedrun: install
	$(PY) -m cv_jax.tools.speedrun --config=$(SPEEDRUN_CONFIG) --seeds=$(SEEDS) \
		--workdir=$(if $(filter file,$(origin WORKDIR)),runs/speedrun,$(WORKDIR))

# The GPU check (benchmarks/gpu_check.py; docs/speed.md): the headline speed run over as many
# seeds as fit, ResNet-50 bf16 against PyTorch, 1/4/8 vectorised seeds, in one results file.
# A GPU machine that has JAX, flax, optax, orbax-checkpoint and torch but no internet gets the
# rest as wheels (make gpu-wheels: .whl/, Python 3.12) and CIFAR-10 in data/ (make gpu-data);
# both folders are ignored by git, so carry them there. Then, on that machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py --data=data --out=$OUT/gpu_check.json
# (or make gpu-check GPU_CHECK_OUT=...). Here, `make gpu-check GPU_CHECK_FLAGS=--dry_run` runs
# it at tiny sizes on the CPU.
.PHONY: gpu-check gpu-wheels gpu-data
GPU_WHEELS ?= ml_collections==1.1.0 tensorboardX==2.6.5 grain==0.2.18 array_record==0.8.6 \
	cloudpickle==3.1.3 portpicker==1.6.0
CIFAR10_TARBALL ?= ../shared/data/cifar10-jpeg.tar.gz
GPU_CHECK_OUT ?= runs/gpu_check/gpu_check.json
GPU_CHECK_FLAGS ?=
SOME_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))

gpu-check:
	$(SOME_PY) benchmarks/gpu_check.py $(if $(filter --dry_run,$(GPU_CHECK_FLAGS)),,--data=data) \
		--out=$(GPU_CHECK_OUT) $(GPU_CHECK_FLAGS)

gpu-wheels:
	$(SOME_PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

gpu-data:
	mkdir -p data && cp $(CIFAR10_TARBALL) data/
