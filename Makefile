# The two commands a new user types are `make demo` and `make test`; both build
# the virtualenv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test check lint format bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vehicle-agent demo $(DEMO_ARGS)

# The vcan tests need real SocketCAN: tests/vcan/run.sh runs them directly where the host has
# vcan0/vcan1, and inside User-Mode Linux where its kernel has no CAN.
test: $(STAMP)
	$(BIN)/pytest --ignore=tests/vcan $(PYTEST_ARGS)
	tests/vcan/run.sh

check: $(STAMP)
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format agent tests bench
	$(BIN)/ruff check --fix agent tests bench

bench: $(STAMP)
	$(BIN)/python bench/decode.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
