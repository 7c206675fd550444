# Two commands on a fresh machine: `make train EXP=normnet_quick` and `make test`.
# Both create .venv and install the project first (torch pinned to 2.13.*).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# `make train experiment=X` means EXP=X
EXP    ?= $(or $(experiment),normnet)
ARGS   ?=
STAMP  := $(VENV)/.installed

.PHONY: install train prepare evaluate predict cv compare sweep ablations test test-all bench lint clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)          ## make train EXP=normnet ARGS="trainer.max_steps=10 model.members=3" [RUN_DIR=runs/... to resume]
	$(BIN)/normnet train $(if $(RUN_DIR),--run-dir $(RUN_DIR)) $(EXP) $(ARGS)

prepare: $(STAMP)        ## make prepare EXP=normnet: build the data cache only
	$(BIN)/normnet prepare $(EXP) $(ARGS)

evaluate: $(STAMP)       ## make evaluate CKPT="a.ckpt b.ckpt" ARGS="data.test=[folder] data.test_root=/data/covid"
	$(BIN)/normnet evaluate --checkpoint $(CKPT) $(ARGS)

predict: $(STAMP)        ## make predict CKPT=last.ckpt INPUT=scan/ OUTPUT=mask.nrrd REPORT=report.json (and report.png)
	$(BIN)/normnet predict --checkpoint $(CKPT) --input $(INPUT) --output $(OUTPUT) $(if $(REPORT),--report $(REPORT))

cv: $(STAMP)             ## make cv EXP=unet3d ARGS="cv.folds=5": k-fold cross-validation over data.train, one run per fold
	$(BIN)/normnet cv $(if $(RUN_DIR),--run-dir $(RUN_DIR)) $(EXP) $(ARGS)

compare: $(STAMP)        ## make compare RUNS="runs/normnet/train-... runs/threshold/train-...": Table III, CSV, PNG
	$(BIN)/normnet compare $(RUNS) $(if $(OUTPUT),--output $(OUTPUT))

sweep: $(STAMP)          ## make sweep SWEEP=experiments/sweeps/smoke.yaml [COUNT=N]: an agent (W&B with a key, else Optuna)
	$(BIN)/normnet sweep $(SWEEP) $(if $(COUNT),--count $(COUNT))

ablations: $(STAMP)      ## make ablations SWEEP_DIR=runs/sweeps/smoke: Tables IV and V (md, CSV, PNG) again
	$(BIN)/normnet ablations $(SWEEP_DIR)

test: $(STAMP)           ## fast CPU tests
	$(BIN)/python -m pytest -q

test-all: $(STAMP)       ## including the slow ones
	$(BIN)/python -m pytest -q -m ""

bench: $(STAMP)          ## lesion generator and post-processing vs a plain scipy reference
	$(BIN)/python -m benchmarks.bench_generator_postprocessing $(ARGS)

lint: $(STAMP)
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check lightning_normnet datamodules callbacks tests benchmarks

clean:
	rm -rf $(VENV) cache runs wandb
