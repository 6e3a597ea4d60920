# Two commands set everything up on a fresh machine:
#   make quickstart   train on the example comments, evaluate on held-out ones, predict (local Ray)
#   make test         the whole test suite (unit, integration on local Ray, end-to-end CLI)
VENV   ?= .venv
PYTHON ?= python3
# CPU build of PyTorch; on a GPU machine use e.g. TORCH="torch==2.13.0" with the CUDA index.
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin

.PHONY: setup quickstart test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

quickstart: setup
	$(BIN)/ray-sentiment train --train examples/train.csv --output runs/example
	$(BIN)/ray-sentiment evaluate --model runs/example --data examples/test.csv --output runs/example/test_report.json
	$(BIN)/ray-sentiment predict --model runs/example "I love the new update 😍" "the app keeps crashing, fix it 😡" "is it out on android?"

test: setup
	$(BIN)/python -m pytest -v --durations=10

clean:
	rm -rf runs .pytest_cache
