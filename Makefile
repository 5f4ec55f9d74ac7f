# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-output

.PHONY: demo test install clean

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

# The demo evaluates the encoder before training and after each epoch (kNN + fast linear probe on
# the embedded test split) and ends with its kNN top-1 next to the untrained encoder's and raw pixels'.
demo: $(STAMP)
	$(BIN)/dmjd pretrain --config demo --output-dir $(DEMO_DIR) --overwrite monitor.interval=1
	@echo "Demo results in $(DEMO_DIR)/: log.txt, metrics.jsonl, summary.json (kNN top-1), checkpoint-last.pth, reconstruction.png, curves.png"

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .hypothesis
