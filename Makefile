# Two commands on a fresh machine with Python 3.11 and make:
#   make demo   installs everything into .venv and runs `hvsim demo`
#   make test   installs everything into .venv and runs the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install guests clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hvsim demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# Rebuild the bundled demo guests from their sources (outputs are committed).
guests: $(STAMP)
	$(BIN)/python -m hvsim.core.guests.build

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
