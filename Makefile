# One place for the commands the README, CI and developers share.
PYTHON ?= python3
VENV   := .venv
SAMENV := .venv-sam
BIN    := $(VENV)/bin

.PHONY: setup dev test lint typecheck check bench bench-local interleavings clean

# A project venv with the package and its dev tools; AWS SAM CLI in a venv of its
# own, because it pins versions of boto3 and others that the project must not inherit.
setup: $(BIN)/agent-channel $(SAMENV)/bin/sam

$(BIN)/agent-channel: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(SAMENV)/bin/sam:
	$(PYTHON) -m venv $(SAMENV)
	$(SAMENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAMENV)/bin/python -m pip install --quiet 'aws-sam-cli>=1.120,<2'

# The README's "run it" command: the local stack on an embedded default.
dev: setup
	$(BIN)/agent-channel dev

lint:
	$(BIN)/ruff check lib devtools functions tests bench
	$(BIN)/ruff format --check lib devtools functions tests bench

typecheck:
	$(BIN)/mypy lib devtools functions

# The README's test command: lint, types, then the whole suite.
test: setup lint typecheck
	PATH="$(CURDIR)/$(SAMENV)/bin:$$PATH" $(BIN)/pytest

bench: setup
	$(BIN)/python -m bench

# The local stack's own cost: launch to ready, a message's round trip (docs/LOCAL_STACK.md).
bench-local: setup
	$(BIN)/python -m bench.local_stack --repeat 3 --round-trips 200

# Every interleaving of the scenarios the default suite only samples (minutes).
interleavings: setup
	AGENT_CHANNEL_EXHAUSTIVE=1 $(BIN)/pytest -s -p no:cacheprovider --timeout 3600 \
		tests/concurrency/test_presence_interleavings.py -k exhaustively_on_demand

clean:
	rm -rf $(VENV) $(SAMENV) .pytest_cache .mypy_cache .ruff_cache
