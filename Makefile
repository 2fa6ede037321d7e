# One entry point per job. `make run` and `make test` set up .venv/ themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run serve test lint compile lock clean

$(STAMP): pyproject.toml constraints.txt
	@echo "==> creating $(VENV) and installing the project (pinned by constraints.txt)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project

run: $(STAMP) ## run the pipeline locally (kfp.local) and deploy to the local InferenceService
	$(BIN)/mlops run $(ARGS)

serve: $(STAMP) ## serve the local InferenceService on :8080 (foreground)
	$(BIN)/mlops serve $(ARGS)

test: $(STAMP) ## unit, local integration and offline cluster checks (e2e tests skip without a cluster)
	$(BIN)/pytest $(ARGS)

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check mlops components pipelines serving
	$(BIN)/mypy

compile: $(STAMP) ## rewrite pipelines/compiled/training_pipeline.yaml
	$(BIN)/mlops compile

lock: $(STAMP) ## refresh constraints.txt from the installed set
	@$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > constraints.new
	@{ head -2 constraints.txt; cat constraints.new; } > constraints.txt && rm constraints.new

clean: ## remove local state (.mlops/) but keep .venv/
	rm -rf .mlops local_outputs
