# hffm: `make demo` runs the main job, `make test` runs the test suite. Both set up what is missing first:
# a .venv with torch 2.13.0 (CPU wheel, installed before anything can pull a CUDA build), the package, and
# Mosquitto via apt-get when no mosquitto binary is found (sudo when not root); `make test` also Chromium.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
STAMP := $(VENV)/.hffm-installed
# Extra pip arguments for the torch install, e.g. PyTorch's CPU wheel index on a stock x86-64 machine where
# PyPI's torch==2.13.0 is the CUDA build.
TORCH_PIP_ARGS ?=
DEMO_ARGS ?=
PYTEST_ARGS ?=
# `make test` runs the suite on this many pytest-xdist workers, a test file per worker at a time (most tests wait on
# brokers and subprocesses; deadlines scale with the slowdown each worker measures). Files are handed out in
# collection order (--no-loadscope-reorder): deploy, faults and the integration jobs, the longest, go first and the
# many short unit-test files fill the gaps at the end. xdist's default order (most tests per file first) left the
# one-test job files for last, one worker finishing them alone.
TEST_WORKERS ?= 2
# What `make test-stress` runs beside two CPU busy loops (the fault suite: green under load, not only when idle).
STRESS_TESTS ?= tests/faults

.PHONY: setup demo test test-stress lint mosquitto chromium clean

setup: $(STAMP) mosquitto

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PIP) install -q -e '.[edge,export,dev]'
	touch $(STAMP)

mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then \
		echo "mosquitto: found"; \
	else \
		echo "mosquitto: installing with apt-get"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; \
	fi

# The dashboard's browser test drives Debian's chromium (Playwright's own browser download is not used).
chromium:
	@if command -v chromium >/dev/null 2>&1; then \
		echo "chromium: found"; \
	else \
		echo "chromium: installing with apt-get (for the dashboard's browser test)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
			|| echo "chromium: could not be installed; the browser test will be skipped, saying why"; \
	fi

demo: setup
	$(VENV)/bin/hffm demo --report runs/demo-report.json $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check --select F,E9 hffm_core hffm_model edge_runtime fog_gateway cloud broker_config hffm_lab hffm_cli tests

test: setup lint chromium
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The fault suite beside two `python -c "while True: pass"` loops that tests/hffm_testing/stress.py starts and stops
# by PID; deadlines in the tests scale with the slowdown measured at session start (tests/conftest.py).
test-stress: setup
	$(PY) tests/hffm_testing/stress.py --loops 2 -- $(VENV)/bin/pytest -q $(STRESS_TESTS) $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache .hypothesis
