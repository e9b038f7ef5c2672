# onramp: one-command set-up, run and test. See README.md.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_ARGS ?=
LOGDIR ?= runs
PORT ?= 6006

.PHONY: setup run test test-fast lint bench tensorboard clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found. onramp needs Python 3.11 (dm-reverb 0.14.0 ships no wheels for other versions); pass PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v[:2] == (3, 11) else "error: $(PYTHON) is Python %d.%d; onramp needs Python 3.11 (dm-reverb 0.14.0 ships no wheels for other versions); pass PYTHON=/path/to/python3.11" % v[:2])'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so nothing below pulls a different build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,ray]'
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m launch.main --preset=quickstart $(RUN_ARGS)

# TensorBoard on every run under runs/ (or LOGDIR=runs/<run>), at http://localhost:$(PORT)/
tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --port $(PORT)

test: $(STAMP)
	$(PY) -m pytest -m "not gpu" tests

# The tests that start no process: a minute or two, for the edit-test loop.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not gpu and not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check actors learner replay models launch bench tests

# Every benchmark on CPU with short default durations (under 10 minutes on 2 cores);
# each prints JSON lines. Longer runs: call the modules with --seconds / --env_steps.
bench: $(STAMP)
	$(PY) -m bench.learner
	$(PY) -m bench.actor
	$(PY) -m bench.replay
	$(PY) -m bench.e2e

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
