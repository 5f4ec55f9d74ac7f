# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-output

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch/torchvision pinned to the builds that install from local disk on our machines;
# any torch >= 2.4 works for users (see pyproject.toml).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[test,tensorboard,webdataset]"
	touch $(STAMP)

install: $(STAMP)

# The demo: the auto recipe (dmjd.recipe) for the embedded Fashion-MNIST sample and a budget of
# DEMO_BUDGET (5 minutes: at 2 the probes barely move on 2 CPU cores, see README), with the kNN +
# linear-probe monitor; it ends by saying what its numbers mean
# (trained against untrained encoder against raw pixels) and what to run next.
DEMO_BUDGET ?= 5m
demo: $(STAMP)
	$(BIN)/dmjd pretrain --output-dir $(DEMO_DIR) --overwrite train.budget=$(DEMO_BUDGET)
	@echo "Demo results in $(DEMO_DIR)/: log.txt, metrics.jsonl, config.yaml (the recipe's choices and reasons), summary.json, checkpoint-last.pth, reconstruction.png, curves.png"

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

# Lint and type checks, configured in pyproject.toml ([tool.ruff], [tool.mypy]; mypy checks src/dmjd).
LINT_PATHS ?= src tests benchmarks tools examples
lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .hypothesis
