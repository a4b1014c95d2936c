# sipedge — the two commands a newcomer needs: `make run` and `make test`.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
SHARED  ?= $(abspath ../shared)
STAMP   := $(VENV)/.installed

.PHONY: run test lint unit e2e bench-parse bench-core bench-load fuzz sipp clean check-config venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## make run: set up and run sipedge on the loopback lab (conf/lab.toml)
run: $(STAMP)
	$(VENV)/bin/sipedge run --config conf/lab.toml

check-config: $(STAMP)
	$(VENV)/bin/sipedge check --config conf/sipedge.toml
	$(VENV)/bin/sipedge check --config conf/lab.toml

## SIPp for the end-to-end tests (apt; idempotent)
sipp:
	@command -v sipp >/dev/null 2>&1 || bash $(SHARED)/bench/install.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check sipedge tests bench fuzz
	$(VENV)/bin/mypy --strict sipedge

unit: $(STAMP)
	SIPEDGE_CORPUS=$(SHARED)/corpus $(PY) -bb -m pytest -W error -q -m 'not e2e'

e2e: $(STAMP) sipp
	SIPEDGE_CORPUS=$(SHARED)/corpus $(PY) -bb -m pytest -W error -q -m e2e

## make test: set up and run everything CI runs (lint, types, unit, conformance, e2e)
test: $(STAMP) sipp lint
	SIPEDGE_CORPUS=$(SHARED)/corpus $(PY) -bb -m pytest -W error -q

bench-parse: $(STAMP)
	$(PY) bench/parse.py

bench-core: $(STAMP)
	$(PY) bench/core.py

## make bench-load: SIPp load + failover, sipedge then Kamailio in the same sitting (minutes)
bench-load: $(STAMP)
	bash bench/load.sh $${WHAT:-all}

## make fuzz: atheris over the parser and the forward transform (not in CI)
fuzz: $(STAMP)
	$(PY) -m pip install -q atheris
	$(PY) fuzz/fuzz_message.py -max_total_time=$${FUZZ_SECONDS:-300} fuzz/corpus_seed

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
