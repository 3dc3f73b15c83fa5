# The two commands a new user types are `make demo` and `make test`; both build
# the virtualenv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test check lint format bench clean vss

venv: $(STAMP)

$(STAMP): pyproject.toml agent/vehicle/_canread.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vehicle-agent demo $(DEMO_ARGS)

# The vcan tests need real SocketCAN: tests/vcan/run.sh runs them directly where the host has
# vcan0/vcan1, and inside User-Mode Linux where its kernel has no CAN.
# Most tests wait on brokers, daemons and simulated time, so they run on PYTEST_WORKERS
# workers (pytest-xdist); the check that the run left the checkout clean runs after them all.
PYTEST_WORKERS ?= 3
test: $(STAMP)
	$(BIN)/pytest --ignore=tests/vcan -n $(PYTEST_WORKERS) -m "not last" --durations=15 $(PYTEST_ARGS)
	$(BIN)/pytest --ignore=tests/vcan -m last -q
	tests/vcan/run.sh

check: $(STAMP)
	$(BIN)/ruff check agent tests bench tools
	$(BIN)/ruff format --check agent tests bench tools
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format agent tests bench tools
	$(BIN)/ruff check --fix agent tests bench tools

# The built-in VSS catalog (agent/vehicle/data/), generated from the COVESA VSS release spec with
# COVESA's own vss-tools. vss-tools pins libraries the dev tools need newer, so it gets its own
# virtualenv; the agent never needs it at run time. VSS_SPEC: the release's folder holding spec/.
VSS_SPEC    ?= ../shared/vss/v6.0
VSS_RELEASE ?= 6.0
VSS_VENV    := .venv-vss
vss: $(STAMP)
	@test -f $(VSS_SPEC)/spec/VehicleSignalSpecification.vspec || \
		{ echo "VSS_SPEC=$(VSS_SPEC) holds no spec/VehicleSignalSpecification.vspec"; exit 2; }
	test -x $(VSS_VENV)/bin/vspec || \
		{ $(PYTHON) -m venv $(VSS_VENV) && $(VSS_VENV)/bin/pip install --quiet 'vss-tools<6'; }
	mkdir -p out
	$(VSS_VENV)/bin/vspec export json -s $(VSS_SPEC)/spec/VehicleSignalSpecification.vspec \
		-u $(VSS_SPEC)/spec/units.yaml -q $(VSS_SPEC)/spec/quantities.yaml -o out/vss-$(VSS_RELEASE).json
	$(BIN)/python tools/vss_catalog.py out/vss-$(VSS_RELEASE).json $(VSS_RELEASE) \
		agent/vehicle/data/vss-$(VSS_RELEASE).json.gz

bench: $(STAMP)
	$(BIN)/python bench/decode.py

clean:
	rm -rf $(VENV) $(VSS_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
