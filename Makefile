# Two commands on a fresh machine:  `make demo`  (install + run the built-in demo)  and  `make test`.
# The pinned CPU build of torch is installed first, so the package's loose `torch>=2.2` pulls nothing more.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= headattr-demo
DEMO_FLAGS ?=

.PHONY: install demo test lint bench gpu-check-dry

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,eval]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/headattr demo --out $(DEMO_OUT) $(DEMO_FLAGS)

test: install
	$(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) tools/check_sizes.py

bench: install
	$(PY) benchmarks/bench_attribution.py

# the prepared GPU script's CPU rehearsal (CI runs it so the script works when a GPU is lent)
gpu-check-dry: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/gpu_check.py --dry
