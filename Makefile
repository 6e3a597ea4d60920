# Two commands set everything up on a fresh machine:
#   make quickstart   train on the example comments, evaluate on held-out ones, predict (local Ray)
#   make test         the whole test suite: unit, integration (shared local Ray, Redis, S3), end-to-end,
#                     in two lanes at once (tests/lanes.py)
# While changing code:
#   make unit         the tests that start nothing and train nothing (about 30 s)
#   make lint         ruff (lint and format) and mypy, as CI runs them
#   make coverage     the whole suite under coverage.py, CLI processes included (Ray workers are not)
VENV   ?= .venv
PYTHON ?= python3
# PyTorch, pinned. Where a CPU wheel of this version sits in pip's find-links folder (as on the
# project's machines) that is what is taken. Elsewhere, on Linux, PyPI's torch IS the CUDA build
# (several GB, with its CUDA libraries); for the CPU build choose PyTorch's CPU index:
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
RUN    ?= runs/example
# The packages go in with uv: 34 s here, where pip took 100. uv reads no pip.conf, so it is given
# pip's find-links folder (the CPU torch above) and the system's CA certificates, as pip is. It
# compiles the bytecode, as pip does: where PYTHONDONTWRITEBYTECODE is set (as on this project's
# machines) every process, each Ray worker's included, would otherwise compile all it imports,
# and the tests took twice as long.
UV      = $(BIN)/uv pip install -q --python $(BIN)/python --native-tls --compile-bytecode
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))

.PHONY: setup quickstart test unit lint coverage clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==0.13.9
	$(UV) $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) $(TORCH)
	$(UV) -e ".[dev]"
	touch $@

quickstart: setup
	$(BIN)/ray-sentiment train --train examples/train.csv --output $(RUN)
	$(BIN)/ray-sentiment evaluate --model $(RUN) --data examples/test.csv --output $(RUN)/test_report.json
	$(BIN)/ray-sentiment predict --model $(RUN) "I love the new update 😍" "the app keeps crashing, fix it 😡" "is it out on android?"
	@echo "Made: the model bundle $(RUN)/ and its test metrics $(RUN)/test_report.json. Next, with this model:"
	@echo "  score Parquet files:  $(BIN)/ray-sentiment score --model $(RUN) --input comments.parquet --output scored/"
	@echo "  serve it over HTTP:   $(BIN)/ray-sentiment serve --model $(RUN)   # POST http://127.0.0.1:8000/v1/sentiment"
	@echo "  score a Redis stream: $(BIN)/ray-sentiment stream --model $(RUN) --broker redis://127.0.0.1:6379/0 --input-stream comments --output-stream comments:scored"
	@echo "README.md walks through all three on the airline tweets."

test: setup
	$(BIN)/python tests/lanes.py -v --durations=10

unit: setup
	$(BIN)/python -m pytest -q -m "not integration and not e2e"

coverage: setup
	rm -rf .coverage .coverage.*
	$(BIN)/python -m pytest -q --cov=ray_sentiment --cov-report=term:skip-covered

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy ray_sentiment

clean:
	rm -rf runs .pytest_cache .coverage .coverage.*
