# Two entry points (see README): `make run` sets up and runs the main job, `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: install run test test-slow bench
install: $(VENV)/.installed

# the default stage (DKENet), then the Table 2 ablation on the embedded data (prints the table at the end), written
# into its committed record results/table2/ (--redo: every cell evaluated again; results/README.md)
run: install
	$(VENV)/bin/ssr fit --config configs/dkenet.yaml
	$(VENV)/bin/ssr-ablate ablations/table2.yaml --out results/table2 --redo

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) benchmarks/degradation.py
