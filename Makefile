# Two commands on a fresh machine: `make run` (set up, then run the pipeline on the embedded
# simulated survey) and `make test` (set up, then run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
# Network arithmetic for every network rule, e.g. `make run PRECISION=fp32` (default: each
# rule's profile value, `auto`: bf16 only where the CPU has it natively and it times faster).
PRECISION ?=
NETWORK_RULES := pretrain finetune supervised predict embed probe
PRECISION_ARGS := $(if $(PRECISION),--set-resources $(foreach r,$(NETWORK_RULES),$(r):precision=$(PRECISION)))
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run science test setup lint format bench clean dry-run report

$(BIN)/ssl-photoz: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# pip takes torch/torchvision from this machine's local wheels (capped at 2.14.1 / 0.29.1).
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/ssl-photoz

run: setup
	$(BIN)/snakemake --cores $(CORES) --profile profiles/default $(PRECISION_ARGS)
	$(BIN)/snakemake --profile profiles/default --report results/report.html

# The science run (docs/science.md): about 2 hours on 2 cores in fp32; reruns resume.
science: setup
	$(BIN)/snakemake --cores $(CORES) --profile profiles/default --configfile configs/science.yaml $(PRECISION_ARGS)
	$(BIN)/snakemake --profile profiles/default --configfile configs/science.yaml --report results/science/report.html

report: setup
	$(BIN)/snakemake --profile profiles/default --report results/report.html

dry-run: setup
	$(BIN)/snakemake -n --profile profiles/default

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --profile profiles/default

format: setup
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/ruff check --fix src tests benchmarks scripts
	$(BIN)/snakefmt Snakefile workflow/rules

bench: setup
	$(BIN)/python benchmarks/bench_sky.py

clean:
	rm -rf results resources .snakemake
