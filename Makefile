# One command each. Every target installs what it needs into .venv first.
# The Lambda runtime's Python (template.yaml: python3.13); pyenv hides it behind its shims
# unless PYENV_VERSION names it. SAM CLI has its own virtual environment on python3.
PYTHON ?= PYENV_VERSION=3.13.0 python3.13
SAM_PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SAM_VENV := .venv-sam
SAM := SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam
export PYTHONPATH := layers/frontdesk:.
export XDG_RUNTIME_DIR ?= $(CURDIR)/.frontdesk/run

.PHONY: dev test test-db lint build bench migrate clean

$(VENV)/.installed-py313: requirements-dev.txt layers/frontdesk/requirements.txt
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(SAM_VENV)/.installed: requirements-sam.txt
	$(SAM_PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-sam.txt
	touch $@

.frontdesk/run:
	mkdir -p $@ && chmod 700 $@

## make dev: the whole system locally (embedded PostgreSQL + moto + API + workers + schedules);
## DEV_ARGS passes options, e.g. `make dev DEV_ARGS=--replica` (a streaming read replica)
DEV_ARGS ?=
dev: $(VENV)/.installed-py313 .frontdesk/run
	$(PY) -m local.dev $(DEV_ARGS)

# Test workers: two per CPU, as the tests spend about half their time waiting on processes,
# servers and timers rather than computing.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) * 2 )))

## make test: unit, integration, e2e and fault tests, two workers per CPU
test: $(VENV)/.installed-py313 .frontdesk/run
	$(PY) -m pytest -n $(TEST_WORKERS)

## make test-db: the quick integration tests that touch PostgreSQL (CI runs them against
## DATABASE_URL too); `make test` runs the rest on the embedded server: the slow ones, the
## processes (e2e, faults), the assistant's worker and the suites of the HTTP layer over the
## same SQL (tenant isolation, fuzzing, text rule)
test-db: $(VENV)/.installed-py313 .frontdesk/run
	$(PY) -m pytest -n $(TEST_WORKERS) -m "db and not slow" tests/integration \
	    --ignore=tests/integration/test_assistant.py \
	    --ignore=tests/integration/test_tenant_isolation.py \
	    --ignore=tests/integration/test_api_fuzz.py \
	    --ignore=tests/integration/test_text_rule.py

## make lint: ruff, mypy --strict, cfn-lint (+ serverless rules), sam validate --lint
lint: $(VENV)/.installed-py313 $(SAM_VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/cfn-lint template.yaml
	$(VENV)/bin/cfn-lint template.yaml -a cfn_lint_serverless.rules
	$(SAM) validate --lint

## make build: sam build without Docker (python3.13 through pyenv), then bytecode in every
## artifact: Lambda's code directories are read-only, so a cold start cannot cache it itself
build: $(VENV)/.installed-py313 $(SAM_VENV)/.installed
	PYENV_VERSION=3.13.0 $(SAM) build --build-dir .aws-sam/build
	$(PY) -m compileall -q -j 0 --invalidation-mode unchecked-hash .aws-sam/build
	touch $(BUILT)

# The build, when it is missing or older than what goes into it (bench.response runs it).
BUILT := .aws-sam/build/.built
$(BUILT): template.yaml layers/frontdesk/requirements.txt $(shell find functions layers/frontdesk/frontdesk -name '*.py')
	$(MAKE) build

## make migrate: apply db/migrations to the database at DATABASE_URL (deployments)
migrate: $(VENV)/.installed-py313
	$(PY) -m frontdesk.platform.migrations db/migrations

## make bench: every benchmark in bench/; results in bench/results/
BENCHMARKS := run assistant assistant_stream reply_cache appointments sync sync_fetch metrics response push inbox webhooks jobs
bench: $(VENV)/.installed-py313 .frontdesk/run $(BUILT)
	set -e; for b in $(BENCHMARKS); do \
	    if [ -f bench/$$b.py ]; then $(PY) -m bench.$$b; fi; \
	done

clean:
	rm -rf .aws-sam .frontdesk .pytest_cache .mypy_cache .ruff_cache
