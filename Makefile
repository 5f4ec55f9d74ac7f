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
	$(BIN)/pip install -q -e ".[test,tensorboard]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dmjd pretrain --config demo --output-dir $(DEMO_DIR) --overwrite
	@echo "Demo results in $(DEMO_DIR)/ (metrics.jsonl, checkpoint-last.pth, reconstruction PNG)"

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .hypothesis
