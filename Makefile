# Two commands on a fresh machine with Python 3.11 and make:
#   make demo   installs everything into .venv and runs `hvsim demo`
#   make test   installs everything into .venv and runs the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install guests clean tools

# hvsim runs on a patched Unicorn (tools/unicorn-2.1.4-hvsim.patch says why): built from PyPI's
# source distribution on first install (about a minute on two cores), cached in ~/.cache/hvsim.
$(STAMP): pyproject.toml tools/build_unicorn.py tools/unicorn-2.1.4-hvsim.patch
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python tools/build_unicorn.py $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hvsim demo

# dtc (Debian's device-tree-compiler) checks the arm64 device tree in the tests: installed
# when missing and we are root (as CI is); otherwise the test says how to install it.
tools:
	@command -v dtc >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq device-tree-compiler >/dev/null; }

test: $(STAMP) tools
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# Rebuild the bundled demo guests from their sources (outputs are committed).
guests: $(STAMP)
	$(BIN)/python -m hvsim.core.guests.build

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
