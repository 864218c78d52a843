# Two entry points, each creating .venv as needed:
#   make demo   install and run the offline demo (the shipped shapes-world models, rendered scenes)
#   make test   install (with test dependencies and Chromium) and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint install bench

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml requirements-test-nodeps.txt
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps -r requirements-test-nodeps.txt
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/difflens demo --out demo-run

test: $(VENV)/.installed
	bash scripts/ensure-chromium.sh
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run_all.py
