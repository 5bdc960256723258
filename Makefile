# One entry point for every task. Each target sets up what it needs: a fresh clone runs
# `make run` or `make test` with nothing installed by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# What running needs (make run): the package and its dependencies, without the dev toolchain.
RUN_STAMP := $(VENV)/.installed-run
PROTOS := $(wildcard proto/controlplane/v1/*.proto)
# Every server, agent and cpctl that a run or a test starts imports this repository's packages
# afresh. Where the environment sets PYTHONDONTWRITEBYTECODE (this project's machines do),
# nothing kept the compiled modules, and each process compiled them all again: ~0.3 s of CPU per
# start, some hundreds of starts in make test. compileall writes the caches once; Python still
# checks each against its source file, so an edited module is compiled afresh (in memory).
BYTECODE := $(BIN)/python -m compileall -q -j 0 controlplane gossip gateway tests bench

.PHONY: constraints run test test-fast test-browser chromium promtool compose-tool compose-e2e soak bench bench-gossip-net lint proto sdk check-proto clean setup jepsen jepsen-long jepsen-five

setup: $(STAMP)

# pyproject.toml holds version ranges (for users' own environments); constraints.txt the exact
# versions this project is tested with, which both installs use.
$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all]'
	touch $(RUN_STAMP)

## constraints: resolve pyproject.toml's ranges afresh (a throwaway venv) and write the exact versions to constraints.txt
constraints:
	rm -rf .venv-constraints && $(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --quiet --upgrade pip==26.3
	.venv-constraints/bin/pip install --quiet '.[dev]'
	set -o pipefail; { sed -n '/^#/p' constraints.txt; .venv-constraints/bin/pip freeze | grep -v '^controlplane' \
		| sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-constraints

## run: start a 3-server cluster on loopback (./.data), show it working, stop with Ctrl-C
run: $(RUN_STAMP)
	$(BYTECODE)
	$(BIN)/cpctl dev --servers 3 --data-dir .data --demo

## test: every check: generated code in sync, lint, types, the whole test suite (the console's browser test included)
test: $(STAMP) check-proto lint chromium promtool compose-tool
	$(BYTECODE)
	$(BIN)/python -m pytest -q --durations=20

# The console's browser test drives Debian's chromium: installed with apt-get where it is missing.
# Where that is impossible (no root, no network) the test is reported as skipped, and says why.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "WARNING: chromium could not be installed: the console's browser test will be skipped"

# The alert rules are checked and unit-tested with promtool (Debian's prometheus package), installed
# with apt-get where it is missing; where that is impossible the test is skipped and says why.
promtool:
	@command -v promtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
		|| echo "WARNING: promtool could not be installed: the alert rules' tests will be skipped"

# deploy/compose/ is validated with Debian's docker-compose (it reads the file; no engine needed),
# installed with apt-get where it is missing; where that is impossible the test is skipped and says why.
compose-tool:
	@command -v docker-compose >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose) \
		|| echo "WARNING: docker-compose could not be installed: the compose file's validation will be skipped"

## compose-e2e: build the image with podman, run deploy/compose/ end to end, and a service an agent starts from a compose file (root; apt-get installs podman, runc, docker-compose, debootstrap); ~5 min the first time
compose-e2e: $(STAMP)
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v docker-compose >/dev/null && command -v debootstrap >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc docker-compose debootstrap)
	$(BYTECODE)
	$(BIN)/python -m pytest -q -m compose tests/test_deploy_compose.py -s

## test-fast: the suite without cluster tests (no processes started)
test-fast: $(STAMP)
	$(BYTECODE)
	$(BIN)/python -m pytest -q -m 'not cluster and not soak'

## test-browser: the console in headless Chromium (apt-get installs Debian's chromium where it is missing)
test-browser: $(STAMP) chromium
	$(BYTECODE)
	$(BIN)/python -m pytest -q -m browser -s

## soak: the long runs excluded from make test (about 7 minutes on a quiet machine)
soak: $(STAMP)
	$(BYTECODE)
	$(BIN)/python -m pytest -q -m soak

## jepsen: the fault suite's long profile (docs/faults.md): 40 faults, about 6 minutes; prints the summary table
jepsen: $(STAMP)
	$(BYTECODE)
	$(BIN)/python -m tests.fault.run --profile long

## jepsen-long: the fault suite as a soak: 150 faults, about 30 minutes
jepsen-long: $(STAMP)
	$(BYTECODE)
	$(BIN)/python -m tests.fault.run --profile soak

## jepsen-five: the fault suite on five voters: every nemesis once, and the leader killed with another (18 faults), about 4 minutes
jepsen-five: $(STAMP)
	$(BYTECODE)
	$(BIN)/python -m tests.fault.run --profile five

## bench: our cluster next to etcd 3.4 in the same run; one JSON line per scenario
bench: $(STAMP)
	$(BYTECODE)
	$(BIN)/python -m bench.run

## bench-gossip-net: gossip on tc-shaped network namespaces (root): SAPS, random, ring, all-reduce; ~15 min
bench-gossip-net: $(STAMP)
	$(BYTECODE)
	$(BIN)/python -m bench.gossip_net

lint: $(STAMP)
	$(BIN)/ruff check controlplane gossip gateway tests bench
	$(BIN)/ruff format --check controlplane gossip gateway tests bench
	$(BIN)/mypy

## proto: regenerate controlplane/v1 from proto/ (pinned grpcio-tools)
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)

## sdk: regenerate the blocking SDK's domain methods (_api_sync.py) from the asyncio ones (_api_async.py)
sdk: $(STAMP)
	$(BIN)/python scripts/unasync.py
	$(BIN)/ruff format --quiet controlplane/client/_api_sync.py

## check-proto: fail when the generated code (protobuf, SDK methods) differs from its source
check-proto: $(STAMP)
	scripts/check-protos.sh $(BIN)/python

clean:
	rm -rf $(VENV) .data bench/.work .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
