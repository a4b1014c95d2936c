# sipedge — the two commands a newcomer needs: `make run` and `make test`.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
SHARED  ?= $(abspath ../shared)
STAMP   := $(VENV)/.installed
# make install: where the production venv goes, and a staging root for packaging.
PREFIX  ?= /opt/sipedge
DESTDIR ?=

.PHONY: attacks fuzz-core run lab test lint unit unit-compiled e2e bench-parse bench-core bench-load fuzz sipp tools clean check-config venv \
        install uninstall

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## make run: set up and run the demo: sipedge on the loopback lab with simulated Twilio
## gateways and a PBX, calls both ways, Virginia failing over to Oregon (sipedge demo)
run: $(STAMP)
	$(VENV)/bin/sipedge demo

## make lab: sipedge alone on the loopback lab (conf/lab.toml), for SIPp or your own peers
lab: $(STAMP)
	$(VENV)/bin/sipedge run --config conf/lab.toml

check-config: $(STAMP)
	$(VENV)/bin/sipedge check --config conf/sipedge.toml
	$(VENV)/bin/sipedge check --config conf/lab.toml

## SIPp for the end-to-end tests (apt; idempotent)
sipp:
	@command -v sipp >/dev/null 2>&1 || bash $(SHARED)/bench/install.sh

## Debian tools the tests need (apt; idempotent, instant when present): promtool (metrics
## rules), systemd-analyze (unit verify), nft (firewall output), docker-compose (Debian's
## Compose v1, only to parse and validate docker-compose.yml: `config` needs no engine, and
## --no-install-recommends keeps docker.io out), curl (the README's keepalived check),
## iptables-restore (checks the iptables form of `sipedge firewall` with --test, never applied),
## svmap (SIPVicious: svmap/svwar/svcrack, the scanners of tests/e2e/test_attacks.py).
## apt-get update runs only when something is missing; policy-rc.d (exit 101) keeps the
## prometheus package from starting its daemon, and is removed again only if we created it.
TOOLS := promtool:prometheus systemd-analyze:systemd nft:nftables docker-compose:docker-compose \
         curl:curl iptables-restore:iptables svmap:sipvicious
tools:
	@missing=""; \
	for t in $(TOOLS); do \
	    command -v $${t%%:*} >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin:/sbin" command -v $${t%%:*} >/dev/null 2>&1 \
	        || missing="$$missing $${t#*:}"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	echo "tools: installing$$missing"; \
	made_policy=0; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' | $$sudo tee /usr/sbin/policy-rc.d >/dev/null \
	        && $$sudo chmod 755 /usr/sbin/policy-rc.d && made_policy=1; \
	fi; \
	rc=0; \
	$$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends $$missing || rc=$$?; \
	[ "$$made_policy" = 1 ] && $$sudo rm -f /usr/sbin/policy-rc.d; \
	[ "$$rc" = 0 ] || { echo "tools: apt-get failed ($$rc) for$$missing" >&2; exit $$rc; }; \
	for t in $(TOOLS); do \
	    PATH="$$PATH:/usr/sbin:/sbin" command -v $${t%%:*} >/dev/null \
	        || { echo "tools: $${t%%:*} still missing after installing $${t#*:}" >&2; exit 1; }; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff check sipedge tests bench fuzz setup.py
	$(VENV)/bin/mypy --strict sipedge setup.py

unit: $(STAMP) tools
	SIPEDGE_CORPUS=$(SHARED)/corpus $(PY) -bb -m pytest -W error -q -m 'not e2e'

e2e: $(STAMP) sipp tools
	SIPEDGE_CORPUS=$(SHARED)/corpus $(PY) -bb -m pytest -W error -q -m e2e

## make unit-compiled: the sans-I/O core compiled with mypyc into a wheel (as `make install`
## builds it; setup.py), and the tests of what it compiles run against that wheel:
## sip, gateway, proxy, catalogue, conformance, property. The wheel is installed into
## $(COMPILED)/site, which PYTHONPATH puts first; `python -P` from $(COMPILED) and
## --import-mode=append keep the source tree off the front of sys.path, and
## SIPEDGE_EXPECT_COMPILED=1 makes tests/conftest.py refuse to run unless every module
## of the core is an extension module. The wheel is built with the venv's mypy and
## setuptools (no build isolation: make install checks that path); the C objects stay in
## build/, so the next build compiles only what changed.
COMPILED       := build/compiled-core
COMPILED_TESTS := sip gateway proxy catalogue conformance property
unit-compiled: $(STAMP)
	rm -rf $(COMPILED)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(COMPILED)/wheel .
	$(PY) -m pip install -q --no-deps --target $(COMPILED)/site $(COMPILED)/wheel/sipedge-*.whl
	cd $(COMPILED) && SIPEDGE_CORPUS=$(SHARED)/corpus SIPEDGE_EXPECT_COMPILED=1 \
	    PYTHONPATH=$(CURDIR)/$(COMPILED)/site $(CURDIR)/$(PY) -P -bb -m pytest -W error -q \
	    -p no:cacheprovider --import-mode=append --rootdir=$(CURDIR) -c $(CURDIR)/pyproject.toml \
	    $(addprefix $(CURDIR)/tests/,$(COMPILED_TESTS))

## make test: set up and run everything CI runs (lint, types, unit, conformance, e2e), and
## the core's tests once more against the mypyc-compiled core (unit-compiled)
test: $(STAMP) sipp tools lint unit-compiled
	SIPEDGE_CORPUS=$(SHARED)/corpus $(PY) -bb -m pytest -W error -q

bench-parse: $(STAMP)
	$(PY) bench/parse.py

bench-core: $(STAMP)
	$(PY) bench/core.py

## make bench-load: SIPp load + failover, sipedge then Kamailio in the same sitting (minutes)
bench-load: $(STAMP)
	bash bench/load.sh $${WHAT:-all}

## make fuzz-core: atheris over the whole proxy core for FUZZ_SECONDS (default 900), the
## time-bounded run (op sequences; not in CI: a 3000-input pure-Python run of the same
## harness is in `make unit`)
fuzz-core: $(STAMP)
	$(PY) -m pip install -q atheris
	mkdir -p fuzz/corpus_core
	$(PY) fuzz/fuzz_core.py -max_total_time=$${FUZZ_SECONDS:-900} fuzz/corpus_core

## make attacks: the long hardening runs against the live daemon (~3.5 min, not in CI):
## 60 s stranger flood at 2,000 INVITE/s beside 20 PBX calls/s, an allowed source over its
## rate (banned), 2,000 trickling + 1,000 idle TCP connections (slowloris)
attacks: $(STAMP) sipp tools
	$(PY) bench/attacks.py all

## make fuzz: the long fuzz run of issue 13 (not in CI): atheris over the parser and the
## forward transform for FUZZ_SECONDS (default 300), then over the whole proxy core for
## FUZZ_RUNS executions (default 10^6, the issue's count; a count, not a time, so the
## figure does not depend on how loaded the box is), split over FUZZ_JOBS processes (one
## per CPU) sharing fuzz/corpus_core, each logging to fuzz/core-N.log. Each runs in a
## session of its own with its autogroup at nice 19: under the kernel's autogroup
## scheduler a plain `nice` only ranks processes within one session, and fuzzers started
## from a shell starved everything else that shell ran.
POLITE := setsid -w sh -c 'echo 19 > /proc/self/autogroup 2>/dev/null; exec nice -n 19 "$$@"' sh
fuzz: $(STAMP)
	$(PY) -m pip install -q atheris
	$(POLITE) $(PY) fuzz/fuzz_message.py -max_total_time=$${FUZZ_SECONDS:-300} fuzz/corpus_seed
	mkdir -p fuzz/corpus_core
	@jobs=$${FUZZ_JOBS:-$$(nproc)}; runs=$${FUZZ_RUNS:-1000000}; pids=""; rc=0; \
	for i in $$(seq 1 $$jobs); do \
	    $(POLITE) $(PY) fuzz/fuzz_core.py -atheris_runs=$$(( (runs + jobs - 1) / jobs )) \
	        -seed=$$i fuzz/corpus_core >fuzz/core-$$i.log 2>&1 & pids="$$pids $$!"; \
	done; \
	echo "fuzz: $$jobs core fuzzers ($$runs executions in all), logs fuzz/core-*.log"; \
	for p in $$pids; do wait $$p || rc=1; done; \
	for f in fuzz/core-*.log; do grep "fuzz_core totals" $$f | tail -n 1; done; exit $$rc

## make install [DESTDIR=] [PREFIX=/opt/sipedge]: sipedge in its own venv at PREFIX, the
## unit, the sipedge system user and a starter config (never overwritten). As root.
## `pip install .` compiles the sans-I/O core with mypyc (setup.py; about a minute, gcc and
## the Python headers needed), else installs it as pure Python, and says which;
## SIPEDGE_PURE_PYTHON=1 forces pure Python.
##
## DESTDIR (staging for a package): a venv bakes absolute paths into its scripts, so after
## installing into $(DESTDIR)$(PREFIX) the scripts in bin/ are rewritten to point at
## $(PREFIX) (where the package will put them); run them inside DESTDIR as
## `$(DESTDIR)$(PREFIX)/bin/python $(DESTDIR)$(PREFIX)/bin/sipedge`. The venv links to this
## machine's python3 (pyvenv.cfg home=), so the target needs the same Python. The user is
## created (systemd-sysusers) and the config chgrp'ed only when DESTDIR is empty; a package
## does both in its postinst.
UNIT_DIR := /etc/systemd/system
CONF_DIR := /etc/sipedge
install:
	@set -eu; \
	dest="$(DESTDIR)"; prefix="$(PREFIX)"; root="$$dest$$prefix"; \
	echo "install: venv $$root"; \
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	    || { echo "install: $(PYTHON) is older than 3.11" >&2; exit 1; }; \
	$(PYTHON) -m venv "$$root"; \
	"$$root/bin/python" -m pip install -q --disable-pip-version-check .; \
	"$$root/bin/python" -P -c 'import sipedge; b = sipedge.core_build(); print("install: core", \
	    "compiled (mypyc)" if b.kind == "mypyc" else f"is pure Python ({b.reason})")'; \
	if [ -n "$$dest" ]; then \
	    grep -lIF -- "$$root" "$$root"/bin/* | xargs -r sed -i "s|$$root|$$prefix|g"; \
	fi; \
	install -d -m 0755 "$$dest$(UNIT_DIR)" "$$dest/etc/sysusers.d"; \
	sed "s|/opt/sipedge/bin/sipedge|$$prefix/bin/sipedge|" systemd/sipedge.service \
	    > "$$dest$(UNIT_DIR)/sipedge.service.tmp"; \
	chmod 0644 "$$dest$(UNIT_DIR)/sipedge.service.tmp"; \
	mv "$$dest$(UNIT_DIR)/sipedge.service.tmp" "$$dest$(UNIT_DIR)/sipedge.service"; \
	install -m 0644 systemd/sipedge.sysusers "$$dest/etc/sysusers.d/sipedge.conf"; \
	echo "install: $$dest$(UNIT_DIR)/sipedge.service, $$dest/etc/sysusers.d/sipedge.conf"; \
	group=""; \
	if [ -z "$$dest" ]; then systemd-sysusers /etc/sysusers.d/sipedge.conf; group=sipedge; fi; \
	install -d -m 0750 "$$dest$(CONF_DIR)"; \
	conf="$$dest$(CONF_DIR)/sipedge.toml"; \
	if [ -e "$$conf" ]; then \
	    echo "install: $$conf exists, left as it is (the new default: conf/sipedge.toml)"; \
	else \
	    install -m 0640 conf/sipedge.toml "$$conf"; \
	    echo "install: $$conf (starter config: edit [inside], [outside] domain, [[edges]])"; \
	fi; \
	if [ -n "$$group" ]; then chgrp "$$group" "$$dest$(CONF_DIR)" "$$conf"; fi; \
	echo; \
	echo "Next steps:"; \
	echo "  $$prefix/bin/sipedge check --config $(CONF_DIR)/sipedge.toml"; \
	echo "  systemctl daemon-reload && systemctl enable --now sipedge"; \
	echo "  systemctl status sipedge; journalctl -u sipedge -f"

## make uninstall [DESTDIR=] [PREFIX=]: removes the venv and the unit; keeps /etc/sipedge
## (the operator's config) and the sipedge user (files may still belong to it).
uninstall:
	rm -rf "$(DESTDIR)$(PREFIX)"
	rm -f "$(DESTDIR)$(UNIT_DIR)/sipedge.service" "$(DESTDIR)/etc/sysusers.d/sipedge.conf"
	@echo "uninstall: kept $(DESTDIR)$(CONF_DIR) and the sipedge user;" \
	    "run systemctl daemon-reload"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build
