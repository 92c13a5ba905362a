# The README's commands. Works on a fresh Debian 12 machine as root; every target is
# idempotent, and `setup` is a no-op until requirements/dev.txt or pyproject.toml change.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
REQUIREMENTS := requirements/dev.txt
STAMP := $(VENV)/.setup-stamp
SYSTEM_PACKAGES := python3 python3-venv python3-pip
# The virtual lab's tools (docs/lab.md): the user-mode-linux kernel with its IPVS modules,
# kmod for modprobe inside the guests, iproute2 for namespaces, bridges and veths, ping for
# the lab tests, and ipvsadm, arping and tcpdump for looking inside. keepalived is the peer
# `rainctl bench failover --peer keepalived` runs inside the lab's UML nodes (never on the
# host): its package enables and would start a keepalived service on the host, so `setup`
# installs with a policy-rc.d that denies every service start (exit 101, invoke-rc.d's
# convention; Debian's Docker images ship one already, which is then left as it is). The
# same holds in CI: the package's service must not run on a CI host either. iptables: the
# NAT-mode guests' masquerade rule (iptables-legacy, run from the host's filesystem inside
# the guests); nftables: the daemon's answer lease (rainctl/kernel/answer_lease.py, its contract
# tests on the host kernel) and the drop rule of `rainctl bench soak` in the switch namespace.
# haproxy and wrk: the peer and the load generator of tests/bench/bench_proxy_resume.py (B3),
# on 127.0.0.1 only; haproxy's own service is kept from starting like keepalived's.
# vagrant: `vagrant validate` checks the Vagrant lab's generated Vagrantfile in the tests
# (no VM, no provider, no network; docs/vagrant.md). The Vagrant lab's VMs run this target
# with their own, shorter LAB_PACKAGES (vagrant/provision/*.sh).
LAB_PACKAGES := user-mode-linux kmod ipvsadm iproute2 iputils-arping iputils-ping tcpdump \
	keepalived iptables nftables haproxy wrk vagrant
PYTEST_ARGS ?=

.PHONY: setup lint test demo sim-demo bench lock clean

# After the Python environment, the lab's Debian packages: apt-get runs only for packages
# that are missing (one dpkg-query otherwise). Without root or dpkg, it warns and goes on, so
# that lint and the unit tests still work there; the lab tests then fail and say what is
# missing.
setup: $(STAMP)
	@missing=""; \
	if command -v dpkg-query >/dev/null 2>&1; then \
	  for package in $(LAB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' "$$package" 2>/dev/null \
	      | grep -qx 'install ok installed' || missing="$$missing $$package"; \
	  done; \
	else \
	  echo "make setup: no dpkg-query; install the lab's packages by hand:" \
	    "$(LAB_PACKAGES)" >&2; \
	fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "make setup: the lab needs packages; as root run:" \
	      "apt-get install -y --no-install-recommends$$missing" >&2; \
	  else \
	    echo "make setup: installing$$missing with apt-get"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -q; \
	    policy=/usr/sbin/policy-rc.d; own_policy=""; \
	    if [ ! -e "$$policy" ]; then \
	      printf '#!/bin/sh\n# rainctl make setup: no service starts while it installs\nexit 101\n' \
	        > "$$policy"; \
	      chmod 0755 "$$policy"; own_policy=1; \
	    fi; \
	    status=0; \
	    apt-get install -y -q --no-install-recommends $$missing || status=$$?; \
	    if [ -n "$$own_policy" ]; then rm -f "$$policy"; fi; \
	    exit $$status; \
	  fi; \
	fi

# Debian ships venv's pip bootstrap separately (python3-venv): when no venv can be made,
# install the system packages (as root, non-interactively) and try again.
$(STAMP): $(REQUIREMENTS) pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  rm -rf $(VENV); \
	  if ! command -v $(PYTHON) >/dev/null 2>&1 || ! $(PYTHON) -m venv $(VENV) >/dev/null 2>&1; then \
	    rm -rf $(VENV); \
	    if [ "$$(id -u)" -ne 0 ]; then \
	      echo "make setup: cannot create a venv with $(PYTHON); as root run:" \
	        "apt-get install -y $(SYSTEM_PACKAGES)" >&2; \
	      exit 1; \
	    fi; \
	    echo "make setup: installing $(SYSTEM_PACKAGES) with apt-get"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -q; \
	    apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES); \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	$(PIP) install -r $(REQUIREMENTS)
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	@touch $@

# All three checks run, so one report shows every problem; the status is failure if any failed.
lint: setup
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

test: setup
	@status=0; \
	$(MAKE) --no-print-directory lint || status=1; \
	$(BIN)/pytest $(PYTEST_ARGS) || status=1; \
	exit $$status

# The lab demo (root; docs/lab.md): three UML nodes, SIGKILL of a VIP's owner, the outage the
# client measures. `sim-demo` is the simulated ring's demo, which needs neither root nor UML.
demo: setup
	$(BIN)/rainctl lab demo

sim-demo: setup
	$(BIN)/rainctl sim --demo

bench: setup
	@status=0; \
	for script in tests/bench/bench_*.py; do \
	  [ -e "$$script" ] || continue; \
	  echo "== $$script"; \
	  $(BIN)/python "$$script" || status=1; \
	done; \
	exit $$status

# Re-pin requirements/dev.txt from requirements/dev.in in a throwaway venv (newest versions
# the ranges in pyproject.toml allow).
lock: setup
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip --disable-pip-version-check install --quiet -r requirements/dev.in
	{ \
	  echo "# Exact pins of the development environment (runtime + dev + build backend), transitive"; \
	  echo "# dependencies included: \`pip freeze\` of a clean venv after \`pip install -r requirements/dev.in\`."; \
	  echo "# Regenerate with \`make lock\`; never edit by hand."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable; \
	} > $(REQUIREMENTS)
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .venv-lock .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist *.egg-info
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
