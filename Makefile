# One place for the commands the README, CI and developers share.
PYTHON ?= python3
VENV   := .venv
SAMENV := .venv-sam
BIN    := $(VENV)/bin

.PHONY: setup dev test lint typecheck check bench bench-local bench-load mutate mutate-again chaos simulate interleavings clean

# A project venv with the package and its dev tools; AWS SAM CLI in a venv of its
# own, because it pins versions of boto3 and others that the project must not inherit.
setup: $(BIN)/agent-channel $(SAMENV)/bin/sam

# The layer's constraints apply here too, so tests import what Lambda imports.
$(BIN)/agent-channel: pyproject.toml lib/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -c lib/constraints.txt
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
	$(BIN)/mypy lib devtools functions bench

# The README's test command: lint, types, then the whole suite, on TEST_WORKERS
# processes (pytest-xdist; 0: in this one). Each worker takes tests as it frees up
# and steals from the other's share at the end (worksteal), so one long test does
# not leave a worker idle; the e2e tests each start their own servers on free ports.
TEST_WORKERS ?= 2
test: setup lint typecheck
	PATH="$(CURDIR)/$(SAMENV)/bin:$$PATH" $(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

bench: setup
	$(BIN)/python -m bench

# The local stack's own cost: launch to ready, a message's round trip (docs/LOCAL_STACK.md).
bench-local: setup
	$(BIN)/python -m bench.local_stack --repeat 3 --round-trips 200

# Presence under a stepped arrival rate on the local stack, moto's capacity beside
# (docs/BENCHMARKS.md, "Presence under load"; `make bench` writes it there). Minutes.
bench-load: setup
	nice $(BIN)/python -m bench.presence_steps

# Mutation testing of the race guards (docs/MUTATION.md): the mutants of the
# functions that hold the storage conditions and read their refusals, against the
# test selection in pyproject.toml [tool.mutmut]. Long: on demand, never in `make
# test`. MUTANTS takes mutmut's name globs; MUTANTS='*' runs every mutant of the
# modules in only_mutate (hours on two cores). Every survivor must be listed with
# its reason in docs/MUTATION.md.
PRESENCE_GUARDS := _token_writes _lease_writes subscribe restore touch attach \
	drop_connection drop_lease reap clear_routing owe_grace settle_owed_grace close_agent
TASK_GUARDS     := create _transition delegate claim_reply cancel_delegated cancel
GUARD_MUTANTS   := \
	$(foreach f,$(PRESENCE_GUARDS),agent_channel.presence.dynamodb.x*DynamoPresenceStore*$(f)__mutmut_*) \
	$(foreach f,$(TASK_GUARDS),agent_channel.tasks.dynamodb.x*DynamoTaskStore*$(f)__mutmut_*) \
	agent_channel.grace.cancellation.x_recheck__mutmut_* \
	agent_channel.grace.cancellation.x__reaped__mutmut_* \
	agent_channel.grace.dynamodb.x*DynamoTaskBook*cancel__mutmut_* \
	agent_channel.delivery.dynamodb.x*DynamoDecisionStore*record__mutmut_* \
	agent_channel.storage.schema.x_presence_version_is__mutmut_* \
	$(foreach f,classify condition_failed failed_positions cancellation_codes,agent_channel.storage.transactions.x_$(f)__mutmut_*)
MUTANTS ?= $(GUARD_MUTANTS)
MUTMUT  := $(BIN)/python -m agent_channel_dev.mutation

mutate: setup
	rm -rf mutants
	$(MAKE) --no-print-directory mutate-again

# MUTANTS again over the mutants/ of the last `make mutate`: its stats and other
# results are kept, the tests are copied afresh and any new test joins the stats.
# To prove that a new test kills a survivor, or to finish an interrupted run.
mutate-again: setup
	PATH="$(CURDIR)/$(SAMENV)/bin:$$PATH" $(MUTMUT) run $(foreach m,$(MUTANTS),'$(m)') || true
	$(MUTMUT) results | grep -v ': not checked$$' > mutation-results.txt || true
	@echo "survivors listed in mutation-results.txt; record each in docs/MUTATION.md"

# At-least-once delivery under chaos at full size (the suite runs 40 dispatches).
CHAOS_DISPATCHES ?= 500
chaos: setup
	CHAOS_DISPATCHES=$(CHAOS_DISPATCHES) $(BIN)/pytest -q -s -p no:cacheprovider \
		tests/e2e/test_chaos.py --timeout=1800

# The scale model at 100,000 and 1,000,000 agents, and the cost per session-month
# (docs/SCALE.md); CI runs 10,000 in tests/behaviour/test_scale_simulation.py. Each
# storm run goes on until every dropped session is back (at most 90 simulated
# minutes; a million agents need 52): about 30 minutes on two shared cores.
simulate: setup
	$(BIN)/python -m agent_channel_dev.scale --cost 15 30 --lambda-heartbeats
	nice $(BIN)/python -m agent_channel_dev.scale --agents 100000 1000000 --storm-at 5 \
		--minutes 90 --until-settled

# Every interleaving of the scenarios the default suite only samples (minutes).
interleavings: setup
	AGENT_CHANNEL_EXHAUSTIVE=1 $(BIN)/pytest -s -p no:cacheprovider --timeout 3600 \
		tests/concurrency/test_presence_interleavings.py -k exhaustively_on_demand
	AGENT_CHANNEL_EXHAUSTIVE=1 $(BIN)/pytest -s -p no:cacheprovider --timeout 3600 \
		tests/concurrency/test_dispatch_and_grace_interleavings.py -k dispatch_and_presence

clean:
	rm -rf $(VENV) $(SAMENV) .pytest_cache .mypy_cache .ruff_cache mutants mutation-results.txt
